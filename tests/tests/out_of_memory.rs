//! A `start()` whose inner allocator runs out of memory part-way says so, keeps nothing of
//! what it took (the inner allocator holds what it held before), and leaves the tracer able to
//! start and stop cleanly afterwards. A traceback store that cannot grow keeps what it holds
//! and leaks nothing, whichever step of its growth fails. An inner allocator that cannot align
//! large tables to huge pages still gets them, and gets each back with the layout it handed
//! out.
//!
//! The cases run in turn from `main`, without a test harness: the inner allocator's live bytes
//! are counted for the whole process, and a harness allocates on its own threads meanwhile.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicIsize, AtomicUsize, Ordering::Relaxed};

use tracemalloc::TracingAllocator;
use tracemalloc_core::traceback::TracebackEntry;

/// Zeroed allocations whose size passes `FAIL_WHEN` are counted down from `FAIL_IN`; the one
/// that reaches zero fails.
static FAIL_IN: AtomicIsize = AtomicIsize::new(0);
/// 0: at least 64 KiB (the shards' tables); otherwise exactly this many bytes.
static FAIL_WHEN: AtomicUsize = AtomicUsize::new(0);
/// Bytes the inner allocator holds.
static LIVE: AtomicI64 = AtomicI64::new(0);
/// Set when a block of 1 MiB or more came back with another layout than it was given.
static WRONG_LAYOUT: AtomicBool = AtomicBool::new(false);
/// The step of a traceback store's growth that fails, `GROWTH_FAILURES` more times.
static FAILING_STEP: AtomicUsize = AtomicUsize::new(NO_STEP);
static GROWTH_FAILURES: AtomicIsize = AtomicIsize::new(0);
const NO_STEP: usize = 0;
/// The new index: the only zeroed allocation of alignment 8 whose size is a power of two of
/// 1 KiB or more while the store grows.
const INDEX: usize = 1;
/// The entries: the only reallocation of alignment 4.
const ENTRIES: usize = 2;
/// The frame pool: the only reallocation of alignment 8 and 16 KiB or more.
const FRAMES: usize = 3;

fn growth_fails(step: usize) -> bool {
    FAILING_STEP.load(Relaxed) == step
        && GROWTH_FAILURES.load(Relaxed) > 0
        && GROWTH_FAILURES.fetch_sub(1, Relaxed) > 0
}

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

/// Blocks handed out aligned to a huge page (2 MiB): the tracer's tables on huge pages.
static HUGE_ALIGNED: AtomicUsize = AtomicUsize::new(0);

