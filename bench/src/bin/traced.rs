//! The workload under tracemalloc's `TracingAllocator`, tracing with `--nframe N` frames, or
//! with `--off` the wrapper installed and tracing never started.

#[global_allocator]
static ALLOC: tracemalloc::TracingAllocator = tracemalloc::TracingAllocator::system();

fn main() {
    let args = tracemalloc_bench::Args::from_env();
    if !args.off {
        if let Err(e) = tracemalloc::start(args.nframe) {
            eprintln!("traced: cannot start tracing: {e}");
            std::process::exit(1);
        }
    }
    let (elapsed, checksum) = tracemalloc_bench::time_workload(args.workload, args.threads);
    // Read after the timer stopped; shows that the run was traced (peak > 0) or not.
    let (_, peak) = tracemalloc::traced_memory();
    let extra = if args.off {
        format!("mode=off peak={peak}")
    } else {
        format!(
            "mode=on nframe={} peak={peak} tracer_memory={}",
            args.nframe,
            tracemalloc::tracemalloc_memory()
        )
    };
    tracemalloc::stop();
    tracemalloc_bench::print_result("traced", &args, elapsed, checksum, &extra);
}
