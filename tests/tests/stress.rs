//! Stress test of the tracing allocator: races, deadlocks, panics, accounting.
//!
//! Workers allocate, free and realloc blocks of 8 B to 64 KiB (some over-aligned), tag and
//! check their ends, send them to each other (cross-thread frees), spawn short-lived threads,
//! track and untrack foreign memory and recurse to make many distinct stacks, while a
//! controller cycles full, sampled and store-limited tracing, `clear_traces`, snapshots (whose
//! indices it checks), `reset_peak` and `stop`. At quiescent points the traced size must equal
//! the known live bytes and the snapshot's sum. A watchdog aborts on a deadlock.
//!
//! `STRESS_SECS` (5 by default, as in CI), `STRESS_THREADS` (6), `STRESS_TINY=1` (a 64 KiB
//! traceback store at every start). A longer run: `STRESS_SECS=120 cargo test --release -p
//! tracemalloc-tests --test stress`.
use std::alloc::Layout;
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::*};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use tracemalloc::{Config, TracingAllocator};

#[global_allocator]
static A: TracingAllocator = TracingAllocator::system();

// ---------------- counters ----------------
static PROGRESS: AtomicU64 = AtomicU64::new(0);
static ALLOCS: AtomicU64 = AtomicU64::new(0);
static FREES: AtomicU64 = AtomicU64::new(0);
static REALLOCS: AtomicU64 = AtomicU64::new(0);
static ALIGNED: AtomicU64 = AtomicU64::new(0);
static SENDS: AtomicU64 = AtomicU64::new(0);
static SPAWNS: AtomicU64 = AtomicU64::new(0);
static TRACKS: AtomicU64 = AtomicU64::new(0);
static UNTRACKS: AtomicU64 = AtomicU64::new(0);
static DEEP: AtomicU64 = AtomicU64::new(0);
static SNAPSHOTS: AtomicU64 = AtomicU64::new(0);
static SNAP_TRACES: AtomicU64 = AtomicU64::new(0);
static MODE_SWITCHES: AtomicU64 = AtomicU64::new(0);
static CLEARS: AtomicU64 = AtomicU64::new(0);
static CHECKS: AtomicU64 = AtomicU64::new(0);
static FAILS: AtomicU64 = AtomicU64::new(0);
static STORE_FULL_SEEN: AtomicU64 = AtomicU64::new(0);
static WHERE: AtomicUsize = AtomicUsize::new(0); // last main/controller phase, for the watchdog

// ---------------- control ----------------
static PAUSE: AtomicBool = AtomicBool::new(false);
static STOP: AtomicBool = AtomicBool::new(false);
static FINAL: AtomicBool = AtomicBool::new(false);
static DEEP_MODE: AtomicBool = AtomicBool::new(false);

fn bump() {
    PROGRESS.fetch_add(1, Relaxed);
}

// ---------------- no-alloc stderr ----------------
fn raw_write(s: &[u8]) {
    // SAFETY: writes `s.len()` bytes from a valid slice to fd 2; a failed write loses text only.
    unsafe {
        libc::write(2, s.as_ptr().cast(), s.len());
    }
}
fn raw_num(mut n: u64) {
    let mut buf = [0u8; 24];
    let mut i = buf.len();
    if n == 0 {
        i -= 1;
        buf[i] = b'0';
    }
    while n > 0 {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
    }
    raw_write(&buf[i..]);
}

