//! More threads free than there are queues of frees (1024, `adapter-std/src/deferred.rs`): a
//! thread that finds every queue taken applies its frees at once, at the cost of any traced
//! free, not of a search through every queue on each of them.

use std::sync::{mpsc, Arc, Barrier};
use std::time::{Duration, Instant};

use tracemalloc::{Config, Storage, TracingAllocator};

#[global_allocator]
static ALLOC: TracingAllocator = TracingAllocator::system();

/// Queues of frees (`deferred::QUEUES`).
const QUEUES: usize = 1024;

/// Time to free `n` small traced blocks on a new thread, the best of three rounds.
fn time_to_free_on_new_thread(n: usize) -> Duration {
    std::thread::spawn(move || {
        (0..3)
            .map(|_| {
                let blocks: Vec<Box<[u8; 64]>> = (0..n).map(|_| Box::new([7; 64])).collect();
                let start = Instant::now();
                drop(std::hint::black_box(blocks));
                start.elapsed()
            })
            .min()
            .unwrap()
    })
    .join()
    .unwrap()
}

#[test]
fn a_thread_beyond_the_queues_frees_about_as_fast_as_one_with_a_queue() {
    tracemalloc::start_with(Config {
        nframe: 1,
        storage: Storage::Table,
        ..Config::default()
    })
    .unwrap();
    let n = 4000;
    let with_queue = time_to_free_on_new_thread(n);
    // Threads that each take a queue with their first free and hold it until they exit.
    let exit = Arc::new(Barrier::new(QUEUES + 1));
    let (ready_tx, ready_rx) = mpsc::channel();
    let holders: Vec<_> = (0..QUEUES)
        .map(|_| {
            let (exit, ready) = (Arc::clone(&exit), ready_tx.clone());
            std::thread::Builder::new()
                .stack_size(64 * 1024)
                .spawn(move || {
                    drop(std::hint::black_box(Box::new([1u8; 64])));
                    ready.send(()).unwrap();
                    exit.wait();
                })
                .unwrap()
        })
        .collect();
    for _ in 0..QUEUES {
        ready_rx.recv().unwrap();
    }
    let beyond = time_to_free_on_new_thread(n);
    exit.wait();
    for holder in holders {
        holder.join().unwrap();
    }
    tracemalloc::stop();
    assert!(
        beyond < with_queue * 4 + Duration::from_millis(2),
        "{n} frees took {beyond:?} beyond the queues, {with_queue:?} with a queue"
    );
}
