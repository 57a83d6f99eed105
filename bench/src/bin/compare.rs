//! Runs every variant of every workload interleaved and prints median times and ratios.
//!
//! Each round runs each variant of a workload once, in an order shuffled anew every round, so
//! a burst of load from other processes lands on different variants in different rounds; the
//! medians over rounds then drop it. The variant binaries must sit next to this one (build them
//! with `cargo build --release -p tracemalloc-bench`).
//!
//! ```text
//! compare [--rounds N] [--workloads hashmap,json,...] [--no-main] [--no-sweep] [--no-memory]
//!         [--no-heaptrack] [--no-dhat] [--svg PATH] [--against DIR]
//! ```
//!
//! The sweep's chart goes to `--svg PATH`, by default next to this binary.
//!
//! `--against DIR` compares this build's `traced` with the one in `DIR` (another build's
//! `target/release`, as `ci/ab.sh` makes one) instead: both at nframe 16 and 1 (and 16 with
//! two threads), interleaved with this build's `untraced`, each ratio taken round by round,
//! each pair run back to back, with a 95 % interval for the change.
//!
//! A run fails when it exits with an error, prints no `RESULT` line, reports a checksum other
//! than that of the untraced run with as many threads in the same round (with `--against`,
//! `before`'s must equal `after`'s), or, traced, reports a traceback limit other than the one
//! asked for or a capture other than frame pointers where the tracer has a walker: it then
//! counts in no figure, a `failed runs` line under the tables says which and why, and
//! `compare` exits with status 1.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use tracemalloc_bench::report::{
    best_ratio, check_round, markdown_table, median, median_difference, overhead_svg, verdict,
    Estimate, Failures, RoundRun, Threshold, TracedExpectation,
};
use tracemalloc_bench::{RunResult, Workload};

const HEAPTRACK: &str = "/usr/bin/heaptrack";
const SWEEP_NFRAMES: [usize; 7] = [1, 2, 4, 8, 16, 32, 64];
/// Allocations and reallocations of the hashmap workload, which the sweep runs: 1.8 M and
/// 0.3 M.
const HASHMAP_ALLOCATIONS: f64 = 2.1e6;

struct Options {
    rounds: usize,
    workloads: Vec<Workload>,
    main: bool,
    sweep: bool,
    memory: bool,
    heaptrack: bool,
    dhat: bool,
    /// Where the sweep's chart goes; `None`: next to this binary, never over the committed one
    /// (`ci/bench.sh --publish` copies it there).
    svg: Option<PathBuf>,
    /// Another build's binaries, for an A/B run.
    against: Option<PathBuf>,
}

fn options() -> Result<Options, String> {
    let mut o = Options {
        rounds: 7,
        workloads: Workload::ALL.to_vec(),
        main: true,
        sweep: true,
        memory: true,
        heaptrack: Path::new(HEAPTRACK).exists(),
        dhat: true,
        svg: None,
        against: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--rounds" => {
                o.rounds = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|&n| n > 0)
                    .ok_or("--rounds needs a positive number")?
            }
            "--workloads" => {
                o.workloads = args
                    .next()
                    .ok_or("--workloads needs a list")?
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<_, _>>()?
            }
            "--svg" => o.svg = Some(args.next().ok_or("--svg needs a path")?.into()),
            "--against" => {
                let dir = PathBuf::from(args.next().ok_or("--against needs a directory")?);
                if !dir.join("traced").is_file() {
                    return Err(format!("--against: no `traced` in {}", dir.display()));
                }
                o.against = Some(dir);
            }
            "--no-main" => o.main = false,
            "--no-sweep" => o.sweep = false,
            "--no-memory" => o.memory = false,
            "--no-heaptrack" => o.heaptrack = false,
            "--no-dhat" => o.dhat = false,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(o)
}