fn watchdog(limit: Duration) {
    std::thread::Builder::new()
        .name("watchdog".into())
        .spawn(move || {
            let mut last = PROGRESS.load(Relaxed);
            let mut since = Instant::now();
            loop {
                std::thread::sleep(Duration::from_millis(250));
                let now = PROGRESS.load(Relaxed);
                if now != last {
                    last = now;
                    since = Instant::now();
                } else if since.elapsed() > limit {
                    raw_write(b"\n*** WATCHDOG: no progress for 20 s (deadlock?) progress=");
                    raw_num(now);
                    raw_write(b" where=");
                    raw_num(WHERE.load(Relaxed) as u64);
                    raw_write(b" pause=");
                    raw_num(PAUSE.load(Relaxed) as u64);
                    raw_write(b" stop=");
                    raw_num(STOP.load(Relaxed) as u64);
                    raw_write(b" -- aborting\n");
                    if std::env::var_os("STRESS_NO_ABORT").is_some() {
                        loop {
                            std::thread::sleep(Duration::from_secs(1000));
                        }
                    }
                    // SAFETY: abort takes no arguments and never returns.
                    unsafe { libc::abort() };
                }
            }
        })
        .unwrap();
}

// ---------------- rng ----------------
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn size(&mut self) -> usize {
        let base = 8usize << self.below(13); // 8 .. 32K
        (base + self.below(base as u64) as usize).clamp(8, 65536)
    }
}

// ---------------- blocks ----------------
enum Block {
    V(Vec<u8>, u8),
    R(*mut u8, Layout, u8),
}
// SAFETY: a raw block is owned by exactly one `Block`, which frees it once; moving that ownership
// to another thread is what the allocator must support.
unsafe impl Send for Block {}

impl Block {
    fn new(rng: &mut Rng) -> Block {
        let size = rng.size();
        let tag = rng.next() as u8;
        ALLOCS.fetch_add(1, Relaxed);
        match rng.below(10) {
            0..=5 => {
                let mut v = if rng.below(4) == 0 {
                    vec![0u8; size]
                } else {
                    Vec::with_capacity(size)
                };
                v.resize(size, 0);
                v[0] = tag;
                v[size - 1] = tag;
                Block::V(v, tag)
            }
            _ => {
                ALIGNED.fetch_add(1, Relaxed);
                let align = match rng.below(3) {
                    0 => 64,
                    1 => 4096,
                    _ => 16,
                };
                let layout = Layout::from_size_align(size, align).unwrap();
                // SAFETY: `layout` has a non-zero size (at least 8 bytes).
                let p = unsafe {
                    if rng.below(2) == 0 {
                        std::alloc::alloc(layout)
                    } else {
                        std::alloc::alloc_zeroed(layout)
                    }
                };
                assert!(!p.is_null(), "alloc returned null");
                assert_eq!(
                    p as usize % align,
                    0,
                    "misaligned block {p:?} align {align}"
                );
                // SAFETY: `p` is a live, non-null block of `size` bytes.
                unsafe {
                    *p = tag;
                    *p.add(size - 1) = tag;
                }
                Block::R(p, layout, tag)
            }
        }
    }
    fn check(&self) {
        match self {
            Block::V(v, tag) => {
                assert_eq!(v[0], *tag, "vec block corrupted (first byte)");
                assert_eq!(v[v.len() - 1], *tag, "vec block corrupted (last byte)");
            }
            // SAFETY: `p` is a live block of `l.size()` bytes, both ends written at creation.
            Block::R(p, l, tag) => unsafe {
                assert_eq!(**p, *tag, "raw block corrupted (first byte)");
                assert_eq!(
                    *p.add(l.size() - 1),
                    *tag,
                    "raw block corrupted (last byte)"
                );
            },
        }
    }
    fn realloc(&mut self, rng: &mut Rng) {
        self.check();
        REALLOCS.fetch_add(1, Relaxed);
        let new = rng.size();
        match self {
            Block::V(v, tag) => {
                if new > v.len() {
                    v.reserve_exact(new - v.len());
                    v.resize(new, 0);
                } else {
                    v.truncate(new);
                    v.shrink_to_fit();
                }
                let n = v.len();
                v[n - 1] = *tag;
            }
            // SAFETY: `p` was allocated with `l`, `new` is non-zero, and the block is replaced
            // by `q` before anything else uses it.
            Block::R(p, l, tag) => unsafe {
                let q = std::alloc::realloc(*p, *l, new);
                assert!(!q.is_null(), "realloc returned null");
                assert_eq!(q as usize % l.align(), 0, "realloc misaligned");
                assert_eq!(*q, *tag, "realloc lost contents");
                *p = q;
                *l = Layout::from_size_align(new, l.align()).unwrap();
                *q.add(new - 1) = *tag;
            },
        }
        self.check();
    }
}
impl Drop for Block {
    fn drop(&mut self) {
        self.check();
        FREES.fetch_add(1, Relaxed);
        if let Block::R(p, l, _) = self {
            // SAFETY: `p` was allocated with layout `l` and is freed once, here.
            unsafe { std::alloc::dealloc(*p, *l) };
        }
    }
}

