//! A program's `realloc` that fails leaves the old block traced as it was, in its cell or its
//! table (the trace leaves both before the inner call, and must come back), and the block's
//! later free forgets it.

use std::alloc::Layout;

use tracemalloc::{Config, Storage, TracingAllocator};
use tracemalloc_tests::{traced_now, ReallocHook};

/// The size whose reallocation fails.
const FAIL: usize = 777_777;

#[global_allocator]
static ALLOC: TracingAllocator<ReallocHook> =
    TracingAllocator::new(ReallocHook(|size| size == FAIL));

/// One block of `size` bytes, in a cell or a table depending on `storage` and on its size
/// (blocks of 1 KiB and more are in the tables under either).
fn case(storage: Storage, size: usize) {
    tracemalloc::start_with(Config {
        nframe: 4,
        storage,
        ..Config::default()
    })
    .unwrap();
    let layout = Layout::from_size_align(size, 16).unwrap();
    let (before, _) = tracemalloc::traced_memory();
    // SAFETY: a non-zero size.
    let block = unsafe { std::alloc::alloc(layout) };
    assert!(
        !block.is_null() && traced_now(block),
        "{storage:?} {size} B: traced"
    );
    // SAFETY: `block` is live, of `layout`; `FAIL` is non-zero and far from overflow.
    let moved = unsafe { std::alloc::realloc(block, layout, FAIL) };
    assert!(moved.is_null());
    assert!(
        traced_now(block),
        "{storage:?} {size} B: the trace stays when realloc fails"
    );
    assert_eq!(
        tracemalloc::traced_memory().0,
        before + size,
        "{storage:?} {size} B"
    );
    // SAFETY: `block` is still live (the realloc failed), of `layout`.
    unsafe { std::alloc::dealloc(block, layout) };
    assert!(
        !traced_now(block),
        "{storage:?} {size} B: the free forgets it"
    );
    assert_eq!(
        tracemalloc::traced_memory().0,
        before,
        "{storage:?} {size} B"
    );
    tracemalloc::stop();
}

#[test]
fn a_failed_realloc_keeps_the_trace_until_the_block_is_freed() {
    for storage in [Storage::Table, Storage::Shadow] {
        for size in [96, 2048] {
            case(storage, size);
        }
    }
}
