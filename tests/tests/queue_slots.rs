//! More threads free than there are queues of frees (1024, `adapter-std/src/deferred.rs`): a
//! thread that found every queue taken frees at once for the rest of its life. It used to look
//! for a free queue again on each of its frees, a compare-and-swap on every queue's line (which
//! its owner writes on each of its own frees), and to take the first one given back.

use std::sync::mpsc;

use tracemalloc::TracingAllocator;
use tracemalloc_tests::{Counting, LIVE};

#[global_allocator]
static ALLOC: TracingAllocator<Counting> = TracingAllocator::new(Counting);

/// Queues of frees (`deferred::QUEUES`).
const QUEUES: usize = 1024;

/// Bytes the inner allocator gets back when this thread frees a small traced block: all of
/// them when the free is applied at once, none while it waits in the thread's queue.
fn returned_by_one_small_free() -> i64 {
    let block = std::hint::black_box(Box::new([7u8; 1000]));
    let before = LIVE.load(std::sync::atomic::Ordering::Relaxed);
    drop(block);
    before - LIVE.load(std::sync::atomic::Ordering::Relaxed)
}

#[test]
fn a_thread_that_found_every_queue_taken_never_takes_one() {
    tracemalloc_tests::start_in_tables(1); // frees are queued with the tables only
                                           // Threads that each take a queue with their first free, one after another, and hold it
                                           // until told to exit. The first certainly gets one; this thread may hold another, so the
                                           // last ones may find none.
    let mut holders = Vec::new();
    for _ in 0..QUEUES {
        let (ready_tx, ready_rx) = mpsc::channel();
        let (exit_tx, exit_rx) = mpsc::channel::<()>();
        let holder = std::thread::Builder::new()
            .stack_size(64 * 1024)
            .spawn(move || {
                drop(std::hint::black_box(Box::new([1u8; 64])));
                ready_tx.send(()).unwrap();
                let _ = exit_rx.recv();
            })
            .unwrap();
        ready_rx.recv().unwrap();
        holders.push((holder, exit_tx));
    }
    let (asked_tx, asked_rx) = mpsc::channel::<()>();
    let (answer_tx, answer_rx) = mpsc::channel();
    let beyond = std::thread::spawn(move || {
        // Every queue is taken: applied at once.
        answer_tx.send(returned_by_one_small_free()).unwrap();
        asked_rx.recv().unwrap();
        // A queue is free again, but this thread no longer looks for one.
        answer_tx.send(returned_by_one_small_free()).unwrap();
    });
    assert_eq!(
        answer_rx.recv().unwrap(),
        1000,
        "freed at once, every queue taken"
    );
    // The first holder exits, and its exit flush gives its queue back.
    let (first, exit) = holders.remove(0);
    drop(exit);
    first.join().unwrap();
    asked_tx.send(()).unwrap();
    let returned = answer_rx.recv().unwrap();
    beyond.join().unwrap();
    for (holder, exit) in holders {
        drop(exit);
        holder.join().unwrap();
    }
    tracemalloc::stop();
    assert_eq!(
        returned, 1000,
        "freed at once, not held in the queue given back"
    );
}
