//! The `tracemalloc` command: reports on snapshot files, as the Python module's statistics,
//! `compare_to` and `Traceback.format()` print them.
//!
//! ```text
//! tracemalloc stats FILE [--key filename|lineno|traceback] [--cumulative] [--limit N]
//! tracemalloc compare OLD NEW [same options]
//! tracemalloc traceback FILE [--limit N]
//!   filters: --include GLOB[:LINE] --exclude GLOB[:LINE] --all-frames --domain N
//!            --exclude-domain N
//!   symbols: --elf FIRMWARE   resolve device addresses with the firmware's debug info
//! ```
//!
//! Every failure is one line on stderr naming the problem and a non-zero exit status: 2 for a
//! bad command line, 1 for a file that cannot be used.

use std::fmt;
use std::io::Write;
use std::path::PathBuf;

use tracemalloc_core::{DomainFilter, Filter, KeyType, Snapshot, TraceFilter};

use crate::files::{self, FileError};
use crate::source::SourceLines;
use crate::symbolize::ElfResolver;

const USAGE: &str = "usage: tracemalloc stats FILE | compare OLD NEW | traceback FILE \
[--key filename|lineno|traceback] [--cumulative] [--limit N] [--include GLOB[:LINE]] \
[--exclude GLOB[:LINE]] [--all-frames] [--domain N] [--exclude-domain N] [--elf FIRMWARE]
  --key defaults to lineno, --limit to 10 (0: all); tracemalloc --version prints the version";
const COMMANDS: &str = "stats, compare or traceback";

/// What went wrong, with the exit status it maps to.
#[derive(Debug)]
pub enum CliError {
    /// The command line is wrong (exit status 2).
    Usage(String),
    /// A file cannot be used (exit status 1).
    File(FileError),
    /// Anything else that stops the report (exit status 1).
    Failed(String),
}

impl CliError {
    /// The process exit status for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Usage(_) => 2,
            CliError::File(_) | CliError::Failed(_) => 1,
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Usage(m) => write!(f, "{m} (tracemalloc --help shows the usage)"),
            CliError::File(e) => write!(f, "{e}"),
            CliError::Failed(m) => f.write_str(m),
        }
    }
}

#[derive(Debug, PartialEq)]
enum Command {
    Stats(PathBuf),
    Compare(PathBuf, PathBuf),
    Traceback(PathBuf),
}

#[derive(Debug)]
struct Options {
    command: Command,
    key: KeyType,
    cumulative: bool,
    limit: usize,
    filters: Vec<TraceFilter>,
    all_frames: bool,
    elf: Option<PathBuf>,
}

fn usage(message: impl Into<String>) -> CliError {
    CliError::Usage(message.into())
}

fn parse_number<T: std::str::FromStr>(flag: &str, value: Option<String>) -> Result<T, CliError> {
    let value = value.ok_or_else(|| usage(format!("{flag} needs a value")))?;
    value
        .parse()
        .map_err(|_| usage(format!("{flag}: not a number: {value:?}")))
}

/// `GLOB[:LINE]`: a trailing `:digits` is the line.
fn parse_pattern(inclusive: bool, value: &str) -> Filter {
    if let Some((glob, line)) = value.rsplit_once(':') {
        if !line.is_empty() && line.bytes().all(|b| b.is_ascii_digit()) {
            if let Ok(line) = line.parse() {
                return Filter::new(inclusive, glob).with_lineno(line);
            }
        }
    }
    Filter::new(inclusive, value)
}

/// What the command line asks for.
#[derive(Debug)]
enum Request {
    Report(Options),
    Help,
    Version,
}