/// One way of running a workload.
#[derive(Clone)]
struct Variant {
    /// Column name.
    label: String,
    /// Binary next to this one, or in `dir`.
    bin: &'static str,
    /// Where `bin` is, when not next to this one (another build, for `--against`).
    dir: Option<PathBuf>,
    args: Vec<String>,
    /// Run under heaptrack.
    heaptrack: bool,
    /// Label of the variant this one's ratio is taken against.
    baseline: String,
    /// Label of the variant whose checksum this one's must equal in each round.
    checksum_reference: String,
    /// What a traced run must report having run with (`None` for other variants).
    expectation: Option<TracedExpectation>,
    /// Environment variables set for the run.
    env: Vec<(&'static str, &'static str)>,
}

impl Variant {
    fn new(label: &str, bin: &'static str, args: &[&str], baseline: &str) -> Variant {
        // Every traced binary that traces: the limit it is given (16 when not, as `BENCH_NFRAME`
        // is removed from its environment), and frame pointers wherever the tracer walks them,
        // since the workspace builds with them.
        let nframe = args
            .iter()
            .position(|&a| a == "--nframe")
            .and_then(|i| args.get(i + 1)?.parse().ok())
            .unwrap_or(16);
        let traces = bin.starts_with("traced") && !args.contains(&"--off");
        let expectation = traces.then(|| TracedExpectation {
            nframe,
            frame_pointers: tracemalloc::Capture::frame_pointers_supported(),
            fields_optional: false,
        });
        Variant {
            label: label.to_string(),
            bin,
            dir: None,
            args: args.iter().map(|s| s.to_string()).collect(),
            heaptrack: false,
            baseline: baseline.to_string(),
            checksum_reference: baseline.to_string(),
            expectation,
            env: Vec::new(),
        }
    }

    /// Checks the checksum against `label`'s rather than the baseline's.
    fn checked_against(mut self, label: &str) -> Variant {
        self.checksum_reference = label.to_string();
        self
    }

    /// Runs `bin` from another build's `dir`, which may predate the fields a traced run's
    /// `RESULT` line has now.
    fn in_dir(mut self, dir: &Path) -> Variant {
        self.dir = Some(dir.to_path_buf());
        if let Some(e) = &mut self.expectation {
            e.fields_optional = true;
        }
        self
    }

    fn with_env(mut self, name: &'static str, value: &'static str) -> Variant {
        self.env.push((name, value));
        self
    }
}

const UNTRACED: &str = "untraced";
const UNTRACED_2T: &str = "untraced 2T";
const OFF: &str = "off";
const NFRAME1: &str = "nframe 1";
const NFRAME16: &str = "nframe 16";
const NFRAME16_2T: &str = "nframe 16 2T";
const SAMPLED: &str = "sampled 16";
const MODALLOC: &str = "mod-alloc";
const DHAT: &str = "dhat-rs";
const HEAPTRACK_LABEL: &str = "heaptrack";
const FLOOR_TABLE: &str = "floor table";
const FLOOR_SHADOW: &str = "floor shadow";
const MIMALLOC: &str = "mimalloc";
const MIMALLOC16: &str = "mimalloc nframe 16";

/// Column order of the main tables.
const COLUMNS: [&str; 14] = [
    UNTRACED,
    OFF,
    NFRAME1,
    NFRAME16,
    SAMPLED,
    UNTRACED_2T,
    NFRAME16_2T,
    MODALLOC,
    DHAT,
    HEAPTRACK_LABEL,
    FLOOR_TABLE,
    FLOOR_SHADOW,
    MIMALLOC,
    MIMALLOC16,
];

