//! A thread's frees of small blocks are queued and applied in batches (`adapter-std/src/
//! deferred.rs`). These tests hold it to what its documentation promises: snapshots leave out
//! what any thread has freed, queued blocks still reach the inner allocator (a full batch, the
//! thread's own questions, its exit), and large blocks are never held back. Frees are queued
//! only with `Storage::Table`; the cases about what snapshots and counters show run with shadow
//! memory (frees forgotten at once) too.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::mpsc;

use tracemalloc::{Config, Storage, TracingAllocator};
use tracemalloc_tests::{blocks, traced_at, Counting, LIVE};

#[global_allocator]
static ALLOC: TracingAllocator<Counting> = TracingAllocator::new(Counting);

tracemalloc_tests::this_file!();

#[inline(never)]
fn small(n: usize) -> Vec<Vec<u8>> {
    blocks(n, || vec![7u8; 64]) // SMALL
}

#[inline(never)]
fn pages(n: usize) -> Vec<Vec<u8>> {
    blocks(n, || vec![3u8; 4096]) // PAGES
}

#[inline(never)]
fn large() -> Vec<u8> {
    vec![9u8; 64 * 1024] // LARGE
}

/// Whether cases run with shadow memory rather than the tables (set by `main`).
static SHADOW: AtomicBool = AtomicBool::new(false);

/// Runs `test` with tracing on.
fn traced(test: impl FnOnce()) {
    let storage = if SHADOW.load(Relaxed) {
        Storage::Shadow
    } else {
        Storage::Table
    };
    tracemalloc::start_with(Config {
        nframe: 4,
        storage,
        ..Config::default()
    })
    .unwrap();
    test();
    tracemalloc::stop();
}

/// Bytes the inner allocator got back while `f` ran, less what it handed out, and what `f`
/// returned.
fn returned_by<T>(f: impl FnOnce() -> T) -> (i64, T) {
    let before = LIVE.load(Relaxed);
    let result = f();
    (before - LIVE.load(Relaxed), result)
}

/// What spawning a thread and two channels allocates, at most.
const THREAD_OVERHEAD: i64 = 8 * 1024;

/// Checks that the inner allocator got back at least `bytes` (less a thread's own overhead).
fn assert_returned_at_least(returned: i64, bytes: i64) {
    assert!(
        returned >= bytes - THREAD_OVERHEAD,
        "only {returned} bytes reached the inner allocator"
    );
}

