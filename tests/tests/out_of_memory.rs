//! A `start()` whose inner allocator runs out of memory part-way says so, keeps nothing of
//! what it took (the inner allocator holds what it held before), and leaves the tracer able to
//! start and stop cleanly afterwards. An inner allocator that cannot align large tables to huge
//! pages still gets them, and gets each back with the layout it handed out.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicIsize, AtomicUsize, Ordering::Relaxed};

use tracemalloc::TracingAllocator;
use tracemalloc_core::traceback::TracebackEntry;

/// Zeroed allocations whose size passes `FAIL_WHEN` are counted down from `FAIL_IN`; the one
/// that reaches zero fails.
static FAIL_IN: AtomicIsize = AtomicIsize::new(0);
/// 0: at least 64 KiB (the shards' tables); otherwise exactly this many bytes.
static FAIL_WHEN: AtomicUsize = AtomicUsize::new(0);
/// Bytes the inner allocator holds in blocks of 4 KiB or more: every array of the tracer is at
/// least that big, and the test harness's own allocations (a thread it spawns for the next
/// test while this one measures) are smaller.
static LIVE: AtomicI64 = AtomicI64::new(0);
const COUNTED_FROM: usize = 4096;
/// Set when a block of 1 MiB or more came back with another layout than it was given.
static WRONG_LAYOUT: AtomicBool = AtomicBool::new(false);
/// Reallocations to at least `FAIL_REALLOC_FROM` bytes are counted down from
/// `FAIL_REALLOC_IN`; the one that reaches zero fails.
static FAIL_REALLOC_IN: AtomicIsize = AtomicIsize::new(0);
static FAIL_REALLOC_FROM: AtomicUsize = AtomicUsize::new(usize::MAX);
/// Whether alignments beyond a page are refused (as some arena allocators do).
static PAGE_ALIGN_ONLY: AtomicBool = AtomicBool::new(false);

/// The live blocks of 1 MiB or more (the tracer's tables): `(address, size, align)`, zeros for
/// a free entry.
static BIG: Lock<[(usize, usize, usize); 256]> = Lock::new([(0, 0, 0); 256]);

/// A lock that never allocates: the allocator itself takes it.
struct Lock<T> {
    held: AtomicBool,
    value: std::cell::UnsafeCell<T>,
}

// SAFETY: the value is reached only through `with`, which holds `held`.
unsafe impl<T: Send> Sync for Lock<T> {}

