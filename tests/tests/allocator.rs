//! The tracing allocator end to end: blocks allocated at known lines, in several threads, are
//! reported at exactly those lines with exactly their sizes; realloc, zero-size, over-aligned and
//! zeroed blocks, `object_traceback`, peaks, domains and errors behave as in Python.
//!
//! One process has one tracer, so the tests take turns (`serial`).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Mutex;

use tracemalloc::{
    Config, DomainFilter, Filter, KeyType, Snapshot, Storage, TraceFilter, TracingAllocator,
};
use tracemalloc_tests::{blocks, traceback_ids};

/// The system allocator, remembering the last block it handed out, to check that the wrapper
/// returns exactly what its inner allocator returns.
struct Recording;

thread_local! {
    // Per thread: other threads (the test harness's) allocate at the same time.
    static LAST_FROM_INNER: Cell<usize> = const { Cell::new(0) };
}

fn remember(p: *mut u8) {
    let _ = LAST_FROM_INNER.try_with(|last| last.set(p as usize));
}

// SAFETY: forwards to `System` unchanged; only records the returned address.
unsafe impl GlobalAlloc for Recording {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is forwarded.
        let p = unsafe { System.alloc(layout) };
        remember(p);
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract is forwarded.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is forwarded.
        let p = unsafe { System.alloc_zeroed(layout) };
        remember(p);
        p
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's contract is forwarded.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        remember(p);
        p
    }
}

#[global_allocator]
static ALLOC: TracingAllocator<Recording> = TracingAllocator::new(Recording);

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

tracemalloc_tests::this_file!();

/// Statistics by line, for this file only.
fn stats_here(snapshot: &Snapshot) -> Vec<(u32, u64, u64)> {
    let only_here = [TraceFilter::Filter(Filter::new(true, THIS_FILE))];
    snapshot
        .filter_traces(&only_here)
        .statistics(KeyType::Lineno, false)
        .unwrap()
        .iter()
        .map(|s| (s.traceback.frames[0].lineno, s.size, s.count))
        .collect()
}

fn find(stats: &[(u32, u64, u64)], line: u32) -> Option<(u64, u64)> {
    stats.iter().find(|s| s.0 == line).map(|s| (s.1, s.2))
}

/// Starts tracing afresh: a test that failed before its `stop()` must not leave traces behind.
fn fresh(nframe: usize) {
    tracemalloc::stop();
    tracemalloc::start(nframe).unwrap();
}

#[inline(never)]
fn worker_a() -> Vec<Vec<u8>> {
    blocks(100, || vec![1u8; 1000]) // SITE-A
}

#[inline(never)]
fn worker_b() -> Vec<Vec<u8>> {
    blocks(50, || vec![2u8; 3000]) // SITE-B
}

#[inline(never)]
fn worker_c() -> Vec<Vec<u64>> {
    blocks(25, || vec![3u64; 7]) // SITE-C
}

#[test]
fn threads_allocating_at_once_are_reported_at_their_lines_with_exact_sizes() {
    let _s = serial();
    fresh(8);
    let (a, b, c) = std::thread::scope(|s| {
        let a = s.spawn(worker_a);
        let b = s.spawn(worker_b);
        let c = s.spawn(worker_c);
        (a.join().unwrap(), b.join().unwrap(), c.join().unwrap())
    });
    let snapshot = tracemalloc::take_snapshot().unwrap();
    let stats = stats_here(&snapshot);
    let expect = |n: u64, block: u64| Some((n * block, n));
    assert_eq!(
        find(&stats, line_of("SITE-A")),
        expect(100, 1000),
        "{stats:?}"
    );
    assert_eq!(
        find(&stats, line_of("SITE-B")),
        expect(50, 3000),
        "{stats:?}"
    );
    assert_eq!(find(&stats, line_of("SITE-C")), expect(25, 56), "{stats:?}");
    drop((a, b, c));
    let after = tracemalloc::take_snapshot().unwrap();
    let stats = stats_here(&after);
    for site in ["SITE-A", "SITE-B", "SITE-C"] {
        assert_eq!(
            find(&stats, line_of(site)),
            None,
            "{site} freed but still traced"
        );
    }
    tracemalloc::stop();
}

