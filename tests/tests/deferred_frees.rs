//! A thread's frees of small blocks are queued and applied in batches (`adapter-std/src/
//! deferred.rs`). These tests hold it to what its documentation promises: queued blocks still
//! reach the inner allocator (a full batch, the thread's own questions, its exit), and large
//! blocks are never held back.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc;
use std::sync::Mutex;

use tracemalloc::TracingAllocator;
use tracemalloc_tests::{blocks, marked_line, traced_at, Counting, LIVE};

#[global_allocator]
static ALLOC: TracingAllocator<Counting> = TracingAllocator::new(Counting);

static SERIAL: Mutex<()> = Mutex::new(());

const THIS_FILE: &str = "tests/tests/deferred_frees.rs";

fn line_of(marker: &str) -> u32 {
    marked_line(include_str!("deferred_frees.rs"), marker)
}

fn traced_here(marker: &str) -> Option<(u64, u64)> {
    let snapshot = tracemalloc::take_snapshot().unwrap();
    traced_at(&snapshot, THIS_FILE, line_of(marker))
}

#[inline(never)]
fn small(n: usize) -> Vec<Vec<u8>> {
    blocks(n, || vec![7u8; 64]) // SMALL
}

#[inline(never)]
fn large() -> Vec<u8> {
    vec![9u8; 64 * 1024] // LARGE
}

/// Runs `free` on a thread that then stays alive until the returned sender is dropped, so
/// that what the main thread sees is not the thread's exit flush.
fn on_live_thread(
    free: impl FnOnce() + Send + 'static,
) -> (std::thread::JoinHandle<()>, mpsc::Sender<()>) {
    let (done_tx, done_rx) = mpsc::channel();
    let (exit_tx, exit_rx) = mpsc::channel::<()>();
    let handle = std::thread::spawn(move || {
        free();
        done_tx.send(()).unwrap();
        let _ = exit_rx.recv();
    });
    done_rx.recv().unwrap();
    (handle, exit_tx)
}

#[test]
fn full_batches_are_applied_without_being_asked() {
    let _s = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    tracemalloc::start(4).unwrap();
    let blocks = small(48);
    assert_eq!(traced_here("SMALL"), Some((48 * 64, 48)));
    // The thread asks nothing: only full batches are applied, so at most one batch short of
    // full (15 frees) may still be queued.
    let (handle, exit) = on_live_thread(move || drop(blocks));
    let left = traced_here("SMALL").map_or(0, |(_, count)| count);
    assert!(left < 16, "{left} freed blocks still traced");
    drop(exit);
    handle.join().unwrap();
    assert_eq!(
        traced_here("SMALL"),
        None,
        "the thread's exit applies the rest"
    );
    tracemalloc::stop();
}

#[test]
fn a_thread_applies_its_queue_before_it_reports() {
    let _s = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    tracemalloc::start(4).unwrap();
    let blocks = small(3);
    let (handle, exit) = on_live_thread(move || {
        drop(blocks);
        let _ = tracemalloc::traced_memory(); // applies this thread's queue
    });
    assert_eq!(traced_here("SMALL"), None);
    drop(exit);
    handle.join().unwrap();
    tracemalloc::stop();
}

#[test]
fn large_frees_are_not_held_back() {
    let _s = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    tracemalloc::start(4).unwrap();
    let block = large();
    assert_eq!(traced_here("LARGE"), Some((64 * 1024, 1)));
    let before = LIVE.load(Relaxed);
    let (handle, exit) = on_live_thread(move || drop(block));
    let after = LIVE.load(Relaxed);
    assert!(
        before - after >= 48 * 1024, // less the thread's own allocations (about 2 KiB)
        "the block reached the inner allocator late: {before} -> {after}"
    );
    assert_eq!(traced_here("LARGE"), None);
    drop(exit);
    handle.join().unwrap();
    tracemalloc::stop();
}

#[test]
fn queued_frees_reach_the_inner_allocator_when_threads_exit() {
    let _s = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    tracemalloc::start(4).unwrap();
    let before = LIVE.load(Relaxed);
    // 200 threads each free 5 blocks of 4 KiB and exit without asking anything: 4 MB would
    // stay with the tracer if exits did not apply the queues.
    for _ in 0..200 {
        let blocks = tracemalloc_tests::blocks(5, || vec![1u8; 4096]); // EXITING
        std::thread::spawn(move || drop(blocks)).join().unwrap();
    }
    let grown = LIVE.load(Relaxed) - before;
    assert!(grown < 1 << 20, "inner allocator holds {grown} more bytes");
    assert_eq!(traced_here("EXITING"), None);
    tracemalloc::stop();
}