// Distinct stacks: each level calls from one of four call sites.
#[inline(never)]
fn deep(rng: &mut Rng, depth: u32, out: &mut Vec<Block>) {
    if depth == 0 {
        out.push(Block::new(rng));
        return;
    }
    match rng.below(4) {
        0 => {
            deep(rng, depth - 1, out);
            black_box(0);
        }
        1 => {
            deep(rng, depth - 1, out);
            black_box(1);
        }
        2 => {
            deep(rng, depth - 1, out);
            black_box(2);
        }
        _ => {
            deep(rng, depth - 1, out);
            black_box(3);
        }
    }
}

// ---------------- worker ----------------
const FAKE_BASE: usize = 0x1000_0000_0000;

fn worker(
    id: usize,
    rx: Receiver<Block>,
    txs: Vec<Sender<Block>>,
    barrier: Arc<Barrier>,
    stop_barrier: Arc<Barrier>,
) {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15
        ^ (id as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03)
        ^ Instant::now().elapsed().as_nanos() as u64
        | 1);
    let mut blocks: Vec<Block> = Vec::new();
    let mut tracked: Vec<(u32, usize)> = Vec::new();
    let mut fake_next = 0usize;
    loop {
        bump();
        if STOP.load(Relaxed) {
            stop_barrier.wait(); // nobody sends any more
            while let Ok(b) = rx.try_recv() {
                drop(b);
            }
            blocks.clear();
            for (d, a) in tracked.drain(..) {
                tracemalloc::untrack(d, a as *const u8);
            }
            drop(txs);
            drop(rx);
            return;
        }
        if PAUSE.load(Relaxed) {
            barrier.wait(); // B1: nobody sends any more
            while let Ok(b) = rx.try_recv() {
                drop(b);
            }
            blocks = Vec::new();
            for (d, a) in tracked.drain(..) {
                tracemalloc::untrack(d, a as *const u8);
            }
            tracked = Vec::new();
            barrier.wait(); // B2: everything freed
            barrier.wait(); // B3: main checked
            continue;
        }
        let op = rng.below(1000);
        match op {
            0..=349 => {
                if blocks.len() < 400 {
                    blocks.push(Block::new(&mut rng));
                }
            }
            350..=629 => {
                if !blocks.is_empty() {
                    let i = rng.below(blocks.len() as u64) as usize;
                    drop(blocks.swap_remove(i));
                }
            }
            630..=779 => {
                if !blocks.is_empty() {
                    let i = rng.below(blocks.len() as u64) as usize;
                    blocks[i].realloc(&mut rng);
                }
            }
            780..=879 => {
                if !blocks.is_empty() {
                    let i = rng.below(blocks.len() as u64) as usize;
                    let to = rng.below(txs.len() as u64) as usize;
                    let b = blocks.swap_remove(i);
                    SENDS.fetch_add(1, Relaxed);
                    let _ = txs[to].send(b);
                }
            }
            880..=929 => {
                while let Ok(b) = rx.try_recv() {
                    if rng.below(2) == 0 {
                        drop(b);
                    } else {
                        blocks.push(b);
                    }
                }
            }
            930..=964 => {
                // track / untrack fake addresses
                let domain = if rng.below(2) == 0 { 0 } else { 5 };
                if tracked.len() < 200 && rng.below(3) != 0 {
                    let addr = FAKE_BASE + (id << 32) + fake_next * 64;
                    fake_next += 1;
                    TRACKS.fetch_add(1, Relaxed);
                    tracemalloc::track(domain, addr as *const u8, 8 + rng.below(4096) as usize);
                    tracked.push((domain, addr));
                } else if !tracked.is_empty() {
                    let i = rng.below(tracked.len() as u64) as usize;
                    let (d, a) = tracked.swap_remove(i);
                    UNTRACKS.fetch_add(1, Relaxed);
                    tracemalloc::untrack(d, a as *const u8);
                }
            }
            965..=989 => {
                let n = if DEEP_MODE.load(Relaxed) { 20 } else { 2 };
                for _ in 0..n {
                    let d = 1 + rng.below(if DEEP_MODE.load(Relaxed) { 90 } else { 12 }) as u32;
                    DEEP.fetch_add(1, Relaxed);
                    let mut out = Vec::new();
                    deep(&mut rng, d, &mut out);
                    if rng.below(2) == 0 && blocks.len() < 400 {
                        blocks.extend(out);
                    }
                }
            }
            990..=997 => {
                // short-lived thread: allocate, free some, send some to workers, return some
                SPAWNS.fetch_add(1, Relaxed);
                let tx = txs[rng.below(txs.len() as u64) as usize].clone();
                let seed = rng.next() | 1;
                let h = std::thread::spawn(move || {
                    let mut r = Rng(seed);
                    let mut mine: Vec<Block> = (0..16).map(|_| Block::new(&mut r)).collect();
                    for b in mine.iter_mut().take(4) {
                        b.realloc(&mut r);
                    }
                    let back: Vec<Block> = mine.drain(..6).collect();
                    for b in mine.drain(..5) {
                        SENDS.fetch_add(1, Relaxed);
                        let _ = tx.send(b);
                    }
                    if r.below(2) == 0 {
                        let _ = tracemalloc::traced_memory();
                    }
                    back
                });
                let back = h.join().expect("short-lived thread panicked");
                if blocks.len() < 400 {
                    blocks.extend(back);
                }
            }
            _ => {
                let (c, p) = tracemalloc::traced_memory();
                assert!(p >= c, "peak {p} < current {c}");
            }
        }
    }
}

