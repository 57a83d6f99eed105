//! The baseline of `traced_mimalloc`: the workload on mimalloc, nothing wrapped.

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    tracemalloc_bench::run_untraced("untraced_mimalloc");
}