#[test]
fn realloc_moves_the_trace_to_the_growing_line_and_keeps_counts_exact() {
    let _s = serial();
    fresh(4);
    let mut v: Vec<u8> = Vec::with_capacity(16); // REALLOC-FIRST
    let before = tracemalloc::traced_memory().0;
    v.reserve_exact(200_000); // REALLOC-GROW
    let cap = v.capacity() as u64;
    let stats = stats_here(&tracemalloc::take_snapshot().unwrap());
    assert_eq!(
        find(&stats, line_of("REALLOC-GROW")),
        Some((cap, 1)),
        "{stats:?}"
    );
    assert_eq!(find(&stats, line_of("REALLOC-FIRST")), None);
    let grown = tracemalloc::traced_memory().0;
    assert!(grown >= before + 200_000 - 16, "{before} -> {grown}");
    v.shrink_to(1000); // REALLOC-SHRINK
    let stats = stats_here(&tracemalloc::take_snapshot().unwrap());
    assert_eq!(
        find(&stats, line_of("REALLOC-SHRINK")),
        Some((v.capacity() as u64, 1))
    );
    drop(v);
    tracemalloc::stop();
}

#[test]
fn zero_sized_values_allocate_nothing_and_add_no_trace() {
    let _s = serial();
    fresh(1);
    let unit = Box::new(()); // ZST-BOX
    let empty: Vec<u64> = Vec::with_capacity(0); // ZST-VEC
    let stats = stats_here(&tracemalloc::take_snapshot().unwrap());
    assert_eq!(find(&stats, line_of("ZST-BOX")), None);
    assert_eq!(find(&stats, line_of("ZST-VEC")), None);
    let one = Box::new(1u8); // ONE-BYTE
    let stats = stats_here(&tracemalloc::take_snapshot().unwrap());
    assert_eq!(find(&stats, line_of("ONE-BYTE")), Some((1, 1)));
    drop(one);
    drop((unit, empty));
    tracemalloc::stop();
}

#[test]
fn over_aligned_and_zeroed_blocks_are_traced_and_returned_unchanged() {
    let _s = serial();
    fresh(2);
    let layout = Layout::from_size_align(10_000, 4096).unwrap();
    // SAFETY: the layout has a non-zero size; the block is freed below with the same layout.
    let aligned = unsafe { std::alloc::alloc(layout) }; // ALIGNED
    assert!(!aligned.is_null());
    assert_eq!(aligned as usize % 4096, 0);
    assert_eq!(aligned as usize, LAST_FROM_INNER.with(Cell::get));
    let zeroed = vec![0u8; 77_777]; // ZEROED
    assert_eq!(zeroed.as_ptr() as usize, LAST_FROM_INNER.with(Cell::get));
    assert!(zeroed.iter().all(|&b| b == 0));
    let stats = stats_here(&tracemalloc::take_snapshot().unwrap());
    assert_eq!(find(&stats, line_of("ALIGNED")), Some((10_000, 1)));
    assert_eq!(find(&stats, line_of("ZEROED")), Some((77_777, 1)));
    // SAFETY: allocated above with this layout.
    unsafe { std::alloc::dealloc(aligned, layout) };
    drop(zeroed);
    tracemalloc::stop();
}

#[test]
fn object_traceback_names_the_allocating_line() {
    let _s = serial();
    fresh(3);
    let boxed = Box::new([5u8; 300]); // OBJECT
    let tb = tracemalloc::object_traceback(&*boxed).expect("traced");
    assert_eq!(&*tb.frames[0].filename, THIS_FILE);
    assert_eq!(tb.frames[0].lineno, line_of("OBJECT"));
    assert!(tb.frames.len() <= 3);
    let on_stack = 5u8;
    assert!(tracemalloc::object_traceback(&on_stack).is_none());
    drop(boxed);
    tracemalloc::stop();
}

