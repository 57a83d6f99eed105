//! The traceback store stops growing at `Config::max_traceback_memory`: a program whose every
//! block comes from a new call stack keeps the tracer's memory bounded, and the blocks whose
//! stacks found no room still count, under `<traceback store full>`.
//!
//! Its own process: a store kept from an earlier `start()` would already have room.

use tracemalloc::{Config, KeyType, TracingAllocator};

#[global_allocator]
static ALLOC: TracingAllocator = TracingAllocator::system();

/// A binary tree built recursively: every node is allocated from a distinct call stack.
struct Node(
    #[allow(dead_code)] Option<Box<Node>>,
    #[allow(dead_code)] Option<Box<Node>>,
);

#[inline(never)]
fn build(depth: u32) -> Option<Box<Node>> {
    if depth == 0 {
        return None;
    }
    let left = build(depth - 1);
    let right = build(depth - 1);
    Some(Box::new(Node(left, right)))
}

#[test]
fn the_store_stops_growing_at_its_limit_and_every_block_still_counts() {
    const LIMIT: usize = 256 * 1024;
    tracemalloc::start_with(Config {
        nframe: 16,
        initial_tracebacks: 16,
        max_traceback_memory: LIMIT,
        ..Config::default()
    })
    .unwrap();
    let before = tracemalloc::tracemalloc_memory();
    // 16383 nodes from 16383 stacks of 16 and more frames: over 2 MiB of tracebacks unbounded.
    let tree = build(14);
    let grown = tracemalloc::tracemalloc_memory() - before;
    // The trace tables grow too (16383 slots of 16 bytes, doubled at most twice).
    assert!(
        grown < LIMIT + 1024 * 1024,
        "the tracer grew by {grown} bytes"
    );

    let snapshot = tracemalloc::take_snapshot().unwrap();
    let stats = snapshot.statistics(KeyType::Filename, false).unwrap();
    let full = stats
        .iter()
        .find(|s| &*s.traceback.frames[0].filename == "<traceback store full>")
        .expect("some stacks found the store full");
    let node = std::mem::size_of::<Node>() as u64;
    let here = stats
        .iter()
        .find(|s| s.traceback.frames[0].filename.ends_with("store_limit.rs"))
        .expect("the first stacks were stored");
    assert_eq!(here.count + full.count, 16383, "{here:?} + {full:?}");
    assert_eq!(here.size + full.size, 16383 * node);
    drop(tree);
    tracemalloc::stop();
}
