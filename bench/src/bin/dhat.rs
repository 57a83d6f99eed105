//! The workload under dhat-rs heap profiling. Its profile goes to the temporary directory and is
//! deleted; writing it happens after the timer stopped.

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

fn main() {
    let args = tracemalloc_bench::Args::from_env();
    let path = std::env::temp_dir().join(format!(
        "tracemalloc-bench-dhat-{}.json",
        std::process::id()
    ));
    let profiler = dhat::Profiler::builder().file_name(&path).build();
    let (elapsed, checksum) = tracemalloc_bench::time_workload(args.workload, args.threads);
    let stats = dhat::HeapStats::get();
    drop(profiler);
    let _ = std::fs::remove_file(&path);
    let extra = format!("total_blocks={}", stats.total_blocks);
    tracemalloc_bench::print_result("dhat", &args, elapsed, checksum, &extra);
}
