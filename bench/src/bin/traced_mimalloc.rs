//! The workload under tracemalloc's `TracingAllocator` around mimalloc, an allocator that hands
//! out small blocks side by side (shadow memory then takes four cells per 32-byte span, in
//! planes, and the tables their packed placement).

#[global_allocator]
static ALLOC: tracemalloc::TracingAllocator<mimalloc::MiMalloc> =
    tracemalloc::TracingAllocator::new(mimalloc::MiMalloc);

fn main() {
    tracemalloc_bench::run_traced("traced_mimalloc");
}
