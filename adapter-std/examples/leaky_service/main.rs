//! A small service with a real leak, hunted the way the tracemalloc story does it: a snapshot at
//! start, one every "few minutes" (here: every simulated minute of traffic), the top five files
//! by growth since start, then the traceback of the biggest allocation site.
//!
//! Run: `cargo run --release --example leaky_service`

mod cache;
mod handlers;

use std::time::Instant;

use tracemalloc::{KeyType, TracingAllocator};

#[global_allocator]
static ALLOC: TracingAllocator = TracingAllocator::system();

const MINUTES: usize = 5;
const REQUESTS_PER_MINUTE: usize = 20_000;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracemalloc::start(16)?;
    let started = Instant::now();
    let start = tracemalloc::take_snapshot()?;

    let mut service = handlers::Service::new();
    let mut current = start.clone();
    for minute in 1..=MINUTES {
        for request in 0..REQUESTS_PER_MINUTE {
            service.handle(minute * REQUESTS_PER_MINUTE + request);
        }
        // The periodic callback: compare with the snapshot taken at start, grouped by file.
        current = tracemalloc::take_snapshot()?;
        let (traced, peak) = tracemalloc::traced_memory();
        println!(
            "[minute {minute}] traced {} (peak {}), {} live blocks",
            tracemalloc::core::format_size(traced as f64, false),
            tracemalloc::core::format_size(peak as f64, false),
            current.traces.len()
        );
        for (i, stat) in current
            .compare_to(&start, KeyType::Filename, false)?
            .iter()
            .take(5)
            .enumerate()
        {
            println!("  since_start #{}: {stat}", i + 1);
        }
    }

    // The file that grows is known; now the line, and the traceback of its biggest block.
    println!("\nTop lines since start:");
    let by_line = current.compare_to(&start, KeyType::Lineno, false)?;
    for stat in by_line.iter().take(3) {
        println!("  {stat}");
    }
    let traces = current.statistics(KeyType::Traceback, false)?;
    if let Some(biggest) = traces.first() {
        println!(
            "\nBiggest allocation site: {} blocks, {:.1} KiB",
            biggest.count,
            biggest.size as f64 / 1024.0
        );
        for line in tracemalloc::format_traceback(&biggest.traceback, None) {
            println!("{line}");
        }
    }
    if let Some(top) = by_line.first() {
        println!("\nLeak found: {} grows fastest", top.traceback);
    }

    // Both ends of the hunt, for the command-line tool.
    let first = std::env::temp_dir().join("leaky_service-start.tmsnap");
    let last = std::env::temp_dir().join("leaky_service.tmsnap");
    tracemalloc::dump(&start, &first)?;
    tracemalloc::dump(&current, &last)?;
    let (first, last) = (first.display(), last.display());
    println!(
        "\nSnapshots written to {first} and {last} ({} ms in all); try:\n  \
         cargo run --release -p tracemalloc -- compare {first} {last} --key filename\n  \
         cargo run --release -p tracemalloc -- traceback {last} --limit 1",
        started.elapsed().as_millis(),
    );
    service.shutdown();
    Ok(())
}