// ---------------- snapshot checks ----------------
fn check_snapshot(s: &tracemalloc::Snapshot, ctx: &str) -> (u64, u64, usize) {
    SNAPSHOTS.fetch_add(1, Relaxed);
    SNAP_TRACES.fetch_add(s.traces.len() as u64, Relaxed);
    let n = s.tracebacks.len();
    let (mut d0, mut d5) = (0u64, 0u64);
    for t in &s.traces {
        assert!(
            (t.traceback as usize) < n,
            "{ctx}: trace traceback index {} out of range (len {n})",
            t.traceback
        );
        match t.domain {
            0 => d0 += t.size,
            5 => d5 += t.size,
            d => panic!("{ctx}: unexpected domain {d}"),
        }
    }
    if !s.addresses.is_empty() {
        assert_eq!(
            s.addresses.len(),
            n,
            "{ctx}: addresses/tracebacks length mismatch"
        );
    }
    for tb in &s.tracebacks {
        assert!(!tb.frames.is_empty(), "{ctx}: empty traceback");
        if tb.frames.iter().any(|f| f.filename.contains("store full")) {
            STORE_FULL_SEEN.fetch_add(1, Relaxed);
        }
    }
    (d0, d5, s.traces.len())
}

fn fail(msg: String) {
    FAILS.fetch_add(1, Relaxed);
    eprintln!("*** FAIL: {msg}");
}

