//! Whole-process benchmarks of tracemalloc (issue 5).
//!
//! Every variant is its own binary, because each needs its own `#[global_allocator]`:
//! `untraced` (`System`), `traced` (tracemalloc, `--nframe N`, or `--off` to install the wrapper
//! without ever starting it), `dhat` (dhat-rs heap profiling) and `modalloc` (mod-alloc with
//! call-site backtraces). They share the [`workloads`] and this harness: parse the arguments,
//! prepare the workload untimed, time its run, print one `RESULT` line. The `compare` binary
//! runs them interleaved and prints median ratios; `memory` measures table memory and
//! snapshots at scale.
#![deny(missing_docs, unreachable_pub)]

pub mod report;
pub mod workloads;

use std::collections::BTreeMap;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

pub use workloads::{Prepared, Workload};

/// What a variant binary was asked to run.
#[derive(Clone, Debug)]
pub struct Args {
    /// The workload.
    pub workload: Workload,
    /// Copies of the workload running at once, one per thread (1: on the main thread).
    pub threads: usize,
    /// Traceback limit (the `traced` binary only).
    pub nframe: usize,
    /// Install the tracing wrapper but never start tracing (the `traced` binary only).
    pub off: bool,
    /// Sample one block per this many bytes on average; 0 traces every block (`traced` only).
    pub sample: u64,
}

const USAGE: &str = "usage: <variant> WORKLOAD [--threads N] [--nframe N] [--off] [--sample BYTES]
  WORKLOAD: hashmap | json | channel | tree
  --nframe N also from the BENCH_NFRAME environment variable (default 16)";

impl Args {
    /// Parses the process arguments; prints the usage and exits on an error.
    pub fn from_env() -> Args {
        match Args::parse(std::env::args().skip(1)) {
            Ok(args) => args,
            Err(e) => {
                eprintln!("{e}\n{USAGE}");
                std::process::exit(2);
            }
        }
    }

    /// Parses arguments (without the program name).
    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Args, String> {
        let mut workload = None;
        let mut threads = 1;
        let mut nframe = std::env::var("BENCH_NFRAME")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(16);
        let mut off = false;
        let mut sample = 0;
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            let mut number = |name: &str| -> Result<usize, String> {
                args.next()
                    .and_then(|v| v.parse().ok())
                    .filter(|&n| n > 0)
                    .ok_or_else(|| format!("{name} needs a positive number"))
            };
            match arg.as_str() {
                "--threads" => threads = number("--threads")?,
                "--nframe" => nframe = number("--nframe")?,
                "--off" => off = true,
                "--sample" => sample = number("--sample")? as u64,
                name if workload.is_none() => workload = Some(name.parse()?),
                other => return Err(format!("unexpected argument {other:?}")),
            }
        }
        Ok(Args {
            workload: workload.ok_or("no workload given")?,
            threads,
            nframe,
            off,
            sample,
        })
    }
}

/// Prepares `threads` copies of `workload` (untimed), then times their run, all at once when
/// there is more than one. Returns the wall time and the sum of the checksums.
pub fn time_workload(workload: Workload, threads: usize) -> (Duration, u64) {
    if threads <= 1 {
        let prepared = workload.prepare();
        let start = Instant::now();
        let checksum = prepared.run();
        return (start.elapsed(), checksum);
    }
    // Every thread prepares, then all wait at the barrier with the timer's thread, so the timer
    // starts when the last setup is done.
    let barrier = Arc::new(Barrier::new(threads + 1));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let barrier = Arc::clone(&barrier);
            thread::spawn(move || {
                let prepared = workload.prepare();
                barrier.wait();
                prepared.run()
            })
        })
        .collect();
    barrier.wait();
    let start = Instant::now();
    let checksum = handles
        .into_iter()
        .map(|h| h.join().expect("workload thread"))
        .sum();
    (start.elapsed(), checksum)
}

/// The body of an untraced variant's `main` (`untraced`, `untraced_mimalloc`): runs the
/// workload the command line names on whatever allocator the binary installed.
pub fn run_untraced(variant: &str) {
    let args = Args::from_env();
    let (elapsed, checksum) = time_workload(args.workload, args.threads);
    print_result(variant, &args, elapsed, checksum, "");
}

/// The body of a traced variant's `main` (`traced`, `traced_mimalloc`), whose global allocator
/// is a `TracingAllocator`: traces with `--nframe N` frames (sampling one block per
/// `--sample BYTES` when given), or with `--off` leaves tracing off.
pub fn run_traced(variant: &str) {
    let args = Args::from_env();
    if !args.off {
        let config = tracemalloc::Config {
            nframe: args.nframe,
            sample_interval: args.sample,
            ..tracemalloc::Config::default()
        };
        if let Err(e) = tracemalloc::start_with(config) {
            eprintln!("{variant}: cannot start tracing: {e}");
            std::process::exit(1);
        }
    }
    let (elapsed, checksum) = time_workload(args.workload, args.threads);
    // Read after the timer stopped; shows that the run was traced (peak > 0) or not, and with
    // what the tracer actually ran (`nframe` is only what was asked for).
    let (_, peak) = tracemalloc::traced_memory();
    let extra = if args.off {
        format!("mode=off peak={peak}")
    } else {
        format!(
            "mode=on nframe={} traceback_limit={} storage={} capture={} sample={} peak={peak} \
             tracer_memory={}",
            args.nframe,
            tracemalloc::traceback_limit(),
            storage_name(tracemalloc::storage_in_use()),
            capture_name(tracemalloc::capture_in_use()),
            args.sample,
            tracemalloc::tracemalloc_memory()
        )
    };
    tracemalloc::stop();
    print_result(variant, &args, elapsed, checksum, &extra);
}

