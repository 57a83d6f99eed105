//! Tracer memory per live block, and snapshots at scale (issue 5, targets 3 and 4).
//!
//! For 10 k, 100 k and 1 M live blocks of 16 bytes (`--bytes`) (from 32 distinct call stacks over 8 source
//! lines), with each storage (`Storage::Table`, then `Storage::Shadow`):
//! `tracemalloc_memory()` split into the fixed traceback store and the traces' storage (the
//! tables, plus shadow memory for the second), the tables' load, and bytes per live block;
//! then the time to take a snapshot, the longest
//! allocation stall a second thread saw meanwhile (an estimate of the time the copy held the
//! shard locks, see [`Probe`]), and `statistics` / `compare_to` by line
//! on two such snapshots (the second has 10% more blocks). Prints Markdown.
//!
//! `--bytes B` makes the blocks B bytes instead of 16: shadow memory's cost per block grows
//! with the heap's span, the tables' does not.
//!
//! ```text
//! memory [--nframe N] [--sizes 10000,100000,1000000] [--bytes B]
//! ```

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracemalloc::core::table::Slot;
use tracemalloc::{Config, KeyType, Storage};
use tracemalloc_bench::report::markdown_table;

#[global_allocator]
static ALLOC: tracemalloc::TracingAllocator = tracemalloc::TracingAllocator::system();

type Block = Box<[u8]>;

/// Bytes per block (`--bytes`).
static BLOCK_BYTES: AtomicUsize = AtomicUsize::new(16);

fn block(fill: u64) -> Block {
    vec![fill as u8; BLOCK_BYTES.load(Relaxed)].into_boxed_slice()
}

macro_rules! sites {
    ($($name:ident),*) => {
        $(
            #[inline(never)]
            fn $name(i: u64) -> Block {
                block(i)
            }
        )*
        const SITES: &[fn(u64) -> Block] = &[$($name),*];
    };
}
sites!(site0, site1, site2, site3, site4, site5, site6, site7);

/// Allocates through `depth` extra frames, so each line is reached by several stacks.
#[inline(never)]
fn via(depth: u32, site: fn(u64) -> Block, i: u64) -> Block {
    if depth == 0 {
        site(i)
    } else {
        black_box(via(depth - 1, site, i))
    }
}

fn allocate(n: usize, into: &mut Vec<Block>) {
    for i in 0..n as u64 {
        let site = SITES[(i % SITES.len() as u64) as usize];
        into.push(via(((i / 8) % 4) as u32, site, i));
    }
}

#[inline(never)]
fn more_site(i: u64) -> Block {
    block(i)
}

/// Bytes of the probe's blocks: blocks of 1 KiB and more are traced in the tables under either
/// storage (shadow memory's `LARGE`), so each allocation takes its shard's lock, which a
/// snapshot holds while it copies. A smaller block would take a shadow cell and no lock.
const PROBE_BYTES: usize = 1024;

/// Allocates and frees a block of [`PROBE_BYTES`] in a loop on another thread and keeps the
/// longest single allocation and free: an estimate of how long a snapshot kept an allocation
/// waiting, not a bound. Scheduling delays on a busy machine add to it, and an allocation that
/// started after the locks were taken waits only for the rest of the hold.
struct Probe {
    running: Arc<AtomicBool>,
    max_ns: Arc<AtomicU64>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Probe {
    fn start() -> Probe {
        let running = Arc::new(AtomicBool::new(true));
        let max_ns = Arc::new(AtomicU64::new(0));
        let (r, m) = (Arc::clone(&running), Arc::clone(&max_ns));
        let handle = std::thread::spawn(move || {
            while r.load(Relaxed) {
                let t = Instant::now();
                drop(black_box(Vec::<u8>::with_capacity(PROBE_BYTES)));
                m.fetch_max(t.elapsed().as_nanos() as u64, Relaxed);
            }
        });
        Probe {
            running,
            max_ns,
            handle: Some(handle),
        }
    }

    fn reset(&self) {
        self.max_ns.store(0, Relaxed);
    }

    fn max(&self) -> Duration {
        Duration::from_nanos(self.max_ns.load(Relaxed))
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.running.store(false, Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1e3)
}

fn timed<R>(f: impl FnOnce() -> R) -> (R, Duration) {
    let t = Instant::now();
    let r = f();
    (r, t.elapsed())
}

fn main() {
    let mut nframe = 16;
    let mut sizes = vec![10_000usize, 100_000, 1_000_000];
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--nframe", Some(v)) => nframe = v.parse().expect("--nframe N"),
            ("--bytes", Some(v)) => {
                let bytes: usize = v.parse().expect("--bytes B");
                BLOCK_BYTES.store(bytes.max(1), Relaxed);
            }
            ("--sizes", Some(v)) => {
                sizes = v
                    .split(',')
                    .map(|s| s.parse().expect("--sizes N,N,..."))
                    .collect()
            }
            _ => {
                eprintln!("usage: memory [--nframe N] [--sizes N,N,...] [--bytes B]");
                std::process::exit(2);
            }
        }
    }
    let mut mem_rows = Vec::new();
    let mut snap_rows = Vec::new();
    let mut cold = Duration::ZERO;
    for storage in [Storage::Table, Storage::Shadow] {
        measure(
            storage,
            nframe,
            &sizes,
            &mut mem_rows,
            &mut snap_rows,
            &mut cold,
        );
    }
    report(nframe, cold, mem_rows, snap_rows);
}

