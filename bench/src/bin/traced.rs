//! The workload under tracemalloc's `TracingAllocator` around `System` (glibc's `malloc`).

#[global_allocator]
static ALLOC: tracemalloc::TracingAllocator = tracemalloc::TracingAllocator::system();

fn main() {
    tracemalloc_bench::run_traced("traced");
}