#[test]
fn traced_memory_peak_and_reset_follow_python() {
    let _s = serial();
    fresh(1);
    let (base, _) = tracemalloc::traced_memory();
    let big = vec![1u8; 1 << 20];
    let (current, peak) = tracemalloc::traced_memory();
    assert!(current >= base + (1 << 20));
    drop(big);
    let (after, peak_after) = tracemalloc::traced_memory();
    assert!(after < current);
    assert!(peak_after >= peak);
    tracemalloc::reset_peak();
    let (now, reset) = tracemalloc::traced_memory();
    assert!(reset < 1 << 20 && reset >= now, "{now} {reset}");
    assert!(tracemalloc::tracemalloc_memory() > 0);
    tracemalloc::clear_traces();
    // Only what other threads allocated since the clear is traced.
    assert!(tracemalloc::traced_memory().0 < 64 * 1024);
    tracemalloc::stop();
}

#[test]
fn small_changes_count_in_this_thread_and_when_other_threads_exit() {
    let _s = serial();
    fresh(1);
    // Each thread publishes its changes to the global figures in batches; what the calling
    // thread did is always included, below the batch size too.
    let (base, _) = tracemalloc::traced_memory();
    let small = vec![1u8; 3000];
    let (current, _) = tracemalloc::traced_memory();
    assert!(current >= base + 3000, "{base} -> {current}");
    tracemalloc::reset_peak();
    let spike = vec![2u8; 20_000];
    drop(std::hint::black_box(spike));
    let (now, peak) = tracemalloc::traced_memory();
    assert!(
        peak >= now + 20_000,
        "a 20 kB spike left peak {peak} at {now}"
    );
    // Threads publish what is left when they exit.
    let workers: Vec<_> = (0..4)
        .map(|_| std::thread::spawn(|| vec![3u8; 10_000]))
        .collect();
    let kept: Vec<Vec<u8>> = workers.into_iter().map(|w| w.join().unwrap()).collect();
    let (after, _) = tracemalloc::traced_memory();
    assert!(
        after >= now + 40_000,
        "{now} -> {after} after 4 threads kept 40 kB"
    );
    drop((kept, small));
    tracemalloc::stop();
}

/// Frees the block a thread left in a pthread key, when the thread exits.
extern "C" fn free_at_exit(block: *mut libc::c_void) {
    // SAFETY: the key's value is a `Box<[u8; 30_000]>` turned into a raw pointer, set once.
    drop(unsafe { Box::from_raw(block.cast::<[u8; 30_000]>()) });
}

#[test]
fn frees_in_later_thread_exit_destructors_are_counted() {
    let _s = serial();
    fresh(1);
    // Created after the tracer's own key, so its destructor runs after the tracer's flush.
    let mut key: libc::pthread_key_t = 0;
    // SAFETY: `key` is a valid out-parameter; `free_at_exit` does not unwind.
    assert_eq!(
        unsafe { libc::pthread_key_create(&mut key, Some(free_at_exit)) },
        0
    );
    let (before, _) = tracemalloc::traced_memory();
    std::thread::spawn(move || {
        let block = Box::into_raw(Box::new([7u8; 30_000]));
        // SAFETY: `key` is live; the value is freed by `free_at_exit` only.
        unsafe { libc::pthread_setspecific(key, block.cast()) };
    })
    .join()
    .unwrap();
    let (after, _) = tracemalloc::traced_memory();
    assert!(
        after < before + 15_000,
        "{before} -> {after}: a block freed at thread exit is still counted"
    );
    // SAFETY: no thread uses the key any more.
    unsafe { libc::pthread_key_delete(key) };
    tracemalloc::stop();
}

#[inline(never)]
fn nest(depth: u32) -> Vec<u8> {
    if depth == 0 {
        return vec![9u8; 4321]; // NEST-LEAF
    }
    std::hint::black_box(nest(depth - 1)) // NEST-CALL
}