impl<T> Lock<T> {
    const fn new(value: T) -> Self {
        Lock {
            held: AtomicBool::new(false),
            value: std::cell::UnsafeCell::new(value),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        while self.held.swap(true, std::sync::atomic::Ordering::Acquire) {
            std::hint::spin_loop();
        }
        // SAFETY: `held` was false and is now ours, so no other reference exists.
        let result = f(unsafe { &mut *self.value.get() });
        self.held.store(false, std::sync::atomic::Ordering::Release);
        result
    }
}

fn fails(size: usize) -> bool {
    let matches = match FAIL_WHEN.load(Relaxed) {
        0 => size >= 64 * 1024,
        exact => size == exact,
    };
    matches && FAIL_IN.load(Relaxed) > 0 && FAIL_IN.fetch_sub(1, Relaxed) == 1
}

/// Counts a block the inner allocator handed out, and notes the layout of a big one.
fn handed_out(ptr: *mut u8, layout: Layout) -> *mut u8 {
    if ptr.is_null() {
        return ptr;
    }
    if layout.size() >= COUNTED_FROM {
        LIVE.fetch_add(layout.size() as i64, Relaxed);
    }
    if layout.size() >= 1 << 20 {
        BIG.with(|big| {
            if let Some(entry) = big.iter_mut().find(|e| e.0 == 0) {
                *entry = (ptr as usize, layout.size(), layout.align());
            }
        });
    }
    ptr
}

/// Counts a block given back, and checks a big one's layout.
fn given_back(ptr: *mut u8, layout: Layout) {
    if layout.size() >= COUNTED_FROM {
        LIVE.fetch_sub(layout.size() as i64, Relaxed);
    }
    if layout.size() >= 1 << 20 {
        BIG.with(|big| match big.iter_mut().find(|e| e.0 == ptr as usize) {
            Some(entry) if (entry.1, entry.2) == (layout.size(), layout.align()) => {
                *entry = (0, 0, 0);
            }
            _ => WRONG_LAYOUT.store(true, Relaxed),
        });
    }
}

/// `System`, counting live bytes, with a zeroed allocation that fails on demand and, on
/// demand, no alignment beyond a page.
struct Flaky;

fn refused(layout: Layout) -> bool {
    layout.align() > 4096 && PAGE_ALIGN_ONLY.load(Relaxed)
}

// SAFETY: forwards to `System`, or fails an allocation by returning null, which `GlobalAlloc`
// allows; the bookkeeping never touches the blocks.
unsafe impl GlobalAlloc for Flaky {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if refused(layout) {
            return std::ptr::null_mut();
        }
        // SAFETY: the caller's contract is forwarded.
        handed_out(unsafe { System.alloc(layout) }, layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if fails(layout.size()) || refused(layout) {
            return std::ptr::null_mut();
        }
        // SAFETY: the caller's contract is forwarded.
        handed_out(unsafe { System.alloc_zeroed(layout) }, layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        given_back(ptr, layout);
        // SAFETY: the caller's contract is forwarded.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let counted =
            new_size >= FAIL_REALLOC_FROM.load(Relaxed) && FAIL_REALLOC_IN.load(Relaxed) > 0;
        if counted && FAIL_REALLOC_IN.fetch_sub(1, Relaxed) == 1 {
            return std::ptr::null_mut(); // the block stays as it was, as `realloc` promises
        }
        // SAFETY: the caller's contract is forwarded; the default moves the block through
        // `alloc` and `dealloc` above, which count it.
        unsafe { GlobalAlloc::realloc(&Counted, ptr, layout, new_size) }
    }
}

/// `Flaky`'s counting without its failures, for its own `realloc`.
struct Counted;

// SAFETY: forwards to `System` and counts, as `Flaky` does.
unsafe impl GlobalAlloc for Counted {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is forwarded.
        handed_out(unsafe { System.alloc(layout) }, layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        given_back(ptr, layout);
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

/// Starts with `config`, allocates `blocks` small blocks, and checks that the tracer then holds
/// more than `at_least` bytes, that no block went untraced and that every table came back with
/// its layout.
fn tables_come_back_with_their_layout(config: tracemalloc::Config, blocks: usize, at_least: usize) {
    tracemalloc::start_with(config).unwrap();
    let live: Vec<Box<[u8; 16]>> = (0..blocks).map(|_| Box::new([0; 16])).collect();
    let memory = tracemalloc::tracemalloc_memory();
    let snapshot = tracemalloc::take_snapshot().unwrap();
    assert_eq!(snapshot.counters.untraced_blocks, 0);
    assert!(snapshot.traces.len() >= blocks);
    drop((live, snapshot));
    tracemalloc::stop();
    assert!(
        memory > at_least,
        "{memory} bytes of tracer, expected over {at_least}"
    );
    assert!(
        !WRONG_LAYOUT.load(Relaxed),
        "a table came back with another layout"
    );
}

#[test]
fn large_tables_fall_back_to_plain_pages_where_huge_ones_cannot_be_aligned() {
    let _s = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    PAGE_ALIGN_ONLY.store(true, Relaxed);
    // Tables of 4 MiB from the start: each asks for huge pages first.
    let config = tracemalloc::Config {
        initial_slots_per_shard: 1 << 18,
        ..tracemalloc::Config::default()
    };
    tables_come_back_with_their_layout(config, 50_000, (16 << 22) - 1);
    PAGE_ALIGN_ONLY.store(false, Relaxed);
}

#[test]
fn tables_that_grow_onto_huge_pages_come_back_with_their_layout() {
    let _s = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // 2 MiB tables to start with (98 304 traces each): the 1.6 M blocks fill about 50 chunks
    // of 1 MiB, 3 a shard on average, so shards with 4 or more move to 4 MiB tables on huge
    // pages and give back the old ones.
    let config = tracemalloc::Config {
        initial_slots_per_shard: 1 << 17,
        ..tracemalloc::Config::default()
    };
    tables_come_back_with_their_layout(config, 1_600_000, 16 << 21);
}

/// A recursion whose every level allocates from a call stack of its own (`nframe` 16 tells
/// the levels apart): `2^depth - 1` distinct stacks.
#[inline(never)]
#[allow(clippy::vec_box)] // each box is a block of its own, allocated from its own stack
fn distinct_stacks(depth: u32, out: &mut Vec<Box<u64>>) {
    if depth == 0 {
        return;
    }
    out.push(Box::new(u64::from(depth)));
    distinct_stacks(depth - 1, out);
    std::hint::black_box(());
    distinct_stacks(depth - 1, out);
}

#[test]
fn a_traceback_store_that_cannot_grow_keeps_what_it_holds() {
    let _s = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let config = tracemalloc::Config {
        nframe: 16,
        initial_tracebacks: 256,
        ..tracemalloc::Config::default()
    };
    let run = |fail: bool| {
        tracemalloc::start_with(config.clone()).unwrap();
        // The store's frame pool is the only block reallocated to 64 KiB or more here: its
        // first growth that far fails after the entries have grown.
        let mut out = Vec::with_capacity(1 << 13);
        FAIL_REALLOC_FROM.store(64 * 1024, Relaxed);
        FAIL_REALLOC_IN.store(isize::from(fail), Relaxed);
        distinct_stacks(13, &mut out);
        let failed = FAIL_REALLOC_IN.load(Relaxed) == 0;
        FAIL_REALLOC_FROM.store(usize::MAX, Relaxed);
        let snapshot = tracemalloc::take_snapshot().unwrap();
        tracemalloc::stop();
        (out, snapshot, failed)
    };
    // A first run without failure: the symbolizer keeps the debug information it loads.
    drop(run(false));
    let before = LIVE.load(Relaxed);
    let (out, snapshot, failed) = run(true);
    assert!(failed, "no growth of the store reached 64 KiB");
    assert_eq!(snapshot.counters.untraced_blocks, 0);
    let full = snapshot
        .traces
        .iter()
        .filter(|t| snapshot.traceback_of(t).frames[0] == tracemalloc::Frame::store_full())
        .count();
    let ours = snapshot.traces.iter().filter(|t| t.size == 8).count();
    assert!(ours >= out.len(), "{ours} of {} blocks traced", out.len());
    // The block whose stack met the failed growth has no traceback; the store grew at the next
    // new stack, so every later one has its own.
    assert!(full < 8, "{full} blocks under <traceback store full>");
    drop((out, snapshot));
    assert!(
        !WRONG_LAYOUT.load(Relaxed),
        "a block came back with another layout"
    );
    let kept = LIVE.load(Relaxed) - before;
    assert!(kept.abs() < 4096, "stop() kept {kept} bytes");
}