/// A thread that ran its work and stays alive until dropped, so that what the main thread sees
/// meanwhile is not the thread's exit flush.
struct LiveThread {
    exit: Option<mpsc::Sender<()>>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Drop for LiveThread {
    fn drop(&mut self) {
        drop(self.exit.take());
        if let Some(handle) = self.handle.take() {
            if !std::thread::panicking() {
                handle.join().unwrap();
            }
        }
    }
}

/// Runs `free` on a [`LiveThread`]: the bytes the inner allocator got back meanwhile, and the
/// thread.
fn returned_by_live_thread(free: impl FnOnce() + Send + 'static) -> (i64, LiveThread) {
    returned_by(|| on_live_thread(free))
}

/// Runs `free` on a [`LiveThread`] and waits until it is done.
fn on_live_thread(free: impl FnOnce() + Send + 'static) -> LiveThread {
    let (done_tx, done_rx) = mpsc::channel();
    let (exit_tx, exit_rx) = mpsc::channel::<()>();
    let handle = std::thread::spawn(move || {
        free();
        done_tx.send(()).unwrap();
        let _ = exit_rx.recv();
    });
    done_rx.recv().unwrap();
    LiveThread {
        exit: Some(exit_tx),
        handle: Some(handle),
    }
}

fn small_frees_are_held_back_until_a_batch_fills() {
    traced(|| {
        let blocks = pages(5);
        let (returned, _thread) = returned_by_live_thread(move || drop(blocks));
        assert!(
            returned < 2 * 4096,
            "{returned} bytes reached the inner allocator: the frees were not queued"
        );
    });
}

fn full_batches_are_applied_without_being_asked() {
    traced(|| {
        let blocks = pages(48);
        // The thread asks nothing: only full batches are applied, so at most 15 blocks may
        // still be queued.
        let (returned, _thread) = returned_by_live_thread(move || drop(blocks));
        assert_returned_at_least(returned, 33 * 4096);
    });
}

fn a_thread_applies_its_queue_before_it_reports() {
    traced(|| {
        let blocks = pages(10); // and the Vec: 11 frees, under a batch
        let (returned, _thread) = returned_by_live_thread(move || {
            drop(blocks);
            let _ = tracemalloc::traced_memory(); // applies this thread's queue
        });
        assert_returned_at_least(returned, 10 * 4096);
    });
}

fn large_frees_are_not_held_back() {
    traced(|| {
        let block = large();
        assert_eq!(traced_here("LARGE"), Some((64 * 1024, 1)));
        let (returned, _thread) = returned_by_live_thread(move || drop(block));
        assert_returned_at_least(returned, 64 * 1024);
        assert_eq!(traced_here("LARGE"), None);
    });
}

fn queued_frees_reach_the_inner_allocator_when_threads_exit() {
    traced(|| {
        // 200 threads each free 5 blocks of 4 KiB and exit without asking anything: 4 MB
        // would stay with the tracer if exits did not apply the queues.
        let (returned, ()) = returned_by(|| {
            for _ in 0..200 {
                let blocks = pages(5);
                std::thread::spawn(move || drop(blocks)).join().unwrap();
            }
        });
        assert!(
            returned > -(1 << 20),
            "the inner allocator holds {} more bytes",
            -returned
        );
        assert_eq!(traced_here("PAGES"), None);
    });
}

fn snapshots_leave_out_what_other_threads_freed() {
    traced(|| {
        let blocks = small(5);
        // Fewer frees than a batch, and the thread asks nothing: its queue holds all five.
        let thread = on_live_thread(move || drop(blocks));
        assert_eq!(traced_here("SMALL"), None);
        drop(thread);
        assert_eq!(traced_here("SMALL"), None);
    });
}

/// Python's `get_object_traceback` of a freed block is None: here while the free waits in
/// this thread's queue or in a live thread's.
fn object_traceback_knows_what_any_thread_freed() {
    traced(|| {
        let mine = small(1);
        let addr = mine[0].as_ptr();
        assert!(tracemalloc::object_traceback(addr).is_some());
        drop(mine);
        assert!(tracemalloc::object_traceback(addr).is_none(), "freed here");
        let theirs = small(1);
        let addr = theirs[0].as_ptr() as usize;
        assert!(tracemalloc::object_traceback(addr as *const u8).is_some());
        let thread = on_live_thread(move || drop(theirs));
        assert!(
            tracemalloc::object_traceback(addr as *const u8).is_none(),
            "freed on a live thread"
        );
        drop(thread);
    });
}

/// Takes a snapshot while a live thread's queue holds five freed pages, allocated on this
/// thread or on the live one, and checks that its counters add up to its traces.
fn counters_add_up_while(allocated_here: bool) {
    let thread = if allocated_here {
        let blocks = pages(5);
        on_live_thread(move || drop(blocks))
    } else {
        // The live thread's allocations are not yet published to `traced_memory()` either.
        on_live_thread(|| drop(pages(5)))
    };
    let snapshot = tracemalloc::take_snapshot().unwrap();
    drop(thread);
    let bytes: u64 = snapshot.traces.iter().map(|t| t.size).sum();
    assert_eq!(snapshot.counters.traces, snapshot.traces.len() as u64);
    assert_eq!(
        snapshot.counters.current, bytes,
        "allocated here: {allocated_here}"
    );
    assert!(snapshot.counters.peak >= bytes);
    assert_eq!(traced_at(&snapshot, THIS_FILE, line_of("PAGES")), None);
}

fn a_snapshots_counters_add_up_to_its_traces_while_frees_are_queued() {
    traced(|| {
        // With this thread alone, the snapshot and `traced_memory()` agree to the byte.
        let blocks = pages(5);
        let snapshot = tracemalloc::take_snapshot().unwrap();
        let (current, _) = tracemalloc::traced_memory();
        assert_eq!(snapshot.counters.current, current as u64);
        drop((blocks, snapshot));
        counters_add_up_while(true);
        counters_add_up_while(false);
    });
}

fn scoped_threads_frees_are_out_of_the_next_snapshot() {
    traced(|| {
        // `scope()` returns when the closures are done, before the threads' exit flush may run.
        let mut still_traced = 0;
        for _ in 0..50 {
            let blocks = small(5);
            std::thread::scope(|s| {
                s.spawn(move || drop(blocks));
            });
            still_traced += traced_here("SMALL").map_or(0, |(_, count)| count);
        }
        assert_eq!(still_traced, 0);
    });
}

/// A live thread's allocations are in a snapshot before its thread publishes them to
/// `traced_memory()`; freed before that, they would leave a later snapshot with a lower peak.
fn a_snapshots_peak_never_drops_below_an_earlier_snapshots_current() {
    traced(|| {
        let (free_tx, free_rx) = mpsc::channel::<()>();
        let (held_tx, held_rx) = mpsc::channel::<()>();
        let (freed_tx, freed_rx) = mpsc::channel::<()>();
        let (exit_tx, exit_rx) = mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            // 40 KiB: a thread publishes its changes once they reach 64 KiB.
            let block = std::hint::black_box(vec![1u8; 40 * 1024]);
            held_tx.send(()).unwrap();
            free_rx.recv().unwrap();
            drop(block);
            freed_tx.send(()).unwrap();
            let _ = exit_rx.recv(); // alive, or its exit would publish the change
        });
        held_rx.recv().unwrap();
        tracemalloc::reset_peak();
        let first = tracemalloc::take_snapshot().unwrap().counters;
        free_tx.send(()).unwrap();
        freed_rx.recv().unwrap();
        let second = tracemalloc::take_snapshot().unwrap().counters;
        let (_, peak) = tracemalloc::traced_memory();
        drop(exit_tx);
        thread.join().unwrap();
        assert!(first.current >= 40 * 1024, "{first:?}");
        assert!(
            second.peak >= first.current,
            "peak {} after a snapshot of {} bytes",
            second.peak,
            first.current
        );
        assert!(
            peak >= first.current as usize,
            "traced_memory() peak {peak}"
        );
    });
}