#[test]
fn limits_beyond_the_stack_buffer_keep_every_frame() {
    let _s = serial();
    fresh(200);
    let kept = nest(150);
    let snapshot = tracemalloc::take_snapshot().unwrap();
    let trace = snapshot.traces.iter().find(|t| t.size == 4321).unwrap();
    let frames = &snapshot.tracebacks[trace.traceback as usize].frames;
    assert!(frames.len() > 150, "{} frames kept", frames.len());
    drop(kept);
    tracemalloc::stop();
}

/// Frames past the limit are not kept, even those that the allowance for hidden plumbing has
/// room for: two blocks whose shown frames agree share one traceback. With a fixed allowance,
/// each traceback held the allowance's frames too, so recursive code stored a traceback per
/// call path of which a snapshot shows the same few frames.
#[test]
#[cfg(target_os = "linux")] // elsewhere the fixed allowance keeps the callers' lines
fn frames_past_the_limit_do_not_split_a_traceback() {
    let _s = serial();
    fresh(4);
    let a = nest(6);
    let b = nest(6);
    let snapshot = tracemalloc::take_snapshot().unwrap();
    let ids = traceback_ids(&snapshot, 4321);
    assert_eq!(ids.len(), 2);
    assert_eq!(ids[0], ids[1], "one traceback for both blocks");
    let shown = &snapshot.tracebacks[ids[0] as usize].frames;
    let nest_lines = (line_of("NEST-LEAF"), line_of("NEST-CALL"));
    let lines: Vec<u32> = shown.iter().map(|f| f.lineno).collect();
    assert_eq!(
        lines,
        [nest_lines.0, nest_lines.1, nest_lines.1, nest_lines.1],
        "{shown:?}"
    );
    drop((a, b));
    tracemalloc::stop();
}

/// As in Python, whose `start()` returns at once while tracing ("hook already installed"): a
/// library's `start(1)` must not cut the tracebacks of a program tracing with more frames.
#[test]
fn a_start_while_tracing_changes_nothing() {
    let _s = serial();
    fresh(4);
    tracemalloc::start(1).unwrap();
    assert_eq!(tracemalloc::traceback_limit(), 4);
    let kept = nest(6);
    let snapshot = tracemalloc::take_snapshot().unwrap();
    assert_eq!(snapshot.traceback_limit, 4);
    let ids = traceback_ids(&snapshot, 4321);
    assert_eq!(snapshot.tracebacks[ids[0] as usize].frames.len(), 4);
    drop(kept);
    tracemalloc::stop();
    assert_eq!(tracemalloc::traceback_limit(), 4, "kept after stop");
}

#[inline(never)]
fn made(size: usize) -> Vec<u8> {
    vec![5u8; size] // MADE
}

#[inline(never)]
fn made_once() -> &'static Vec<u8> {
    static ONCE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    ONCE.get_or_init(|| made(6543)) // MADE-ONCE
}

#[inline(never)]
fn made_by_collect() -> Vec<Vec<u8>> {
    (0..1).map(|_| made(7654)).collect() // MADE-BY-COLLECT
}

/// std between the program's frames (`OnceLock::get_or_init`, `Iterator::collect`) is hidden by
/// snapshots and does not use up the limit either: each traceback shows `nframe` frames of the
/// program.
#[test]
fn plumbing_between_program_frames_does_not_use_up_the_limit() {
    let _s = serial();
    fresh(4);
    let once = made_once(); // CALLS-ONCE
    let collected = made_by_collect(); // CALLS-COLLECT
    let snapshot = tracemalloc::take_snapshot().unwrap();
    let lines_of = |size: u64| -> Vec<u32> {
        let frames = &snapshot.tracebacks[traceback_ids(&snapshot, size)[0] as usize].frames;
        frames.iter().map(|f| f.lineno).collect()
    };
    let (made, in_once, in_collect) = (
        line_of("MADE"),
        line_of("MADE-ONCE"),
        line_of("MADE-BY-COLLECT"),
    );
    // The closure's line, then (unless inlining merged the two) the caller's call on the same
    // line, then the test's call: four frames of the program.
    for (lines, inner, call) in [
        (lines_of(6543), in_once, line_of("CALLS-ONCE")),
        (lines_of(7654), in_collect, line_of("CALLS-COLLECT")),
    ] {
        assert_eq!(lines.len(), 4, "{lines:?}");
        assert_eq!(lines[..2], [made, inner], "{lines:?}");
        assert!(
            lines.contains(&call),
            "{lines:?} lacks the call at line {call}"
        );
    }
    drop((once, collected));
    tracemalloc::stop();
}