/// The options, or what else was asked for.
fn parse(args: Vec<String>) -> Result<Request, CliError> {
    let mut args = args.into_iter();
    let command = args
        .next()
        .ok_or_else(|| usage(format!("no command given ({COMMANDS})")))?;
    match command.as_str() {
        "-h" | "--help" => return Ok(Request::Help),
        "-V" | "--version" => return Ok(Request::Version),
        "stats" | "compare" | "traceback" => {}
        option if option.starts_with('-') => {
            return Err(usage(format!(
                "the command ({COMMANDS}) comes first, before {option:?}"
            )))
        }
        other => {
            return Err(usage(format!(
                "unknown command {other:?} (expected {COMMANDS})"
            )))
        }
    }
    let mut positional = Vec::new();
    let mut options = Options {
        command: Command::Stats(PathBuf::new()),
        key: KeyType::Lineno,
        cumulative: false,
        limit: 10,
        filters: Vec::new(),
        all_frames: false,
        elf: None,
    };
    let mut patterns = Vec::new();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--key" => {
                let value = args.next().ok_or_else(|| usage("--key needs a value"))?;
                options.key = value.parse().map_err(|_| {
                    usage(format!(
                        "--key: unknown key type {value:?} (filename, lineno or traceback)"
                    ))
                })?;
            }
            "--cumulative" => options.cumulative = true,
            "--limit" => options.limit = parse_number("--limit", args.next())?,
            "--include" | "--exclude" => {
                let value = args
                    .next()
                    .ok_or_else(|| usage(format!("{arg} needs a pattern")))?;
                patterns.push(parse_pattern(arg == "--include", &value));
            }
            "--all-frames" => options.all_frames = true,
            "--domain" | "--exclude-domain" => {
                let domain = parse_number(&arg, args.next())?;
                options.filters.push(TraceFilter::Domain(DomainFilter::new(
                    arg == "--domain",
                    domain,
                )));
            }
            "--elf" => {
                let value = args.next().ok_or_else(|| usage("--elf needs a file"))?;
                options.elf = Some(PathBuf::from(value));
            }
            "-h" | "--help" => return Ok(Request::Help),
            flag if flag.starts_with('-') && flag.len() > 1 => {
                return Err(usage(format!("unknown option {flag:?}")));
            }
            _ => positional.push(PathBuf::from(arg)),
        }
    }
    for pattern in patterns {
        options.filters.push(TraceFilter::Filter(
            pattern.with_all_frames(options.all_frames),
        ));
    }
    let want = if command == "compare" { 2 } else { 1 };
    if positional.len() != want {
        return Err(usage(format!(
            "{command} takes {want} file{}, got {}",
            if want == 1 { "" } else { "s" },
            positional.len()
        )));
    }
    let mut files = positional.into_iter();
    let mut next = || files.next().unwrap_or_default();
    options.command = match command.as_str() {
        "stats" => Command::Stats(next()),
        "compare" => Command::Compare(next(), next()),
        _ => Command::Traceback(next()),
    };
    if options.cumulative && options.key == KeyType::Traceback {
        return Err(usage(
            "--cumulative works with --key filename or lineno, not traceback",
        ));
    }
    Ok(Request::Report(options))
}

fn open(path: &PathBuf, options: &Options) -> Result<Snapshot, CliError> {
    let mut snapshot = files::load(path).map_err(CliError::File)?;
    if let Some(elf) = &options.elf {
        let mut resolver =
            ElfResolver::open(elf, 0).map_err(|e| CliError::Failed(e.to_string()))?;
        snapshot.resolve_addresses(&mut resolver);
    }
    if !options.filters.is_empty() {
        snapshot = snapshot.filter_traces(&options.filters);
    }
    Ok(snapshot)
}

fn take_limit<T>(items: Vec<T>, limit: usize) -> impl Iterator<Item = T> {
    let n = if limit == 0 { items.len() } else { limit };
    items.into_iter().take(n)
}