/// Counts a block the inner allocator handed out, and notes the layout of a big one.
fn handed_out(ptr: *mut u8, layout: Layout) -> *mut u8 {
    if ptr.is_null() {
        return ptr;
    }
    if layout.align() >= 2 << 20 {
        HUGE_ALIGNED.fetch_add(1, Relaxed);
    }
    LIVE.fetch_add(layout.size() as i64, Relaxed);
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
    LIVE.fetch_sub(layout.size() as i64, Relaxed);
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
        let index = layout.align() == 8
            && layout.size() >= 1024
            && layout.size().is_power_of_two()
            && growth_fails(INDEX);
        if index || fails(layout.size()) || refused(layout) {
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
        let entries = layout.align() == 4 && growth_fails(ENTRIES);
        let frames = layout.align() == 8 && new_size >= 16 * 1024 && growth_fails(FRAMES);
        if entries || frames {
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
    assert_eq!(kept, 0, "{what}: the failed start kept {kept} bytes");
}

fn a_start_that_runs_out_of_memory_keeps_nothing() {
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
    assert_eq!(kept, 0, "stop() kept {kept} bytes");
}

fn absurd_table_sizes_are_a_lack_of_memory_not_a_panic() {
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
/// Starts with `config` in the tables (`Storage::Table`: shadow memory would hold these small
/// blocks, and the tables would never grow), allocates `blocks` blocks, and checks that the
/// tracer took more than `at_least` bytes, `huge` of its tables on huge pages, and that every
/// table came back with the layout it was given with.
fn tables_come_back_with_their_layout(
    config: tracemalloc::Config,
    blocks: usize,
    at_least: usize,
    huge: std::ops::Range<usize>,
) {
    let config = tracemalloc::Config {
        storage: tracemalloc::Storage::Table,
        ..config
    };
    let huge_before = HUGE_ALIGNED.load(Relaxed);
    tracemalloc::start_with(config).unwrap();
    assert_eq!(
        tracemalloc::storage_in_use(),
        Some(tracemalloc::Storage::Table)
    );
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
    let on_huge_pages = HUGE_ALIGNED.load(Relaxed) - huge_before;
    assert!(
        huge.contains(&on_huge_pages),
        "{on_huge_pages} tables on huge pages"
    );
}

fn large_tables_fall_back_to_plain_pages_where_huge_ones_cannot_be_aligned() {
    PAGE_ALIGN_ONLY.store(true, Relaxed);
    // Tables of 4 MiB from the start: each asks for huge pages first.
    let config = tracemalloc::Config {
        initial_slots_per_shard: 1 << 18,
        ..tracemalloc::Config::default()
    };
    // Plain pages only: no table is handed out aligned to a huge page.
    tables_come_back_with_their_layout(config, 50_000, (16 << 22) - 1, 0..1);
    PAGE_ALIGN_ONLY.store(false, Relaxed);
}

fn tables_that_grow_onto_huge_pages_come_back_with_their_layout() {
    // 2 MiB tables to start with (98 304 traces each): the 1.6 M blocks fill about 50 chunks
    // of 1 MiB, 3 a shard on average, so shards with 4 or more move to 4 MiB tables on huge
    // pages and give back the old ones.
    let config = tracemalloc::Config {
        initial_slots_per_shard: 1 << 17,
        ..tracemalloc::Config::default()
    };
    tables_come_back_with_their_layout(config, 1_600_000, 16 << 21, 1..usize::MAX);
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
    std::hint::black_box(()); // no tail call: release builds would share the frame
}

/// Makes the `step` of the traceback store's growth fail `times` times while 8191 blocks are
/// allocated from as many stacks, and checks that every block is traced, that at most the
/// blocks whose stacks met a failure are under `<traceback store full>`, that nothing is left
/// behind and that every block comes back with its layout. Returns the bytes left behind.
fn store_growth_fails(step: usize, times: isize) -> i64 {
    let before = LIVE.load(Relaxed);
    tracemalloc::start_with(tracemalloc::Config {
        nframe: 16,
        initial_tracebacks: 256,
        ..tracemalloc::Config::default()
    })
    .unwrap();
    let mut out = Vec::with_capacity(1 << 13);
    FAILING_STEP.store(step, Relaxed);
    GROWTH_FAILURES.store(times, Relaxed);
    distinct_stacks(13, &mut out);
    let unused = GROWTH_FAILURES.swap(0, Relaxed);
    FAILING_STEP.store(NO_STEP, Relaxed);
    let snapshot = tracemalloc::take_snapshot().unwrap();
    tracemalloc::stop();
    let ours: Vec<_> = snapshot.traces.iter().filter(|t| t.size == 8).collect();
    let full = ours
        .iter()
        .filter(|t| snapshot.traceback_of(t).frames[0] == tracemalloc::Frame::store_full())
        .count();
    let case = format!("step {step}, {times} failures");
    if step != NO_STEP {
        assert_eq!(unused.max(0), 0, "{case}: the store never grew that way");
    }
    assert_eq!(snapshot.counters.untraced_blocks, 0, "{case}");
    assert!(
        ours.len() >= out.len(),
        "{case}: {} blocks traced",
        ours.len()
    );
    // A failed growth costs the stack that met it its traceback: the store grows again at the
    // next new stack.
    assert!(
        full <= times as usize,
        "{case}: {full} blocks under <traceback store full>"
    );
    drop(ours);
    drop((out, snapshot));
    assert!(
        !WRONG_LAYOUT.load(Relaxed),
        "{case}: a block came back with another layout"
    );
    drop(case);
    LIVE.load(Relaxed) - before
}

fn a_traceback_store_that_cannot_grow_keeps_what_it_holds() {
    let cases = [INDEX, ENTRIES, FRAMES]
        .into_iter()
        .flat_map(|step| [(step, 1), (step, 3)]);
    // A first run, from the same call site: the symbolizer keeps the debug information the
    // first snapshot loads and each location it has resolved.
    for (run, (step, times)) in [(INDEX, 1)].into_iter().chain(cases).enumerate() {
        let kept = store_growth_fails(step, times);
        if run > 0 {
            assert_eq!(
                kept, 0,
                "step {step}, {times} failures: {kept} bytes left behind"
            );
        }
    }
}

fn main() {
    let cases: [(&str, fn()); 5] = [
        (
            "a_start_that_runs_out_of_memory_keeps_nothing",
            a_start_that_runs_out_of_memory_keeps_nothing,
        ),
        (
            "absurd_table_sizes_are_a_lack_of_memory_not_a_panic",
            absurd_table_sizes_are_a_lack_of_memory_not_a_panic,
        ),
        (
            "a_traceback_store_that_cannot_grow_keeps_what_it_holds",
            a_traceback_store_that_cannot_grow_keeps_what_it_holds,
        ),
        (
            "large_tables_fall_back_to_plain_pages_where_huge_ones_cannot_be_aligned",
            large_tables_fall_back_to_plain_pages_where_huge_ones_cannot_be_aligned,
        ),
        (
            "tables_that_grow_onto_huge_pages_come_back_with_their_layout",
            tables_that_grow_onto_huge_pages_come_back_with_their_layout,
        ),
    ];
    for (name, case) in cases {
        case();
        println!("out_of_memory: {name} ok");
    }
}