#[inline(never)]
fn lowered(text: &str) -> String {
    text.to_lowercase() // LOWERED
}

#[inline(never)]
fn c_string(text: &str) -> std::ffi::CString {
    std::ffi::CString::new(text).unwrap() // C-STRING
}

/// std's own code names the inherent methods of primitive types, and traits local to a
/// function, with v0 mangling (`<str>::to_lowercase`,
/// `<&str as <alloc::ffi::c_str::CString>::new::SpecNewImpl>::spec_new_impl`): plumbing too,
/// which must not use up the limit. With Python's default of one frame, the allocating line is
/// shown, not `<unknown>`.
#[test]
fn std_methods_of_primitive_types_do_not_use_up_the_limit() {
    let _s = serial();
    fresh(1);
    // The arguments are freed before the snapshot; the results have sizes of their own.
    let lowered = lowered(&"L".repeat(2345));
    let c_string = c_string(&"c".repeat(3455)); // 3456 bytes with the nul
    let snapshot = tracemalloc::take_snapshot().unwrap();
    for (size, marker) in [(2345, "LOWERED"), (3456, "C-STRING")] {
        let frames = &snapshot.tracebacks[traceback_ids(&snapshot, size)[0] as usize].frames;
        let lines: Vec<u32> = frames.iter().map(|f| f.lineno).collect();
        assert_eq!(lines, [line_of(marker)], "{marker}: {frames:?}");
    }
    drop((lowered, c_string));
    tracemalloc::stop();
}

/// An extension trait of the program's, implemented for a std type.
trait Encode {
    fn encode(&self) -> Vec<u8>;
}

impl Encode for String {
    #[inline(never)]
    fn encode(&self) -> Vec<u8> {
        std::hint::black_box(vec![self.len() as u8; 2468]) // ENCODE
    }
}

/// The program's impl of its own trait for a std type is named after the std type
/// (`<alloc::string::String as allocator::Encode>::encode`), and is the program's code: shown.
#[test]
fn the_programs_impl_of_its_trait_for_a_std_type_is_shown() {
    let _s = serial();
    fresh(2);
    let encoded = String::new().encode(); // CALLS-ENCODE
    let snapshot = tracemalloc::take_snapshot().unwrap();
    let frames = &snapshot.tracebacks[traceback_ids(&snapshot, 2468)[0] as usize].frames;
    let lines: Vec<u32> = frames.iter().map(|f| f.lineno).collect();
    assert_eq!(
        lines,
        [line_of("ENCODE"), line_of("CALLS-ENCODE")],
        "{frames:?}"
    );
    drop(encoded);
    tracemalloc::stop();
}

#[inline(never)]
fn unwound_leaf() -> Vec<u8> {
    vec![3u8; 5432] // UNWOUND-LEAF
}

/// The traceback of a block allocated by [`unwound_leaf`] while tracing with the unwinder and
/// `nframe` frames.
fn unwound_traceback(nframe: usize) -> tracemalloc::Traceback {
    tracemalloc::stop();
    let config = tracemalloc::Config {
        nframe,
        capture: tracemalloc::Capture::Unwinder,
        ..tracemalloc::Config::default()
    };
    tracemalloc::start_with(config).unwrap();
    let block = std::hint::black_box(unwound_leaf()); // UNWOUND-CALL
    let snapshot = tracemalloc::take_snapshot().unwrap();
    drop(block);
    tracemalloc::stop();
    snapshot.tracebacks[traceback_ids(&snapshot, 5432)[0] as usize].clone()
}

