//! A `start()` whose inner allocator runs out of memory part-way says so, keeps nothing of
//! what it took, and leaves the tracer able to start and stop cleanly afterwards.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering::Relaxed};

use tracemalloc::TracingAllocator;

/// When positive, counts down large zeroed allocations (the tracer's tables) and fails the one
/// that reaches zero.
static FAIL_IN: AtomicIsize = AtomicIsize::new(0);

/// `System`, with a table allocation that fails on demand.
struct Flaky;

// SAFETY: forwards to `System`, or fails an allocation by returning null, which `GlobalAlloc`
// allows.
unsafe impl GlobalAlloc for Flaky {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is forwarded.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() >= 64 * 1024
            && FAIL_IN.load(Relaxed) > 0
            && FAIL_IN.fetch_sub(1, Relaxed) == 1
        {
            return std::ptr::null_mut();
        }
        // SAFETY: the caller's contract is forwarded.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract is forwarded.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: TracingAllocator<Flaky> = TracingAllocator::new(Flaky);

#[test]
fn a_start_that_runs_out_of_memory_keeps_nothing() {
    FAIL_IN.store(2, Relaxed); // the first shard's table is allocated, the second's fails
    let err = tracemalloc::start(1).unwrap_err();
    assert!(matches!(err, tracemalloc::Error::OutOfMemory), "{err}");
    assert!(!tracemalloc::is_tracing());
    assert_eq!(
        tracemalloc::tracemalloc_memory(),
        0,
        "the failed start kept part of its tables"
    );

    tracemalloc::start(1).unwrap();
    assert!(tracemalloc::tracemalloc_memory() > 0);
    tracemalloc::stop();
    assert_eq!(
        tracemalloc::tracemalloc_memory(),
        0,
        "stop() kept the tracer's memory"
    );
}
