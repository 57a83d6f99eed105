//! `start()` racing `stop()` on another thread: whichever wins, `start()` must not claim that
//! the wrapper is not the global allocator.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tracemalloc::TracingAllocator;

#[global_allocator]
static ALLOC: TracingAllocator = TracingAllocator::system();

#[test]
fn start_racing_stop_never_reports_a_missing_allocator() {
    let done = Arc::new(AtomicBool::new(false));
    let stopper = {
        let done = Arc::clone(&done);
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                tracemalloc::stop();
            }
        })
    };
    for i in 0..1000 {
        if let Err(e) = tracemalloc::start(1) {
            done.store(true, Ordering::Relaxed);
            panic!("start {i}: {e}");
        }
    }
    done.store(true, Ordering::Relaxed);
    stopper.join().unwrap();
    tracemalloc::stop();
}
