//! A program's `realloc` that fails leaves the old block traced as it was, in its cell or its
//! table (the trace leaves both before the inner call, and must come back), and the block's
//! later free forgets it.

use std::alloc::{GlobalAlloc, Layout, System};

use tracemalloc::{Config, Storage, TracingAllocator};

/// The size whose reallocation fails.
const FAIL: usize = 777_777;

struct FailsAt;

// SAFETY: forwards to `System` unchanged, except that a realloc to `FAIL` bytes returns null,
// which `GlobalAlloc::realloc` allows (the old block stays valid and untouched).
unsafe impl GlobalAlloc for FailsAt {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract, forwarded.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size == FAIL {
            return std::ptr::null_mut();
        }
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: TracingAllocator<FailsAt> = TracingAllocator::new(FailsAt);

/// Whether the block at `ptr` has a trace. The snapshot first applies this thread's queued
/// frees (tables only), as every question about the traces does.
fn traced(ptr: *const u8) -> bool {
    drop(tracemalloc::take_snapshot().unwrap());
    tracemalloc::object_traceback(ptr).is_some()
}

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
        !block.is_null() && traced(block),
        "{storage:?} {size} B: traced"
    );
    // SAFETY: `block` is live, of `layout`; `FAIL` is non-zero and far from overflow.
    let moved = unsafe { std::alloc::realloc(block, layout, FAIL) };
    assert!(moved.is_null());
    assert!(
        traced(block),
        "{storage:?} {size} B: the trace stays when realloc fails"
    );
    assert_eq!(
        tracemalloc::traced_memory().0,
        before + size,
        "{storage:?} {size} B"
    );
    // SAFETY: `block` is still live (the realloc failed), of `layout`.
    unsafe { std::alloc::dealloc(block, layout) };
    assert!(!traced(block), "{storage:?} {size} B: the free forgets it");
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