/// Stacks captured by the unwinder, whose first frames are the tracer's and the unwinder's own,
/// keep the limit's frames of the program.
#[test]
fn the_unwinder_keeps_the_limit_of_program_frames() {
    let _s = serial();
    let shown = unwound_traceback(2).frames;
    let lines: Vec<u32> = shown.iter().map(|f| f.lineno).collect();
    assert_eq!(
        lines,
        [line_of("UNWOUND-LEAF"), line_of("UNWOUND-CALL")],
        "{shown:?}"
    );
}

/// A whole stack captured by the unwinder ends at the thread's entry, not at the address 0 the
/// unwinder reports past it (which showed as a `0x0` frame, oldest in every traceback).
#[test]
fn the_unwinder_ends_a_whole_stack_at_its_last_frame() {
    let _s = serial();
    let traceback = unwound_traceback(256);
    assert!(traceback.frames.len() >= 3, "{traceback:?}");
    assert!(
        traceback.frames.iter().all(|f| &*f.filename != "0x0"),
        "{traceback:?}"
    );
}

/// `capture_in_use` names the method the session runs with, `Auto` resolved: frame pointers in
/// this build (the workspace forces them) where a walker exists.
#[test]
fn the_capture_in_use_is_the_resolved_method() {
    use tracemalloc::Capture;
    let _s = serial();
    tracemalloc::stop();
    assert_eq!(tracemalloc::capture_in_use(), None);
    let unwinder = tracemalloc::Config {
        nframe: 4,
        capture: Capture::Unwinder,
        ..tracemalloc::Config::default()
    };
    tracemalloc::start_with(unwinder).unwrap();
    assert_eq!(tracemalloc::capture_in_use(), Some(Capture::Unwinder));
    tracemalloc::stop();
    tracemalloc::start(4).unwrap();
    // Where a walker exists, named here rather than asked of `frame_pointers_supported`, the
    // code under test: with it wrong, this test passed.
    let walker = cfg!(all(
        any(target_arch = "x86_64", target_arch = "aarch64"),
        any(target_os = "linux", target_os = "android")
    ));
    assert_eq!(Capture::frame_pointers_supported(), walker);
    let auto = if walker {
        Capture::FramePointers
    } else {
        Capture::Unwinder
    };
    assert_eq!(tracemalloc::capture_in_use(), Some(auto));
    tracemalloc::stop();
    assert_eq!(tracemalloc::capture_in_use(), None);
}

#[test]
fn errors_match_python() {
    let _s = serial();
    assert!(matches!(
        tracemalloc::start(0),
        Err(tracemalloc::Error::InvalidNframe(0))
    ));
    assert!(matches!(
        tracemalloc::start(65_536),
        Err(tracemalloc::Error::InvalidNframe(65_536))
    ));
    assert!(!tracemalloc::is_tracing());
    assert!(matches!(
        tracemalloc::take_snapshot(),
        Err(tracemalloc::Error::NotTracing)
    ));
    tracemalloc::start(65_535).unwrap();
    assert_eq!(tracemalloc::traceback_limit(), 65_535);
    let deep = vec![1u8; 10]; // DEEP
    let stats = stats_here(&tracemalloc::take_snapshot().unwrap());
    assert_eq!(find(&stats, line_of("DEEP")), Some((10, 1)));
    drop(deep);
    tracemalloc::stop();
    assert!(!tracemalloc::is_tracing());
}

#[test]
fn tracked_foreign_memory_lives_in_its_own_domain() {
    let _s = serial();
    fresh(2);
    let arena = [0u8; 64];
    assert!(tracemalloc::track(7, &arena[0], 4096)); // TRACKED
    let snapshot = tracemalloc::take_snapshot().unwrap();
    let only7 = snapshot.filter_traces(&[TraceFilter::Domain(DomainFilter::new(true, 7))]);
    assert_eq!(only7.traces.len(), 1);
    assert_eq!(only7.traces[0].size, 4096);
    let stats = stats_here(&only7);
    assert_eq!(find(&stats, line_of("TRACKED")), Some((4096, 1)));
    let not7 = snapshot.filter_traces(&[TraceFilter::Domain(DomainFilter::new(false, 7))]);
    assert!(not7.traces.iter().all(|t| t.domain == 0));
    assert!(tracemalloc::untrack(7, &arena[0]));
    assert!(!tracemalloc::untrack(7, &arena[0]));
    tracemalloc::stop();
}