/// The cases run one after another on the main thread: each counts the bytes the inner
/// allocator got back, and a test harness would allocate meanwhile (a finished test's thread
/// sends its result, 9680 bytes, while the next one measures).
fn main() {
    let cases: [(&str, fn()); 10] = [
        (
            "small_frees_are_held_back_until_a_batch_fills",
            small_frees_are_held_back_until_a_batch_fills,
        ),
        (
            "full_batches_are_applied_without_being_asked",
            full_batches_are_applied_without_being_asked,
        ),
        (
            "a_thread_applies_its_queue_before_it_reports",
            a_thread_applies_its_queue_before_it_reports,
        ),
        (
            "large_frees_are_not_held_back",
            large_frees_are_not_held_back,
        ),
        (
            "queued_frees_reach_the_inner_allocator_when_threads_exit",
            queued_frees_reach_the_inner_allocator_when_threads_exit,
        ),
        (
            "snapshots_leave_out_what_other_threads_freed",
            snapshots_leave_out_what_other_threads_freed,
        ),
        (
            "object_traceback_knows_what_any_thread_freed",
            object_traceback_knows_what_any_thread_freed,
        ),
        (
            "a_snapshots_counters_add_up_to_its_traces_while_frees_are_queued",
            a_snapshots_counters_add_up_to_its_traces_while_frees_are_queued,
        ),
        (
            "scoped_threads_frees_are_out_of_the_next_snapshot",
            scoped_threads_frees_are_out_of_the_next_snapshot,
        ),
        (
            "a_snapshots_peak_never_drops_below_an_earlier_snapshots_current",
            a_snapshots_peak_never_drops_below_an_earlier_snapshots_current,
        ),
    ];
    for (name, case) in cases {
        case();
        println!("deferred_frees: {name} ok (tables)");
    }
    // What snapshots and counters show, with frees forgotten at once.
    SHADOW.store(true, Relaxed);
    for (name, case) in &cases[5..] {
        case();
        println!("deferred_frees: {name} ok (shadow memory)");
    }
}
