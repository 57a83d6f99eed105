//! `stop()` gives the tracer's memory back to the global allocator's inner allocator, which
//! `start()` names by freeing a probe block through the wrapper. While sampling, an unsampled
//! block's free skips the tracer inline, so the probe named nothing, and a process whose first
//! start sampled kept all of the tracer's memory after `stop()`. Its own test binary: no
//! earlier start in the process may have named the allocator.

use tracemalloc::{Config, TracingAllocator};

#[global_allocator]
static ALLOC: TracingAllocator = TracingAllocator::system();

#[test]
fn stop_after_a_sampled_first_start_gives_the_memory_back() {
    tracemalloc::start_with(Config::sampled(4)).unwrap();
    assert!(tracemalloc::tracemalloc_memory() > 0, "the tables exist");
    tracemalloc::stop();
    assert_eq!(tracemalloc::tracemalloc_memory(), 0, "given back");
    // And again with full tracing, which always named it.
    tracemalloc::start(4).unwrap();
    tracemalloc::stop();
    assert_eq!(tracemalloc::tracemalloc_memory(), 0);
}
