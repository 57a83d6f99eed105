//! A `start()` whose inner allocator runs out of memory part-way says so, keeps nothing of
//! what it took (the inner allocator holds what it held before), and leaves the tracer able to
//! start and stop cleanly afterwards.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicI64, AtomicIsize, AtomicUsize, Ordering::Relaxed};

use tracemalloc::TracingAllocator;
use tracemalloc_core::traceback::TracebackEntry;

/// Zeroed allocations whose size passes `FAIL_WHEN` are counted down from `FAIL_IN`; the one
/// that reaches zero fails.
static FAIL_IN: AtomicIsize = AtomicIsize::new(0);
/// 0: at least 64 KiB (the shards' tables); otherwise exactly this many bytes.
static FAIL_WHEN: AtomicUsize = AtomicUsize::new(0);
/// Bytes the inner allocator holds.
static LIVE: AtomicI64 = AtomicI64::new(0);

/// `System`, counting live bytes, with a zeroed allocation that fails on demand.
struct Flaky;

fn fails(size: usize) -> bool {
    let matches = match FAIL_WHEN.load(Relaxed) {
        0 => size >= 64 * 1024,
        exact => size == exact,
    };
    matches && FAIL_IN.load(Relaxed) > 0 && FAIL_IN.fetch_sub(1, Relaxed) == 1
}

fn counted(ptr: *mut u8, layout: Layout) -> *mut u8 {
    if !ptr.is_null() {
        LIVE.fetch_add(layout.size() as i64, Relaxed);
    }
    ptr
}

// SAFETY: forwards to `System`, or fails an allocation by returning null, which `GlobalAlloc`
// allows; the counting never touches the blocks.
unsafe impl GlobalAlloc for Flaky {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is forwarded.
        counted(unsafe { System.alloc(layout) }, layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if fails(layout.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: the caller's contract is forwarded.
        counted(unsafe { System.alloc_zeroed(layout) }, layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as i64, Relaxed);
        // SAFETY: the caller's contract is forwarded.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: TracingAllocator<Flaky> = TracingAllocator::new(Flaky);

/// The tests start and stop the tracer and count live bytes: one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Makes `start(1)` fail at the `nth` zeroed allocation that `when` selects, and checks that
/// nothing stays behind.
fn start_fails_and_keeps_nothing(when: usize, nth: isize, what: &str) {
    let before = LIVE.load(Relaxed);
    FAIL_WHEN.store(when, Relaxed);
    FAIL_IN.store(nth, Relaxed);
    let err = tracemalloc::start(1).unwrap_err();
    FAIL_IN.store(0, Relaxed);
    assert!(
        matches!(err, tracemalloc::Error::OutOfMemory),
        "{what}: {err}"
    );
    assert!(!tracemalloc::is_tracing());
    assert_eq!(tracemalloc::tracemalloc_memory(), 0, "{what}");
    // The test harness's other threads may allocate a little meanwhile.
    let kept = LIVE.load(Relaxed) - before;
    assert!(
        kept.abs() < 4096,
        "{what}: the failed start kept {kept} bytes"
    );
}

#[test]
fn a_start_that_runs_out_of_memory_keeps_nothing() {
    let _s = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    start_fails_and_keeps_nothing(0, 2, "the second shard's table");
    let foreign_entries = 1024 * size_of::<TracebackEntry>();
    start_fails_and_keeps_nothing(foreign_entries, 1, "the other domains' tracebacks");

    let before = LIVE.load(Relaxed);
    tracemalloc::start(1).unwrap();
    assert!(tracemalloc::tracemalloc_memory() > 0);
    tracemalloc::stop();
    assert_eq!(
        tracemalloc::tracemalloc_memory(),
        0,
        "stop() kept the tracer's memory"
    );
    let kept = LIVE.load(Relaxed) - before;
    assert!(kept.abs() < 4096, "stop() kept {kept} bytes");
}

#[test]
fn absurd_table_sizes_are_a_lack_of_memory_not_a_panic() {
    let _s = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    for config in [
        tracemalloc::Config {
            initial_slots_per_shard: usize::MAX,
            ..tracemalloc::Config::default()
        },
        tracemalloc::Config {
            initial_tracebacks: usize::MAX / 2,
            ..tracemalloc::Config::default()
        },
    ] {
        let err = tracemalloc::start_with(config).unwrap_err();
        assert!(matches!(err, tracemalloc::Error::OutOfMemory), "{err}");
        assert!(!tracemalloc::is_tracing());
    }
}