/// The rows of both tables for one storage; `cold` gets the process's first snapshot time.
fn measure(
    storage: Storage,
    nframe: usize,
    sizes: &[usize],
    mem_rows: &mut Vec<Vec<String>>,
    snap_rows: &mut Vec<Vec<String>>,
    cold: &mut Duration,
) {
    let label = format!("{storage:?}").to_lowercase();
    let config = Config {
        nframe,
        storage,
        ..Config::default()
    };
    let initial_table = 16 * config.initial_slots_per_shard.next_power_of_two() * size_of::<Slot>();
    tracemalloc::start_with(config.clone()).expect("start tracing");
    let fixed = tracemalloc::tracemalloc_memory() - initial_table;

    // The first snapshot loads the debug info; keep that out of the figures at scale.
    let (_, first) = timed(|| tracemalloc::take_snapshot().expect("snapshot"));
    if *cold == Duration::ZERO {
        *cold = first;
    }

    let probe = Probe::start();
    for &n in sizes {
        let mut blocks: Vec<Block> = Vec::with_capacity(n + n / 10);
        allocate(n, &mut blocks);

        probe.reset();
        let (old, t_old) = timed(|| tracemalloc::take_snapshot().expect("snapshot"));
        let stall = probe.max();
        let live = old.counters.traces;
        let total = tracemalloc::tracemalloc_memory();
        let table = total - fixed;
        let (slots, load) = if storage == Storage::Table {
            let slots = table / size_of::<Slot>();
            (
                slots.to_string(),
                format!("{:.2}", live as f64 / slots as f64),
            )
        } else {
            ("—".to_string(), "—".to_string()) // the tables hold only what fits no cell
        };
        mem_rows.push(vec![
            label.clone(),
            live.to_string(),
            format!("{:.1}", total as f64 / 1048576.0),
            format!("{:.1}", fixed as f64 / 1048576.0),
            format!("{:.1}", table as f64 / 1048576.0),
            slots,
            load,
            format!("{:.1}", table as f64 / live as f64),
            format!("{:.1}", total as f64 / live as f64),
        ]);

        for i in 0..(n / 10) as u64 {
            blocks.push(more_site(i));
        }
        let (new, t_new) = timed(|| tracemalloc::take_snapshot().expect("snapshot"));
        let (stats, t_stats) = timed(|| new.statistics(KeyType::Lineno, false).expect("stats"));
        let (diff, t_diff) = timed(|| {
            new.compare_to(&old, KeyType::Lineno, false)
                .expect("compare_to")
        });
        snap_rows.push(vec![
            label.clone(),
            live.to_string(),
            ms(t_old),
            ms(t_new),
            ms(stall),
            format!("{} ({} groups)", ms(t_stats), stats.len()),
            format!("{} ({} groups)", ms(t_diff), diff.len()),
            ms(t_new + t_stats + t_diff),
            format!(
                "{:.0}",
                (t_new + t_stats + t_diff).as_nanos() as f64 / new.traces.len() as f64
            ),
        ]);
        drop((old, new, stats, diff));
        drop(black_box(blocks));
    }
    drop(probe);
    tracemalloc::stop();
}

fn report(nframe: usize, cold: Duration, mem_rows: Vec<Vec<String>>, snap_rows: Vec<Vec<String>>) {
    let h = |cols: &[&str]| cols.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let bytes = BLOCK_BYTES.load(Relaxed);
    println!("### Tracer memory per live block of {bytes} bytes (nframe {nframe})\n");
    println!(
        "`fixed` is the process-wide traceback store; `traces` is where the traces live: the 16 \
         shards' trace tables (16-byte slots, each doubled when it reaches load 3/4), plus, with \
         shadow memory, the pages of cells written (8 bytes per 32 bytes of heap where blocks \
         under 64 bytes start, per 64, 128 or 256 bytes where larger ones do) and the tables' \
         initial 1 MiB for blocks that fit no cell.\n"
    );
    println!(
        "{}",
        markdown_table(
            &h(&[
                "storage",
                "live blocks",
                "tracemalloc_memory MiB",
                "fixed MiB",
                "traces MiB",
                "slots",
                "load",
                "traces B/block",
                "total B/block",
            ]),
            &mem_rows
        )
    );
    println!("### Snapshots at scale (nframe {nframe})\n");
    println!(
        "First snapshot of the process (loads debug info): {} ms. `stall` is the longest single \
         allocation and free of a {PROBE_BYTES}-byte block on a second thread during snapshot \
         `A`: blocks that size are traced in the tables under either storage, so it waits for \
         the shard locks the copy holds. An estimate of the lock-held time, not a bound: it \
         includes scheduling noise on a shared 2-core machine and misses a hold's part before \
         the allocation began. Statistics and compare_to group by line; `B` has 10% more \
         blocks than `A`.\n",
        ms(cold)
    );
    println!(
        "{}",
        markdown_table(
            &h(&[
                "storage",
                "blocks",
                "take_snapshot A ms",
                "take_snapshot B ms",
                "alloc stall ms",
                "statistics ms",
                "compare_to ms",
                "B + stats + diff ms",
                "ns per block",
            ]),
            &snap_rows
        )
    );
}