/// The `capture=` of a traced run that walked frame pointers.
pub const FRAME_POINTERS: &str = "frame-pointers";

/// The `capture=` of a traced run's `RESULT` line.
fn capture_name(capture: Option<tracemalloc::Capture>) -> &'static str {
    match capture {
        Some(tracemalloc::Capture::FramePointers) => FRAME_POINTERS,
        Some(tracemalloc::Capture::Unwinder) => "unwinder",
        Some(tracemalloc::Capture::Auto) => "auto",
        None => "none",
    }
}

/// The `storage=` of a traced run's `RESULT` line.
fn storage_name(storage: Option<tracemalloc::Storage>) -> &'static str {
    match storage {
        Some(tracemalloc::Storage::Shadow) => "shadow",
        Some(tracemalloc::Storage::Table) => "table",
        Some(tracemalloc::Storage::Auto) => "auto",
        None => "none",
    }
}

/// Prints the machine-readable result line the `compare` driver parses:
/// `RESULT variant=traced workload=hashmap threads=1 nframe=16 seconds=0.123456 checksum=…`,
/// followed by `extra` (`key=value` pairs).
pub fn print_result(variant: &str, args: &Args, elapsed: Duration, checksum: u64, extra: &str) {
    println!(
        "RESULT variant={variant} workload={} threads={} seconds={:.6} checksum={checksum}{}{extra}",
        args.workload,
        args.threads,
        elapsed.as_secs_f64(),
        if extra.is_empty() { "" } else { " " },
    );
}

/// The `RESULT` line of a variant's output, parsed.
#[derive(Clone, Debug, PartialEq)]
pub struct RunResult {
    /// The timed part's wall time.
    pub seconds: f64,
    /// The workload's checksum: the same for every variant of one workload and thread count.
    pub checksum: u64,
    /// Every `key=value` field of the line, the two above included.
    pub fields: BTreeMap<String, String>,
}

impl RunResult {
    /// Parses the last `RESULT` line of `output`; the error says what is missing.
    pub fn parse(output: &str) -> Result<RunResult, String> {
        let line = output
            .lines()
            .rfind(|l| l.starts_with("RESULT "))
            .ok_or("no RESULT line")?;
        let fields: BTreeMap<String, String> = line
            .split_whitespace()
            .filter_map(|field| field.split_once('='))
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect();
        let number = |key: &str| {
            fields
                .get(key)
                .ok_or_else(|| format!("no {key}= in its RESULT line"))
        };
        let seconds = number("seconds")?
            .parse()
            .map_err(|e| format!("seconds= in its RESULT line: {e}"))?;
        let checksum = number("checksum")?
            .parse()
            .map_err(|e| format!("checksum= in its RESULT line: {e}"))?;
        Ok(RunResult {
            seconds,
            checksum,
            fields,
        })
    }

    /// The value of field `key`, if the line has it.
    pub fn field(&self, key: &str) -> Option<&str> {
        self.fields.get(key).map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Args, String> {
        Args::parse(s.split_whitespace().map(String::from))
    }

    #[test]
    fn arguments_parse_in_any_order() {
        let a = parse("--nframe 4 tree --threads 2 --off").unwrap();
        assert_eq!(a.workload, Workload::Tree);
        assert_eq!((a.nframe, a.threads, a.off), (4, 2, true));
        assert!(parse("--nframe 0 tree").is_err());
        assert!(parse("tree json").is_err());
        assert!(parse("").is_err());
    }

    #[test]
    fn the_driver_reads_the_result_line_back() {
        let out = "noise\nRESULT variant=x workload=tree threads=1 seconds=0.250000 checksum=17 \
                   mode=on traceback_limit=16\n";
        let run = RunResult::parse(out).unwrap();
        assert_eq!((run.seconds, run.checksum), (0.25, 17));
        assert_eq!(run.field("traceback_limit"), Some("16"));
        assert_eq!(run.field("capture"), None);
        assert_eq!(
            RunResult::parse("RESULT variant=x checksum=1"),
            Err("no seconds= in its RESULT line".to_string())
        );
        assert!(RunResult::parse("RESULT seconds=0.1 checksum=x").is_err());
        assert_eq!(
            RunResult::parse("panicked"),
            Err("no RESULT line".to_string())
        );
    }
}