fn variants(w: Workload, o: &Options) -> Vec<Variant> {
    let name = w.name();
    let mut v = vec![
        Variant::new(UNTRACED, "untraced", &[name], UNTRACED),
        Variant::new(OFF, "traced", &[name, "--off"], UNTRACED),
        Variant::new(NFRAME1, "traced", &[name, "--nframe", "1"], UNTRACED),
        Variant::new(NFRAME16, "traced", &[name, "--nframe", "16"], UNTRACED),
        // Always-on production mode: 16 frames, one sample per 512 KiB (the default interval).
        Variant::new(
            SAMPLED,
            "traced",
            &[name, "--nframe", "16", "--sample", "524288"],
            UNTRACED,
        ),
        Variant::new(MODALLOC, "modalloc", &[name], UNTRACED),
        // The least any per-block tracer with 16-frame tracebacks pays (src/bin/floor.rs):
        // recording into a hash table keyed by address, and into shadow memory.
        Variant::new(FLOOR_TABLE, "floor", &[name, "--nframe", "16"], UNTRACED)
            .with_env("FLOOR", "full"),
        Variant::new(FLOOR_SHADOW, "floor", &[name, "--nframe", "16"], UNTRACED)
            .with_env("FLOOR", "shadow"),
        // mimalloc, untraced (against glibc) and traced (against itself): an allocator that
        // hands out small blocks side by side, as jemalloc does.
        Variant::new(MIMALLOC, "untraced_mimalloc", &[name], UNTRACED),
        Variant::new(
            MIMALLOC16,
            "traced_mimalloc",
            &[name, "--nframe", "16"],
            MIMALLOC,
        )
        .checked_against(UNTRACED),
    ];
    if !w.is_multithreaded() {
        // Two copies of the workload at once: contention on the tracer's locks and counters.
        v.push(Variant::new(
            UNTRACED_2T,
            "untraced",
            &[name, "--threads", "2"],
            UNTRACED_2T,
        ));
        v.push(Variant::new(
            NFRAME16_2T,
            "traced",
            &[name, "--nframe", "16", "--threads", "2"],
            UNTRACED_2T,
        ));
    }
    if o.dhat {
        v.push(Variant::new(DHAT, "dhat", &[name], UNTRACED));
    }
    if o.heaptrack {
        let mut h = Variant::new(HEAPTRACK_LABEL, "untraced", &[name], UNTRACED);
        h.heaptrack = true;
        v.push(h);
    }
    v
}

