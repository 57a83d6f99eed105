//! `start()` racing `stop()` on another thread: whichever wins, `start()` must not claim that
//! the wrapper is not the global allocator.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use tracemalloc::TracingAllocator;

#[global_allocator]
static ALLOC: TracingAllocator = TracingAllocator::system();

#[test]
fn start_racing_stop_never_reports_a_missing_allocator() {
    let done = Arc::new(AtomicBool::new(false));
    let stops = Arc::new(AtomicUsize::new(0));
    let stopper = {
        let (done, stops) = (Arc::clone(&done), Arc::clone(&stops));
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                tracemalloc::stop();
                stops.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    // The starts overlap the stops: from the stopper's first, until it has done 1000 (and
    // 1000 starts at least), however the threads are scheduled.
    while stops.load(Ordering::Relaxed) == 0 {
        std::thread::yield_now();
    }
    let mut i = 0;
    while i < 1000 || stops.load(Ordering::Relaxed) < 1000 {
        i += 1;
        if let Err(e) = tracemalloc::start(1) {
            done.store(true, Ordering::Relaxed);
            panic!("start {i}: {e}");
        }
    }
    done.store(true, Ordering::Relaxed);
    stopper.join().unwrap();
    tracemalloc::stop();
}
