//! The wrapper inside another global allocator (a counting or limiting wrapper of the kind
//! `cap` and `stats_alloc` provide), and a second wrapper instance beside it: every block must
//! go back through the inner allocator that gave it out, exactly once, however the tracer
//! applies its frees (queued frees are applied through the allocator that queued them, never
//! through the global one again).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::Ordering::Relaxed;

use tracemalloc::TracingAllocator;
use tracemalloc_tests::{start_in_tables, Counting, LIVE};

/// Counts the frees it is asked for, then hands them to the tracing wrapper inside.
struct Outer(TracingAllocator<System>);

thread_local! {
    /// Frees asked of `Outer` on this thread: the test harness's own threads free meanwhile.
    /// Const-initialised, no destructor: usable inside the allocator.
    static OUTER_FREES: Cell<i64> = const { Cell::new(0) };
}

fn outer_frees() -> i64 {
    OUTER_FREES.with(Cell::get)
}

// SAFETY: forwards to the wrapper unchanged; only counts frees.
unsafe impl GlobalAlloc for Outer {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is forwarded.
        unsafe { self.0.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let _ = OUTER_FREES.try_with(|n| n.set(n.get() + 1));
        // SAFETY: the caller's contract is forwarded.
        unsafe { self.0.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Outer = Outer(TracingAllocator::system());

/// The tests count the global allocator's frees and start and stop the tracer: one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn each_free_reaches_the_outer_allocator_once() {
    let _s = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    start_in_tables(1);
    let blocks = tracemalloc_tests::blocks(5, || Box::new([1u8; 64]));
    let _ = tracemalloc::traced_memory();
    let before = outer_frees();
    drop(blocks); // 5 boxes and the Vec: queued by the wrapper
    let dropped = outer_frees();
    let _ = tracemalloc::traced_memory(); // applies the queue
    let after = outer_frees();
    tracemalloc::stop();
    assert_eq!(dropped - before, 6);
    assert_eq!(
        after, dropped,
        "queued blocks went through the global allocator again"
    );
}

/// A second wrapper, used directly rather than as the global allocator.
static SECOND: TracingAllocator<Counting> = TracingAllocator::new(Counting);

/// Allocates `n` blocks of `layout` through `SECOND`, runs `while_live`, frees them through
/// it, and returns how many bytes `Counting` gained while they were all live.
fn second_wrapper_blocks(n: usize, layout: Layout, while_live: impl FnOnce()) -> i64 {
    let before = LIVE.load(Relaxed);
    // SAFETY: each block is allocated by `SECOND` with `layout` and freed once by it.
    let blocks: Vec<*mut u8> = (0..n).map(|_| unsafe { SECOND.alloc(layout) }).collect();
    let held = LIVE.load(Relaxed) - before;
    while_live();
    for block in blocks {
        // SAFETY: as above.
        unsafe { SECOND.dealloc(block, layout) };
    }
    held
}

#[test]
fn a_wrapper_that_is_not_the_global_allocator_frees_at_once() {
    let _s = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    start_in_tables(1);
    let before = LIVE.load(Relaxed);
    second_wrapper_blocks(3, Layout::new::<[u8; 64]>(), || {});
    // Only the global allocator's blocks are queued (it is a `static`, so the queue may keep
    // a reference to it): these went back to `Counting` at once.
    assert_eq!(
        LIVE.load(Relaxed),
        before,
        "blocks of the second wrapper were held back"
    );
    tracemalloc::stop();
}

#[test]
fn a_second_wrapper_never_grows_the_tracers_storage() {
    let _s = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    start_in_tables(1);
    // 20 000 neighbouring blocks: more than a shard's first table (3072 traces) holds, so
    // that shard's table fills and, unable to grow from `Counting`, counts the rest untraced.
    let untraced = || {
        tracemalloc::take_snapshot()
            .unwrap()
            .counters
            .untraced_blocks
    };
    let untraced_before = untraced();
    let held = second_wrapper_blocks(20_000, Layout::new::<[u8; 32]>(), || {
        assert!(untraced() > untraced_before, "the table filled");
    });
    tracemalloc::stop();
    // Storage grown from `Counting` would be freed by `stop()` through `System`, the allocator
    // the tracer's storage came from: a free of memory `System` never handed out.
    assert_eq!(
        held,
        20_000 * 32,
        "the tracer took storage from the second wrapper's allocator"
    );
}