/// Runs one variant once: what its `RESULT` line says, or why it failed.
fn run(dir: &Path, v: &Variant) -> Result<RunResult, String> {
    let bin = v.dir.as_deref().unwrap_or(dir).join(v.bin);
    let mut cmd = if v.heaptrack {
        let out = std::env::temp_dir().join("tracemalloc-bench-heaptrack-%p");
        let mut c = Command::new(HEAPTRACK);
        c.arg("-o").arg(out).arg(&bin);
        c
    } else {
        Command::new(&bin)
    };
    cmd.args(&v.args)
        .envs(v.env.iter().copied())
        .env_remove("RUST_TRACEMALLOC")
        .env_remove("BENCH_NFRAME");
    let output = cmd.output().map_err(|e| {
        eprintln!("compare: cannot run {}: {e}", bin.display());
        format!("cannot run: {e}")
    })?;
    if v.heaptrack {
        remove_heaptrack_files();
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let result = if output.status.success() {
        RunResult::parse(&stdout)
    } else {
        Err(output.status.to_string())
    };
    if result.is_err() {
        eprintln!(
            "\ncompare: {} {:?} failed ({}):\n{}{}",
            v.bin,
            v.args,
            output.status,
            stdout,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    result
}

fn remove_heaptrack_files() {
    let Ok(dir) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in dir.flatten() {
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with("tracemalloc-bench-heaptrack-")
        {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// A small deterministic shuffle (xorshift), different every round.
fn shuffled<T: Clone>(items: &[T], round: usize) -> Vec<T> {
    let mut v = items.to_vec();
    let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ (round as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03);
    for i in (1..v.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.swap(i, (x % (i as u64 + 1)) as usize);
    }
    v
}

/// Times of every variant, one per round (NaN where the run failed).
type Times = BTreeMap<String, Vec<f64>>;

/// What the rounds of one set of variants gave.
struct Rounds {
    times: Times,
    /// Keyed by `what` and the variant's label.
    failures: Failures,
}

fn run_interleaved(dir: &Path, what: &str, variants: &[Variant], rounds: usize) -> Rounds {
    let singles: Vec<Vec<Variant>> = variants.iter().map(|v| vec![v.clone()]).collect();
    run_grouped(dir, what, &singles, rounds)
}

/// [`run_interleaved`] with the variants of a group run one right after the other (in an order
/// shuffled anew each round), so that the ratio between them sees the least drift in load.
fn run_grouped(dir: &Path, what: &str, groups: &[Vec<Variant>], rounds: usize) -> Rounds {
    let mut times: Times = BTreeMap::new();
    let mut failures = Failures::default();
    for round in 0..rounds {
        eprint!("compare: {what} round {}/{rounds}:", round + 1);
        let order = shuffled(groups, round)
            .into_iter()
            .flat_map(|group| shuffled(&group, round + rounds));
        let mut runs: Vec<RoundRun> = order
            .map(|v| {
                let outcome = run(dir, &v);
                eprint!(
                    " {}={:.3}",
                    v.label,
                    outcome.as_ref().map_or(f64::NAN, |r| r.seconds)
                );
                RoundRun {
                    label: v.label,
                    checksum_reference: v.checksum_reference,
                    expectation: v.expectation,
                    outcome,
                }
            })
            .collect();
        eprintln!();
        check_round(&mut runs);
        for r in runs {
            if let Err(reason) = &r.outcome {
                eprintln!("compare: {what} {}: {reason}", r.label);
            }
            let t = r.outcome.as_ref().map_or(f64::NAN, |r| r.seconds);
            failures.record(&format!("{what} {}", r.label), &r.outcome);
            times.entry(r.label).or_default().push(t);
        }
    }
    Rounds { times, failures }
}

/// Prints the failed runs, if any, under the tables; whether there were any.
fn report_failures(failures: &Failures) -> bool {
    if let Some(line) = failures.summary() {
        println!("**{line}** (left out of every figure above)\n");
    }
    failures.any()
}

/// The median ratio of `label` to its baseline.
fn ratio(times: &Times, variants: &[Variant], label: &str) -> Option<f64> {
    ratio_with_interval(times, variants, label).median
}

/// [`ratio`] and its 95 % interval (`ratio_interval`), for the targets' verdicts.
fn ratio_with_interval(times: &Times, variants: &[Variant], label: &str) -> Estimate {
    let v = variants.iter().find(|v| v.label == label);
    let pair = v.and_then(|v| times.get(label).zip(times.get(&v.baseline)));
    Estimate::of(pair)
}

fn fmt_opt(x: Option<f64>, f: impl Fn(f64) -> String) -> String {
    x.map_or_else(|| "—".to_string(), f)
}

/// [`fmt_opt`], but "failed" rather than "—" when `label` ran and gave no figure, so that a
/// variant whose runs crashed does not look like one that was never run.
fn fmt_run(times: &Times, label: &str, x: Option<f64>, f: impl Fn(f64) -> String) -> String {
    match x {
        None if times.contains_key(label) => "failed".to_string(),
        x => fmt_opt(x, f),
    }
}

/// Prints the main tables and the targets' verdicts; whether any run failed.
fn main_tables(dir: &Path, o: &Options) -> bool {
    let mut failures = Failures::default();
    let mut seconds_rows = Vec::new();
    let mut ratio_rows = Vec::new();
    let mut best_rows = Vec::new();
    let mut peer_rows = Vec::new();
    let mut verdicts = Vec::new();
    for &w in &o.workloads {
        let vs = variants(w, o);
        let rounds = run_interleaved(dir, w.name(), &vs, o.rounds);
        failures.extend(rounds.failures);
        let times = rounds.times;
        let mut srow = vec![w.name().to_string()];
        let mut rrow = vec![w.name().to_string()];
        let mut brow = vec![w.name().to_string()];
        for col in COLUMNS {
            srow.push(fmt_run(
                &times,
                col,
                times.get(col).and_then(|t| median(t)),
                |s| format!("{s:.3}"),
            ));
            rrow.push(fmt_run(&times, col, ratio(&times, &vs, col), |r| {
                format!("{r:.2}x")
            }));
            let best = vs
                .iter()
                .find(|v| v.label == col)
                .and_then(|v| best_ratio(times.get(col)?, times.get(&v.baseline)?));
            brow.push(fmt_run(&times, col, best, |r| format!("{r:.2}x")));
        }
        seconds_rows.push(srow);
        ratio_rows.push(rrow);
        best_rows.push(brow);
        // Peers against tracemalloc at nframe 16, round by round.
        let t16 = times.get(NFRAME16);
        let peer_estimate =
            |peer: &str| Estimate::of(t16.zip(times.get(peer)).map(|(t, p)| (p, t)));
        let vs_peer = |peer: &str| peer_estimate(peer).median;
        peer_rows.push(vec![
            w.name().to_string(),
            fmt_run(&times, MODALLOC, vs_peer(MODALLOC), |r| format!("{r:.2}x")),
            fmt_run(&times, DHAT, vs_peer(DHAT), |r| format!("{r:.1}x")),
            fmt_run(&times, HEAPTRACK_LABEL, vs_peer(HEAPTRACK_LABEL), |r| {
                format!("{r:.1}x")
            }),
        ]);
        let estimate = |label: &str| ratio_with_interval(&times, &vs, label);
        let two_threads = if w.is_multithreaded() {
            NFRAME16
        } else {
            NFRAME16_2T
        };
        let targets = [
            ("nframe 1 / untraced", estimate(NFRAME1), 1.15, true),
            ("nframe 16 / untraced", estimate(NFRAME16), 1.3, true),
            (
                "nframe 16, 2 threads / untraced",
                estimate(two_threads),
                1.5,
                true,
            ),
            (
                "sampled (512 KiB, nframe 16) / untraced",
                estimate(SAMPLED),
                1.02,
                true,
            ),
            ("mod-alloc / nframe 16", peer_estimate(MODALLOC), 1.0, false),
            ("dhat-rs / nframe 16", peer_estimate(DHAT), 10.0, false),
        ];
        for (what, value, limit, lower_is_better) in targets {
            if let Some(line) = verdict(what, value, limit, lower_is_better) {
                verdicts.push(format!("- {w}: {line}"));
            }
        }
    }
    let mut header = vec!["workload".to_string()];
    header.extend(COLUMNS.iter().map(|c| c.to_string()));
    println!(
        "### Median wall time (s) over {} interleaved rounds\n",
        o.rounds
    );
    println!("{}", markdown_table(&header, &seconds_rows));
    println!("### Median ratio to untraced (per round, then median)\n");
    println!(
        "`2T` columns run two copies of the workload at once and are divided by `untraced 2T`;"
    );
    println!("`channel` has two threads of its own, so its `nframe 16` is the 2-thread figure.");
    println!("`mimalloc` is mimalloc untraced; `mimalloc nframe 16` is divided by it.\n");
    println!("{}", markdown_table(&header, &ratio_rows));
    println!("### Ratio of best rounds (fastest run of each variant over the fastest baseline)\n");
    println!(
        "Neighbours on a shared machine only ever add time: for a workload with one mode this is \
         the least disturbed estimate; for a multimodal one (`channel`) the fastest rounds of \
         two variants can come from different modes. The targets below are judged on the \
         medians above.\n"
    );
    println!("{}", markdown_table(&header, &best_rows));
    println!("### Peers relative to tracemalloc at nframe 16 (>1: tracemalloc is faster)\n");
    let peer_header: Vec<String> = [
        "workload",
        "mod-alloc / tm16",
        "dhat-rs / tm16",
        "heaptrack / tm16",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    println!("{}", markdown_table(&peer_header, &peer_rows));
    let failed = report_failures(&failures);
    println!("### Targets\n");
    println!("{}\n", verdicts.join("\n"));
    failed
}

/// An A/B run: this build's `traced` against the one in `before`, at the limits that matter;
/// whether any run failed.
fn against(dir: &Path, before_dir: &Path, o: &Options) -> bool {
    let mut rows = Vec::new();
    let mut failures = Failures::default();
    for &w in &o.workloads {
        let name = w.name();
        // (column, nframe, two threads)
        let mut limits = vec![("16", "16", false), ("1", "1", false)];
        let mut groups = vec![vec![Variant::new(UNTRACED, "untraced", &[name], UNTRACED)]];
        if !w.is_multithreaded() {
            limits.push(("16 2T", "16", true));
            let two = [name, "--threads", "2"];
            groups.push(vec![Variant::new(
                UNTRACED_2T,
                "untraced",
                &two,
                UNTRACED_2T,
            )]);
        }
        for &(limit, nframe, two_threads) in &limits {
            let mut args = vec![name, "--nframe", nframe];
            let mut baseline = UNTRACED;
            if two_threads {
                args.extend(["--threads", "2"]);
                baseline = UNTRACED_2T;
            }
            let after_label = format!("after {limit}");
            let after = Variant::new(&after_label, "traced", &args, baseline);
            // The same checksum as this build's: a workload that changed between the
            // revisions makes the comparison meaningless.
            let before = Variant::new(&format!("before {limit}"), "traced", &args, baseline)
                .checked_against(&after_label);
            // Side by side: their ratio is the figure that matters.
            groups.push(vec![after, before.in_dir(before_dir)]);
        }
        let rounds = run_grouped(dir, name, &groups, o.rounds);
        failures.extend(rounds.failures);
        let times = rounds.times;
        let vs = groups.concat();
        for &(limit, _, _) in &limits {
            let (after, before) = (format!("after {limit}"), format!("before {limit}"));
            let change = Estimate::of(times.get(&after).zip(times.get(&before)));
            rows.push(vec![
                name.to_string(),
                limit.to_string(),
                fmt_run(&times, &before, ratio(&times, &vs, &before), |r| {
                    format!("{r:.3}x")
                }),
                fmt_run(&times, &after, ratio(&times, &vs, &after), |r| {
                    format!("{r:.3}x")
                }),
                fmt_run(&times, &after, change.median, |r| format!("{r:.3}")),
                change.interval.map_or_else(
                    || "— (6 rounds or more)".to_string(),
                    |(lo, hi)| format!("{lo:.3} – {hi:.3}{}", verdict_of(lo, hi)),
                ),
            ]);
        }
    }
    println!(
        "### This build against {} ({} interleaved rounds)\n",
        before_dir.display(),
        o.rounds
    );
    println!(
        "Ratios to untraced, then after / before round by round (below 1: faster now) and a \
         95 % interval for that median (distribution-free, from the rounds' order): only an \
         interval that leaves 1 out shows a change, marked faster or slower.\n"
    );
    let header: Vec<String> = [
        "workload",
        "nframe",
        "before",
        "after",
        "after / before",
        "95 % interval",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    println!("{}", markdown_table(&header, &rows));
    report_failures(&failures)
}

/// What an interval of after / before says: nothing while it holds 1.
fn verdict_of(lo: f64, hi: f64) -> &'static str {
    if hi < 1.0 {
        " (faster)"
    } else if lo > 1.0 {
        " (slower)"
    } else {
        ""
    }
}

/// The nframe sweep's table and chart; whether any run failed.
fn sweep(dir: &Path, o: &Options) -> bool {
    let w = Workload::Hashmap;
    let mut vs = vec![Variant::new(UNTRACED, "untraced", &[w.name()], UNTRACED)];
    for n in SWEEP_NFRAMES {
        let nframe = n.to_string();
        vs.push(Variant::new(
            &format!("nframe {n}"),
            "traced",
            &[w.name(), "--nframe", &nframe],
            UNTRACED,
        ));
    }
    let rounds = run_interleaved(dir, "sweep", &vs, o.rounds);
    let times = rounds.times;
    let base = times.get(UNTRACED).and_then(|t| median(t));
    let mut rows = Vec::new();
    let mut points = Vec::new();
    for n in SWEEP_NFRAMES {
        let label = format!("nframe {n}");
        let r = ratio(&times, &vs, &label);
        let t = times.get(&label).and_then(|t| median(t));
        // Round by round, as the ratio column is.
        let ns_per_alloc = times
            .get(&label)
            .zip(times.get(UNTRACED))
            .and_then(|(t, b)| median_difference(t, b))
            .map(|extra| extra * 1e9 / HASHMAP_ALLOCATIONS);
        rows.push(vec![
            n.to_string(),
            fmt_run(&times, &label, t, |s| format!("{s:.3}")),
            fmt_run(&times, &label, r, |r| format!("{r:.2}x")),
            fmt_run(&times, &label, ns_per_alloc, |ns| format!("{ns:.0}")),
        ]);
        if let Some(r) = r {
            points.push((n as f64, r));
        }
    }
    println!(
        "### nframe sweep, hashmap workload (untraced median {} s)\n",
        fmt_opt(base, |s| format!("{s:.3}"))
    );
    let header: Vec<String> = ["nframe", "median s", "ratio", "extra ns per alloc/realloc"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    println!("{}", markdown_table(&header, &rows));
    let failed = report_failures(&rounds.failures);
    let svg = overhead_svg(
        "tracemalloc overhead vs nframe (hashmap workload, median of interleaved runs)",
        &points,
        &[
            Threshold {
                y: 1.15,
                label: "target nframe 1: 1.15x".into(),
            },
            Threshold {
                y: 1.3,
                label: "target nframe 16: 1.3x".into(),
            },
        ],
    );
    let path = o
        .svg
        .clone()
        .unwrap_or_else(|| dir.join("BENCHMARKS-overhead.svg"));
    match std::fs::write(&path, svg) {
        Ok(()) => println!("Chart written to `{}`.\n", path.display()),
        Err(e) => eprintln!("compare: cannot write {}: {e}", path.display()),
    }
    failed
}

/// Runs `memory` and prints its tables; whether it failed.
fn memory(dir: &Path) -> bool {
    eprintln!("compare: memory and snapshots at scale");
    let status = match Command::new(dir.join("memory"))
        .env_remove("RUST_TRACEMALLOC")
        .output()
    {
        Ok(out) => {
            print!("{}", String::from_utf8_lossy(&out.stdout));
            if !out.status.success() {
                eprintln!(
                    "compare: memory failed ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            out.status
                .success()
                .then_some(())
                .ok_or(out.status.to_string())
        }
        Err(e) => Err(format!("cannot run: {e}")),
    };
    if let Err(reason) = &status {
        println!("**failed run: memory ({reason})**\n");
    }
    status.is_err()
}

fn main() {
    let o = match options() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("compare: {e}");
            std::process::exit(2);
        }
    };
    let exe = std::env::current_exe().expect("current executable");
    let dir = exe.parent().expect("executable directory").to_path_buf();
    let failed = if let Some(before) = &o.against {
        against(&dir, before, &o)
    } else {
        // Every part runs, whatever failed before it.
        let main = o.main && main_tables(&dir, &o);
        let sweep = o.sweep && sweep(&dir, &o);
        let memory = o.memory && memory(&dir);
        main || sweep || memory
    };
    if failed {
        eprintln!("compare: some runs failed (see `failed runs` in the report)");
        std::process::exit(1);
    }
}