fn tiny() -> bool {
    std::env::var_os("STRESS_TINY").is_some()
}
/// Every start goes through here; STRESS_TINY=1 gives every session a tiny traceback store.
/// Every third start keeps full tracing in the tables instead of shadow memory, so that both
/// storages, and switches between them across `stop()`/`start()`, are exercised.
fn start_cfg(mut c: Config) -> Result<(), tracemalloc::Error> {
    static STARTS: AtomicU64 = AtomicU64::new(0);
    if STARTS.fetch_add(1, Relaxed) % 3 == 2 {
        c.storage = tracemalloc::Storage::Table;
    }
    if tiny() {
        c.max_traceback_memory = 64 * 1024;
        c.initial_tracebacks = 16;
    }
    tracemalloc::start_with(c)
}
fn start_n(n: usize) -> Result<(), tracemalloc::Error> {
    start_cfg(Config {
        nframe: n,
        ..Config::default()
    })
}

// ---------------- controller ----------------
fn controller(barrier: Arc<Barrier>, seed: u64) {
    let mut rng = Rng(seed | 1);
    let mut step = 0u64;
    let sleep = |r: &mut Rng| std::thread::sleep(Duration::from_millis(r.below(40)));
    loop {
        bump();
        if FINAL.load(Relaxed) {
            if !tiny() {
                DEEP_MODE.store(false, Relaxed);
            }
            tracemalloc::stop();
            start_n(16).expect("final start(16)");
            return;
        }
        if PAUSE.load(Relaxed) {
            barrier.wait();
            barrier.wait();
            barrier.wait();
            continue;
        }
        step += 1;
        WHERE.store(100 + (step % 10) as usize, Relaxed);
        MODE_SWITCHES.fetch_add(1, Relaxed);
        match step % 10 {
            0 => {
                tracemalloc::stop();
                start_n(16).expect("start(16)");
            }
            1 => {
                tracemalloc::stop();
                start_cfg(Config {
                    nframe: 16,
                    sample_interval: 4096,
                    ..Config::default()
                })
                .expect("start sampled 4096");
            }
            2 => {
                tracemalloc::stop();
                start_cfg(Config {
                    nframe: 8,
                    sample_interval: 524288,
                    ..Config::default()
                })
                .expect("start sampled 512K");
            }
            3 => {
                tracemalloc::stop();
                start_cfg(Config {
                    nframe: 64,
                    max_traceback_memory: 64 * 1024,
                    initial_tracebacks: 16,
                    ..Config::default()
                })
                .expect("start tiny store");
                DEEP_MODE.store(true, Relaxed);
                std::thread::sleep(Duration::from_millis(300));
            }
            4 => {
                tracemalloc::clear_traces();
                CLEARS.fetch_add(1, Relaxed);
            }
            5 => {
                // already tracing: changes nothing, as in Python
                let _ = start_n(1 + rng.below(30) as usize);
                if !tiny() {
                    DEEP_MODE.store(false, Relaxed);
                }
            }
            6 => tracemalloc::reset_peak(),
            7 => {
                let _ = tracemalloc::tracemalloc_memory();
                let (c, p) = tracemalloc::traced_memory();
                assert!(p >= c, "controller: peak {p} < current {c}");
            }
            8 => {
                tracemalloc::stop();
                sleep(&mut rng);
                start_n(16).expect("start(16) after stop");
            }
            _ => {
                tracemalloc::stop();
                if !tiny() {
                    DEEP_MODE.store(false, Relaxed);
                }
            }
        }
        // snapshot after most steps
        if rng.below(3) != 0 {
            match tracemalloc::take_snapshot() {
                Ok(s) => {
                    check_snapshot(&s, "controller");
                }
                Err(tracemalloc::Error::NotTracing) => {}
                Err(e) => panic!("take_snapshot: {e}"),
            }
        }
        sleep(&mut rng);
    }
}

