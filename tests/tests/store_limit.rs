//! The traceback store stops growing at `Config::max_traceback_memory`: a program whose every
//! block comes from a new call stack keeps the tracer's memory bounded, and the blocks whose
//! stacks found no room still count, under `<traceback store full>`. A stack refused only
//! because the store could not grow at that moment is stored once it has grown.
//!
//! Its own process: a store kept from an earlier `start()` would already have room.

use tracemalloc::{Config, Storage, TracingAllocator};
use tracemalloc_tests::{tree, Node};

#[global_allocator]
static ALLOC: TracingAllocator = TracingAllocator::system();

#[test]
fn the_store_stops_growing_at_its_limit_and_every_block_still_counts() {
    // Both parts need a store that starts small, and `stop()` keeps the store: the part whose
    // store may grow freely runs first.
    // A stack that found the store full only because it could not grow there (`track` runs
    // outside the allocator and lends it no memory) is stored once the store has grown.
    tracemalloc::start_with(Config {
        nframe: 16,
        initial_tracebacks: 16,
        ..Config::default()
    })
    .unwrap();
    let fake = |depth: u32| (0x7000_0000 + depth as usize * 64) as *const u8;
    let track_all = || {
        for depth in 0..64 {
            assert!(track_from(depth, fake(depth)));
        }
    };
    let full_tracked = || {
        let snapshot = tracemalloc::take_snapshot().unwrap();
        snapshot
            .traces
            .iter()
            .filter(|t| t.size == 48)
            .filter(|t| {
                let frames = &snapshot.tracebacks[t.traceback as usize].frames;
                &*frames[0].filename == "<traceback store full>"
            })
            .count()
    };
    track_all();
    assert!(full_tracked() > 0, "the 16-entry store held 64 new stacks");
    for depth in 0..64 {
        tracemalloc::untrack(0, fake(depth));
    }
    let grown = tree(10); // 1023 stacks through the allocator: the store grows
    track_all();
    assert_eq!(full_tracked(), 0, "stacks stayed <traceback store full>");
    for depth in 0..64 {
        tracemalloc::untrack(0, fake(depth));
    }
    drop(grown);
    tracemalloc::stop();

    const LIMIT: usize = 256 * 1024;
    tracemalloc::start_with(Config {
        nframe: 16,
        initial_tracebacks: 16,
        max_traceback_memory: LIMIT,
        // Tables, whose growth is bounded by the number of blocks: shadow memory follows the
        // heap's span, which in a debug build spreads these 16 383 nodes over 15 MiB.
        storage: Storage::Table,
        ..Config::default()
    })
    .unwrap();
    let before = tracemalloc::tracemalloc_memory();
    // 16383 nodes from 16383 stacks of 16 and more frames: over 2 MiB of tracebacks unbounded.
    let tree = tree(14);
    let grown = tracemalloc::tracemalloc_memory() - before;
    // The trace tables grow too (16383 slots of 16 bytes, doubled at most twice).
    assert!(
        grown < LIMIT + 1024 * 1024,
        "the tracer grew by {grown} bytes"
    );

    let snapshot = tracemalloc::take_snapshot().unwrap();
    // The nodes by where their traces say they come from: by size, as the test harness's main
    // thread may allocate meanwhile, other sizes.
    let node = std::mem::size_of::<Node>() as u64;
    let nodes_from = |file: &dyn Fn(&str) -> bool| {
        let from = |t: &&tracemalloc::core::snapshot::Trace| {
            t.size == node && file(&snapshot.traceback_of(t).frames[0].filename)
        };
        snapshot.traces.iter().filter(from).count()
    };
    let full = nodes_from(&|file| file == "<traceback store full>");
    let here = nodes_from(&|file| file.ends_with("tests/src/lib.rs")); // `tree`'s file
    assert!(full > 0, "some stacks found the store full");
    assert!(here > 0, "the first stacks were stored");
    assert_eq!(here + full, 16383, "{here} + {full}");
    drop(tree);
    tracemalloc::stop();
}

/// Tracks 48 bytes at `at` from `depth` frames deeper than the caller: one stack per depth.
#[inline(never)]
fn track_from(depth: u32, at: *const u8) -> bool {
    if depth == 0 {
        return tracemalloc::track(0, at, 48);
    }
    std::hint::black_box(track_from(depth - 1, at))
}
