//! The workload under tracemalloc's `TracingAllocator`, tracing with `--nframe N` frames
//! (sampling one block per `--sample BYTES` when given), or with `--off` the wrapper installed
//! and tracing never started.

#[global_allocator]
static ALLOC: tracemalloc::TracingAllocator = tracemalloc::TracingAllocator::system();

fn main() {
    let args = tracemalloc_bench::Args::from_env();
    if !args.off {
        let config = tracemalloc::Config {
            nframe: args.nframe,
            sample_interval: args.sample,
            ..tracemalloc::Config::default()
        };
        if let Err(e) = tracemalloc::start_with(config) {
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
            "mode=on nframe={} sample={} peak={peak} tracer_memory={}",
            args.nframe,
            args.sample,
            tracemalloc::tracemalloc_memory()
        )
    };
    tracemalloc::stop();
    tracemalloc_bench::print_result("traced", &args, elapsed, checksum, &extra);
}