/// Runs the command line `args` (without the program name), writing the report to `out`.
pub fn run(args: Vec<String>, out: &mut dyn Write) -> Result<(), CliError> {
    let write_err = |e: std::io::Error| CliError::Failed(format!("cannot write the report: {e}"));
    let options = match parse(args)? {
        Request::Report(options) => options,
        Request::Help => return writeln!(out, "{USAGE}").map_err(write_err),
        Request::Version => {
            return writeln!(out, "tracemalloc {}", env!("CARGO_PKG_VERSION")).map_err(write_err)
        }
    };
    match &options.command {
        Command::Stats(path) => {
            let snapshot = open(path, &options)?;
            let stats = snapshot
                .statistics(options.key, options.cumulative)
                .map_err(|e| usage(e.to_string()))?;
            if stats.is_empty() {
                writeln!(out, "no traces in {} (after filters)", path.display())
                    .map_err(write_err)?;
            }
            for stat in take_limit(stats, options.limit) {
                writeln!(out, "{stat}").map_err(write_err)?;
            }
        }
        Command::Compare(old, new) => {
            let old_snapshot = open(old, &options)?;
            let new_snapshot = open(new, &options)?;
            let diffs = new_snapshot
                .compare_to(&old_snapshot, options.key, options.cumulative)
                .map_err(|e| usage(e.to_string()))?;
            if diffs.is_empty() {
                writeln!(out, "no traces in either snapshot (after filters)").map_err(write_err)?;
            }
            for diff in take_limit(diffs, options.limit) {
                writeln!(out, "{diff}").map_err(write_err)?;
            }
        }
        Command::Traceback(path) => {
            let snapshot = open(path, &options)?;
            let stats = snapshot
                .statistics(KeyType::Traceback, false)
                .map_err(|e| usage(e.to_string()))?;
            if stats.is_empty() {
                writeln!(out, "no traces in {} (after filters)", path.display())
                    .map_err(write_err)?;
            }
            let mut sources = SourceLines::default();
            for (i, stat) in take_limit(stats, options.limit).enumerate() {
                writeln!(
                    out,
                    "#{}: {} memory blocks: {}",
                    i + 1,
                    stat.count,
                    tracemalloc_core::format_size(stat.size as f64, false)
                )
                .map_err(write_err)?;
                for line in sources.format(&stat.traceback, None) {
                    writeln!(out, "{line}").map_err(write_err)?;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn patterns_take_a_trailing_line_number() {
        let f = parse_pattern(true, "src/*.rs:42");
        assert_eq!(f.lineno, Some(42));
        assert_eq!(f.filename_pattern, "src/*.rs");
        let f = parse_pattern(false, "C:\\x");
        assert_eq!(f.lineno, None);
    }

    #[test]
    fn unknown_flags_and_bad_values_are_usage_errors() {
        for bad in [
            "stats a --frobnicate",
            "stats a --limit ten",
            "stats a --key module",
            "stats",
            "compare a",
            "frob a",
            "stats a --key traceback --cumulative",
        ] {
            let err = parse(args(bad)).map(|_| ()).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{bad}: {err}");
        }
    }

    #[test]
    fn a_misplaced_or_unknown_command_is_named_as_such() {
        for (bad, says) in [
            (
                "frob a",
                "unknown command \"frob\" (expected stats, compare or traceback)",
            ),
            (
                "--key lineno stats f",
                "the command (stats, compare or traceback) comes first",
            ),
            ("", "no command given (stats, compare or traceback)"),
        ] {
            let err = parse(args(bad)).map(|_| ()).unwrap_err();
            assert!(err.to_string().contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn help_and_version_print_and_succeed() {
        for (asked, says) in [
            ("--help", "--key defaults to lineno"),
            ("-h", "usage: tracemalloc stats FILE"),
            (
                "--version",
                concat!("tracemalloc ", env!("CARGO_PKG_VERSION")),
            ),
            ("stats f --help", "usage: tracemalloc"),
        ] {
            let mut out = Vec::new();
            run(args(asked), &mut out).unwrap();
            assert!(String::from_utf8(out).unwrap().contains(says), "{asked}");
        }
    }

    #[test]
    fn defaults_are_lineno_and_ten() {
        let Request::Report(o) = parse(args("stats f")).unwrap() else {
            panic!("not a report");
        };
        assert_eq!((o.key, o.limit, o.cumulative), (KeyType::Lineno, 10, false));
        assert_eq!(o.command, Command::Stats(PathBuf::from("f")));
    }
}
