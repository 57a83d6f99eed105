//! The workload under mod-alloc with its `backtraces` feature: a frame-pointer walk of up to 8
//! frames on every allocation, aggregated per call site (no per-block tracking).

#[global_allocator]
static ALLOC: mod_alloc::ModAlloc = mod_alloc::ModAlloc::new();

fn main() {
    let args = tracemalloc_bench::Args::from_env();
    let (elapsed, checksum) = tracemalloc_bench::time_workload(args.workload, args.threads);
    let stats = ALLOC.snapshot();
    let sites = ALLOC.call_sites().len();
    let extra = format!("alloc_count={} call_sites={sites}", stats.alloc_count);
    tracemalloc_bench::print_result("modalloc", &args, elapsed, checksum, &extra);
}
