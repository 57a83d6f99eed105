//! `tracemalloc_memory()` tells the truth: it equals what the tracer took from the inner
//! allocator, measured by an inner allocator that counts its live bytes. Everything the
//! inner allocator holds is either a program block (traced, so in `traced_memory()`), the
//! tracer's storage, or memory that was live before tracing started.

use std::sync::atomic::Ordering::Relaxed;

use tracemalloc::TracingAllocator;
use tracemalloc_tests::{Counting, LIVE};

#[global_allocator]
static ALLOC: TracingAllocator<Counting> = TracingAllocator::new(Counting);

/// Inner-allocator bytes not accounted for by traced blocks or the tracer's storage. Other
/// threads (the test harness's) may have allocated a little since: `traced_memory()` misses
/// under 64 KiB of each other thread's latest changes.
const SLACK: i64 = 64 * 1024;

fn unexplained(before_start: i64) -> i64 {
    let live = LIVE.load(Relaxed) - before_start;
    let traced = tracemalloc::traced_memory().0 as i64;
    let tracer = tracemalloc::tracemalloc_memory() as i64;
    live - traced - tracer
}

#[test]
fn tracemalloc_memory_is_what_the_tracer_took_from_the_inner_allocator() {
    let before_start = LIVE.load(Relaxed);
    tracemalloc::start(16).unwrap();
    // The block `start` allocates to switch tracing on is gone; nothing else is live yet.
    let first = unexplained(before_start);
    assert!(first.abs() < SLACK, "{first} bytes unexplained after start");

    // Enough blocks to grow the tables several times, from enough stacks to grow the store.
    let mut blocks: Vec<Vec<u64>> = Vec::new();
    for i in 0..300_000usize {
        blocks.push(vec![i as u64; 1 + i % 7]);
    }
    let tracer = tracemalloc::tracemalloc_memory();
    assert!(tracer > 300_000 * 16, "{tracer} bytes for 300 000 traces");
    let grown = unexplained(before_start);
    assert!(
        grown.abs() < SLACK,
        "{grown} bytes unexplained with {tracer} of tracer"
    );

    drop(blocks);
    let after = unexplained(before_start);
    assert!(
        after.abs() < SLACK,
        "{after} bytes unexplained after the frees"
    );

    // `stop()` gives the storage back, as Python's does: the inner allocator holds what it held
    // before the start.
    tracemalloc::stop();
    assert_eq!(tracemalloc::tracemalloc_memory(), 0);
    let kept = LIVE.load(Relaxed) - before_start;
    assert!(kept.abs() < SLACK, "{kept} bytes still held after stop");

    // And the next start allocates afresh and traces as before.
    tracemalloc::start(16).unwrap();
    let again: Vec<Vec<u64>> = (0..50_000u64).map(|i| vec![i; 4]).collect();
    let restarted = unexplained(before_start);
    assert!(
        restarted.abs() < SLACK,
        "{restarted} bytes unexplained after the restart"
    );
    // (A snapshot loads the executable's debug info for good: checked after the accounting.)
    let snapshot = tracemalloc::take_snapshot().unwrap();
    let traced: u64 = snapshot.traces.iter().map(|t| t.size).sum();
    assert!(
        traced >= 50_000 * 32,
        "{traced} bytes traced after the restart"
    );
    drop((again, snapshot));
    tracemalloc::stop();
    assert_eq!(tracemalloc::tracemalloc_memory(), 0);
}