// ---------------- quiescent checks (main thread) ----------------
/// Called with every other thread paused or exited. Exactness expected.
fn known_blocks_check(ctx: &str) {
    CHECKS.fetch_add(1, Relaxed);
    tracemalloc::stop();
    start_cfg(Config {
        nframe: 32,
        show_plumbing: std::env::var_os("STRESS_PLUMB").is_some(),
        ..Config::default()
    })
    .expect("check start");
    let mut rng = Rng(0x1234_5678 ^ CHECKS.load(Relaxed));
    let mut held: Vec<Block> = Vec::with_capacity(300); // allocated before clear: not traced
    tracemalloc::clear_traces();
    let mut known = 0u64;
    for _ in 0..300 {
        let b = Block::new(&mut rng);
        known += match &b {
            Block::V(v, _) => v.capacity() as u64,
            Block::R(_, l, _) => l.size() as u64,
        };
        held.push(b);
    }
    // some reallocs too
    for b in held.iter_mut().take(50) {
        match b {
            Block::V(v, _) => known -= v.capacity() as u64,
            Block::R(_, l, _) => known -= l.size() as u64,
        }
        b.realloc(&mut rng);
        match b {
            Block::V(v, _) => known += v.capacity() as u64,
            Block::R(_, l, _) => known += l.size() as u64,
        }
    }
    let (cur, peak) = tracemalloc::traced_memory();
    let s = tracemalloc::take_snapshot().expect("check snapshot");
    let (d0, d5, n) = check_snapshot(&s, ctx);
    if cur as u64 != known || d0 != known || d5 != 0 || n != 300 {
        fail(format!(
            "{ctx}: live known={known} traced_memory.current={cur} peak={peak} snapshot d0={d0} d5={d5} ntraces={n} (expected 300)"
        ));
    }
    if (peak as u64) < known {
        fail(format!("{ctx}: peak {peak} < live {known}"));
    }
    held.clear();
    let (cur2, _) = tracemalloc::traced_memory();
    let s2 = tracemalloc::take_snapshot().expect("check snapshot 2");
    let (e0, e5, n2) = check_snapshot(&s2, ctx);
    if cur2 != 0 || e0 != 0 || e5 != 0 || n2 != 0 {
        fail(format!(
            "{ctx}: after free traced_memory.current={cur2} snapshot d0={e0} d5={e5} ntraces={n2}"
        ));
        for t in s2.traces.iter().take(5) {
            eprintln!(
                "   leftover {} B domain {}: {:?}",
                t.size,
                t.domain,
                s2.tracebacks[t.traceback as usize]
                    .frames
                    .iter()
                    .map(|f| format!("{}:{} {:?}", f.filename, f.lineno, f.function))
                    .collect::<Vec<_>>()
            );
        }
    }
    drop(held);
}

/// After all workers exited under full tracing (no clear): current == sum of all traces.
fn exited_threads_check(ctx: &str) {
    CHECKS.fetch_add(1, Relaxed);
    let (cur, peak) = tracemalloc::traced_memory();
    let s = tracemalloc::take_snapshot().expect("final snapshot");
    let (d0, d5, n) = check_snapshot(&s, ctx);
    if cur as u64 != d0 + d5 || d5 != 0 || d0 > 256 * 1024 || peak < cur {
        let mut msg =
            format!("{ctx}: traced_memory=({cur},{peak}) snapshot d0={d0} d5={d5} ntraces={n}");
        let mut by_tb: std::collections::HashMap<u32, (u64, u64)> = Default::default();
        for t in &s.traces {
            let e = by_tb.entry(t.traceback).or_default();
            e.0 += t.size;
            e.1 += 1;
        }
        let mut v: Vec<_> = by_tb.into_iter().collect();
        v.sort_by_key(|(_, (sz, _))| std::cmp::Reverse(*sz));
        for (tb, (sz, cnt)) in v.into_iter().take(3) {
            msg += &format!(
                "\n   {sz} B in {cnt} blocks at {:?}",
                s.tracebacks[tb as usize]
                    .frames
                    .iter()
                    .take(6)
                    .map(|f| format!("{}:{}", f.filename, f.lineno))
                    .collect::<Vec<_>>()
            );
        }
        fail(msg);
    }
    if ctx.ends_with("#0") || std::env::var_os("STRESS_VERBOSE").is_some() {
        eprintln!("{ctx}: residual after exit: current={cur} d0={d0} ntraces={n}");
    }
}