#[test]
fn a_block_tracked_again_too_big_for_a_trace_leaves_no_trace_at_its_old_size() {
    let _s = serial();
    tracemalloc::stop();
    // The default domain in the tables (shadow memory forgets a tracked address first), and a
    // domain of its own.
    tracemalloc_tests::start_in_tables(1);
    let far = 0x7000_0000_0000usize as *const u8; // no heap block there
    for domain in [0, 7] {
        assert!(tracemalloc::track(domain, far, 1 << 30));
        assert!(tracemalloc::traced_memory().0 >= 1 << 30);
        // 2 TiB (a reserved address range): more than a trace holds, so untraced.
        assert!(!tracemalloc::track(domain, far, 2 << 40));
        assert!(
            tracemalloc::traced_memory().0 < 1 << 30,
            "domain {domain}: still counted at its old size"
        );
        let snapshot = tracemalloc::take_snapshot().unwrap();
        assert!(
            snapshot.traces.iter().all(|t| t.size < 1 << 30),
            "domain {domain}"
        );
        assert!(
            !tracemalloc::untrack(domain, far),
            "domain {domain}: a stale trace"
        );
    }
    tracemalloc::stop();
}

#[test]
fn many_live_blocks_grow_the_tables_without_losing_any() {
    let _s = serial();
    tracemalloc::stop();
    // In the tables: shadow memory would hold these small blocks in cells.
    tracemalloc_tests::start_in_tables(1);
    let memory_before = tracemalloc::tracemalloc_memory();
    let many = blocks(200_000, || Box::new(7u64)); // MANY
    assert!(
        tracemalloc::tracemalloc_memory() > memory_before,
        "the tables grew"
    );
    let snapshot = tracemalloc::take_snapshot().unwrap();
    assert_eq!(snapshot.counters.untraced_blocks, 0);
    let stats = stats_here(&snapshot);
    assert_eq!(find(&stats, line_of("MANY")), Some((200_000 * 8, 200_000)));
    drop(many);
    tracemalloc::stop();
}

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
    Some(Box::new(Node(left, right))) // TREE-NODE
}

#[test]
fn thousands_of_distinct_stacks_grow_the_traceback_store() {
    let _s = serial();
    fresh(16);
    let tree = build(13); // 8191 nodes, each from its own stack: more than the store starts with
    let snapshot = tracemalloc::take_snapshot().unwrap();
    let full = snapshot
        .tracebacks
        .iter()
        .any(|tb| tb.frames.iter().any(|f| f.filename.contains("store full")));
    assert!(!full, "a stack was reported as <traceback store full>");
    let node = std::mem::size_of::<Node>() as u64;
    let stats = stats_here(&snapshot);
    assert_eq!(
        find(&stats, line_of("TREE-NODE")),
        Some((8191 * node, 8191))
    );
    drop(tree);
    tracemalloc::stop();
}

#[test]
fn a_fresh_start_reports_nothing_traced() {
    // Python: `start(); get_traced_memory()` is `(0, 0)`; the blocks `start()` allocates to
    // switch tracing on are not the program's.
    let _s = serial();
    for storage in [Storage::Shadow, Storage::Table] {
        for round in 0..3 {
            tracemalloc::start_with(Config {
                nframe: 1,
                storage,
                ..Config::default()
            })
            .unwrap();
            let fresh = tracemalloc::traced_memory();
            tracemalloc::stop();
            assert_eq!(fresh, (0, 0), "{storage:?}, round {round}");
        }
    }
    // A start while tracing changes nothing: the peak stays.
    tracemalloc::start(1).unwrap();
    drop(std::hint::black_box(vec![0u8; 1000]));
    tracemalloc::start(2).unwrap();
    let (current, peak) = tracemalloc::traced_memory();
    tracemalloc::stop();
    assert_eq!(current, 0);
    assert!(peak >= 1000, "{peak}");
}
