//! `tracemalloc_memory()` tells the truth: it equals what the tracer took from the inner
//! allocator, measured by an inner allocator that counts its live bytes, plus the pages of
//! shadow memory in use, as the kernel reports them in `/proc/self/smaps`. Everything the
//! inner allocator holds is either a program block (traced, so in `traced_memory()`), the
//! tracer's storage, or memory that was live before tracing started.

use std::sync::atomic::Ordering::Relaxed;

use tracemalloc::{Config, Storage, TracingAllocator};
use tracemalloc_tests::{Counting, LIVE};

#[global_allocator]
static ALLOC: TracingAllocator<Counting> = TracingAllocator::new(Counting);

/// Inner-allocator bytes not accounted for by traced blocks or the tracer's storage. Other
/// threads (the test harness's) may have allocated a little since: `traced_memory()` misses
/// under 64 KiB of each other thread's latest changes.
const SLACK: i64 = 64 * 1024;

/// Bytes of shadow memory in use: the resident pages of the shadow's reservations, which are
/// mappings of their own of 1 GiB of cells in planes, 224 MiB of coarser cells (three grids of
/// 128, 64 and 32 MiB) and 40 KiB of bitmap (each between two inaccessible pages).
fn shadow_resident() -> i64 {
    const RESERVATION_KIB: u64 = (1 << 20) + (224 << 10) + 40;
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let mut total = 0;
    let mut in_shadow = false;
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("Size:"), Some(kib)) => in_shadow = kib.parse() == Ok(RESERVATION_KIB),
            (Some("Rss:"), Some(kib)) if in_shadow => total += kib.parse::<i64>().unwrap() * 1024,
            _ => {}
        }
    }
    total
}

fn unexplained(before_start: i64) -> i64 {
    let live = LIVE.load(Relaxed) - before_start;
    let traced = tracemalloc::traced_memory().0 as i64;
    let tracer = tracemalloc::tracemalloc_memory() as i64;
    live - traced - (tracer - shadow_resident())
}

#[test]
fn tracemalloc_memory_is_what_the_tracer_took_from_the_inner_allocator_and_the_kernel() {
    for storage in [Storage::Table, Storage::Shadow] {
        check(storage);
    }
}

fn check(storage: Storage) {
    let config = Config {
        nframe: 16,
        storage,
        ..Config::default()
    };
    let before_start = LIVE.load(Relaxed);
    tracemalloc::start_with(config.clone()).unwrap();
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

    if storage == Storage::Shadow {
        let shadow = shadow_resident();
        assert!(
            shadow > 300_000 * 8,
            "{shadow} bytes of shadow for 300 000 traces"
        );
    }
    let grown = unexplained(before_start);
    assert!(
        grown.abs() < SLACK,
        "{grown} bytes unexplained with {tracer} of tracer"
    );
    // A snapshot says the same. What it leaves behind (the symbolizer's caches) is not the
    // tracer's, and is not counted from here on.
    let before_snapshot = LIVE.load(Relaxed);
    let in_snapshot = tracemalloc::take_snapshot().unwrap().tracer_memory;
    let before_start = before_start + (LIVE.load(Relaxed) - before_snapshot);
    assert!(
        in_snapshot.abs_diff(tracer as u64) < SLACK as u64,
        "{in_snapshot} bytes in the snapshot, {tracer} by tracemalloc_memory()"
    );

    drop(blocks);
    let after = unexplained(before_start);
    assert!(
        after.abs() < SLACK,
        "{after} bytes unexplained after the frees"
    );

    // `clear_traces()` gives shadow memory's pages back (all but a bitmap page per region).
    if storage == Storage::Shadow {
        tracemalloc::clear_traces();
        let kept = shadow_resident();
        assert!(
            kept <= 64 * 1024,
            "{kept} bytes of shadow kept by clear_traces()"
        );
    }

    // `stop()` gives the storage back, as Python's does: the inner allocator holds what it held
    // before the start.
    tracemalloc::stop();
    assert_eq!(tracemalloc::tracemalloc_memory(), 0);
    assert_eq!(shadow_resident(), 0, "stop() gives the shadow's pages back");
    let kept = LIVE.load(Relaxed) - before_start;
    assert!(kept.abs() < SLACK, "{kept} bytes still held after stop");

    // And the next start allocates afresh and traces as before.
    tracemalloc::start_with(config).unwrap();
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
