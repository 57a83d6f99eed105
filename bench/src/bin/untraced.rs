//! The baseline: the workload on `System`, nothing wrapped.

use std::alloc::System;

#[global_allocator]
static ALLOC: System = System;

fn main() {
    let args = tracemalloc_bench::Args::from_env();
    let (elapsed, checksum) = tracemalloc_bench::time_workload(args.workload, args.threads);
    tracemalloc_bench::print_result("untraced", &args, elapsed, checksum, "");
}