fn main() {
    let secs: u64 = std::env::var("STRESS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let nworkers: usize = std::env::var("STRESS_THREADS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(6);
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        raw_write(b"*** PANIC -> abort\n");
        std::process::abort();
    }));
    watchdog(Duration::from_secs(20));
    // Let the watchdog finish starting (std allocates its thread name in the new thread).
    std::thread::sleep(Duration::from_millis(200));
    eprintln!(
        "stress: {secs} s, {nworkers} workers, tiny store: {}",
        tiny()
    );
    if tiny() {
        DEEP_MODE.store(true, Relaxed);
    }

    // single-thread sanity first
    known_blocks_check("initial");

    let t0 = Instant::now();
    let mut epoch = 0u64;
    while t0.elapsed() < Duration::from_secs(secs) {
        WHERE.store(1, Relaxed);
        let barrier = Arc::new(Barrier::new(nworkers + 2));
        let stop_barrier = Arc::new(Barrier::new(nworkers));
        let (txs, rxs): (Vec<_>, Vec<_>) = (0..nworkers).map(|_| channel::<Block>()).unzip();
        let mut handles = Vec::new();
        for (i, rx) in rxs.into_iter().enumerate() {
            let (txs, b, sb) = (txs.clone(), barrier.clone(), stop_barrier.clone());
            handles.push(std::thread::spawn(move || worker(i, rx, txs, b, sb)));
        }
        drop(txs);
        let cb = barrier.clone();
        let ctl = std::thread::spawn(move || controller(cb, epoch * 7919 + 17));

        // chaos, then a paused check, then more chaos
        for round in 0..2 {
            std::thread::sleep(Duration::from_millis(2500));
            bump();
            WHERE.store(2, Relaxed);
            PAUSE.store(true, Relaxed);
            barrier.wait(); // B1
            barrier.wait(); // B2
            PAUSE.store(false, Relaxed);
            WHERE.store(3, Relaxed);
            known_blocks_check(&format!("paused-check epoch {epoch} round {round}"));
            bump();
            // leave tracing in some mode for the controller to change
            barrier.wait(); // B3
        }
        std::thread::sleep(Duration::from_millis(1000));
        WHERE.store(4, Relaxed);
        FINAL.store(true, Relaxed);
        ctl.join().expect("controller panicked");
        FINAL.store(false, Relaxed);
        // full tracing now, workers keep going a bit
        std::thread::sleep(Duration::from_millis(500));
        WHERE.store(5, Relaxed);
        STOP.store(true, Relaxed);
        for h in handles {
            h.join().expect("worker panicked");
        }
        STOP.store(false, Relaxed);
        WHERE.store(6, Relaxed);
        exited_threads_check(&format!("exited-check epoch #{epoch}"));
        WHERE.store(7, Relaxed);
        known_blocks_check(&format!("joined-check epoch {epoch}"));
        epoch += 1;
        bump();
    }
    let c = |a: &AtomicU64| a.load(Relaxed);
    eprintln!(
        "stress done: {:.1} s, epochs={epoch}, allocs={} frees={} reallocs={} aligned={} sends={} spawns={} tracks={} untracks={} deep_calls={} snapshots={} snapshot_traces={} mode_steps={} clears={} checks={} store_full_tracebacks_seen={} FAILS={}",
        t0.elapsed().as_secs_f64(), c(&ALLOCS), c(&FREES), c(&REALLOCS), c(&ALIGNED), c(&SENDS), c(&SPAWNS),
        c(&TRACKS), c(&UNTRACKS), c(&DEEP), c(&SNAPSHOTS), c(&SNAP_TRACES), c(&MODE_SWITCHES), c(&CLEARS),
        c(&CHECKS), c(&STORE_FULL_SEEN), c(&FAILS)
    );
    if c(&FAILS) != 0 {
        std::process::exit(1);
    }
}
