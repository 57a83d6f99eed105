//! The `tracemalloc` command: reports on snapshot files, as the Python module's statistics,
//! `compare_to` and `Traceback.format()` print them.
//!
//! ```text
//! tracemalloc stats FILE [--key filename|lineno|traceback] [--cumulative] [--limit N]
//! tracemalloc compare OLD NEW [same options]
//! tracemalloc traceback FILE [--limit N]
//! tracemalloc info FILE        what the file holds: counters, limits, sampling, build id
//!   filters: --include GLOB[:LINE] --exclude GLOB[:LINE] --all-frames --domain N
//!            --exclude-domain N   (Python's filters: a trace any --include or --domain
//!            takes and no --exclude or --exclude-domain does)
//!   symbols: --elf FIRMWARE   resolve device addresses with the firmware's debug info (once
//!                             per build: each snapshot takes the one of the build it names)
//!   --        every argument after it is a file
//! ```
//!
//! `--help` (or `-h`) prints the usage and `--version` (or `-V`) the version, anywhere before
//! `--` (after which every argument is a file) unless an earlier argument is wrong. Every failure is one line on stderr naming the problem and a non-zero exit status: 2
//! for a bad command line, 1 for a file that cannot be used or a report that cannot be written.
//! A reader that goes away before the end (`tracemalloc ... | head`) is no failure: the binary
//! exits 0 quietly ([`CliError::is_closed_pipe`]). Control characters from the files, in names
//! and source lines, are printed escaped (`\u{1b}`): a snapshot cannot drive the terminal.

use std::ffi::OsString;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use tracemalloc_core::build_id::Hex;
use tracemalloc_core::sampling::scaled_total;
use tracemalloc_core::{DomainFilter, Filter, KeyType, Resolver, Snapshot, TraceFilter};

use crate::files::{self, Accept, FileError};
use crate::headroom;
use crate::printable::{self, Printable};
use crate::source::SourceLines;
use crate::symbolize::{self, ElfResolver};

const USAGE: &str = "usage: tracemalloc stats FILE | compare OLD NEW | traceback FILE | info FILE \
[--key filename|lineno|traceback] [--cumulative] [--limit N] [--include GLOB[:LINE]] \
[--exclude GLOB[:LINE]] [--all-frames] [--domain N] [--exclude-domain N] [--elf FIRMWARE]...
  --key defaults to lineno, --limit to 10 (0: all); --elf once per firmware build;
  after --, every argument is a file; --version prints the version";
const COMMANDS: &str = "stats, compare, traceback or info";

/// What went wrong, with the exit status it maps to.
#[derive(Debug)]
pub enum CliError {
    /// The command line is wrong (exit status 2).
    Usage(String),
    /// A file cannot be used (exit status 1).
    File(FileError),
    /// The report cannot be written (exit status 1; [`CliError::is_closed_pipe`] tells the
    /// reader going away, as `| head` does, which is no failure).
    Output(std::io::Error),
    /// Anything else that stops the report (exit status 1).
    Failed(String),
}

impl CliError {
    /// The process exit status for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Usage(_) => 2,
            CliError::File(_) | CliError::Output(_) | CliError::Failed(_) => 1,
        }
    }

    /// Whether the report's reader went away before the end (`tracemalloc ... | head`).
    pub fn is_closed_pipe(&self) -> bool {
        matches!(self, CliError::Output(e) if e.kind() == std::io::ErrorKind::BrokenPipe)
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Usage(m) => write!(f, "{m} (tracemalloc --help shows the usage)"),
            CliError::File(e) => write!(f, "{e}"),
            CliError::Output(e) => write!(f, "cannot write the report: {e}"),
            CliError::Failed(m) => f.write_str(m),
        }
    }
}

#[derive(Debug, PartialEq)]
enum Command {
    Stats(PathBuf),
    Compare(PathBuf, PathBuf),
    Traceback(PathBuf),
    Info(PathBuf),
}

#[derive(Debug)]
struct Options {
    command: Command,
    key: KeyType,
    cumulative: bool,
    limit: usize,
    filters: Vec<TraceFilter>,
    all_frames: bool,
    /// One firmware file per build the snapshots come from.
    elf: Vec<PathBuf>,
}

fn usage(message: impl Into<String>) -> CliError {
    CliError::Usage(message.into())
}

/// The value after `flag`, which must be text.
fn text_value(flag: &str, value: Option<OsString>) -> Result<String, CliError> {
    value
        .ok_or_else(|| usage(format!("{flag} needs a value")))?
        .into_string()
        .map_err(|value| usage(format!("{flag}: not UTF-8 text: {value:?}")))
}

fn parse_number<T: std::str::FromStr>(flag: &str, value: Option<OsString>) -> Result<T, CliError> {
    let value = text_value(flag, value)?;
    value
        .parse()
        .map_err(|_| usage(format!("{flag}: not a number, or out of range: {value:?}")))
}

/// `GLOB[:LINE]`: a trailing `:digits` is the line.
fn parse_pattern(flag: &str, value: &str) -> Result<Filter, CliError> {
    let inclusive = flag == "--include";
    if let Some((glob, line)) = value.rsplit_once(':') {
        if !line.is_empty() && line.bytes().all(|b| b.is_ascii_digit()) {
            let line = line
                .parse()
                .map_err(|_| usage(format!("{flag}: line number out of range: {line}")))?;
            return Ok(Filter::new(inclusive, glob).with_lineno(line));
        }
    }
    Ok(Filter::new(inclusive, value))
}

/// What the command line asks for.
#[derive(Debug)]
enum Request {
    Report(Options),
    Help,
    Version,
}

/// The options, or what else was asked for.
fn parse(args: Vec<OsString>) -> Result<Request, CliError> {
    let mut args = args.into_iter();
    let command = args
        .next()
        .ok_or_else(|| usage(format!("no command given ({COMMANDS})")))?;
    let command = command.to_string_lossy().into_owned();
    match command.as_str() {
        "-h" | "--help" => return Ok(Request::Help),
        "-V" | "--version" => return Ok(Request::Version),
        "stats" | "compare" | "traceback" | "info" => {}
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
        elf: Vec::new(),
    };
    let mut patterns = Vec::new();
    // Flags that take one value: given twice, which was meant is a guess, so neither is taken.
    let mut seen_key = false;
    let mut seen_limit = false;
    let once = |flag: &str, seen: &mut bool| {
        if std::mem::replace(seen, true) {
            Err(usage(format!("{flag} given twice")))
        } else {
            Ok(())
        }
    };
    while let Some(arg) = args.next() {
        let Some(flag) = arg.to_str().filter(|a| a.starts_with('-') && a.len() > 1) else {
            positional.push(PathBuf::from(arg)); // a file: any bytes the system allows
            continue;
        };
        match flag {
            "--" => {
                positional.extend(args.by_ref().map(PathBuf::from)); // files named `-…`
                break;
            }
            "--key" => {
                once(flag, &mut seen_key)?;
                let value = text_value(flag, args.next())?;
                options.key = value.parse().map_err(|_| {
                    usage(format!(
                        "--key: unknown key type {value:?} (filename, lineno or traceback)"
                    ))
                })?;
            }
            "--cumulative" => options.cumulative = true,
            "--limit" => {
                once(flag, &mut seen_limit)?;
                options.limit = parse_number(flag, args.next())?;
            }
            "--include" | "--exclude" => {
                let value = text_value(flag, args.next())?;
                patterns.push(parse_pattern(flag, &value)?);
            }
            "--all-frames" => options.all_frames = true,
            "--domain" | "--exclude-domain" => {
                let domain = parse_number(flag, args.next())?;
                options.filters.push(TraceFilter::Domain(DomainFilter::new(
                    flag == "--domain",
                    domain,
                )));
            }
            "--elf" => {
                let value = args.next().ok_or_else(|| usage("--elf needs a file"))?;
                options.elf.push(PathBuf::from(value));
            }
            "-h" | "--help" => return Ok(Request::Help),
            "-V" | "--version" => return Ok(Request::Version),
            _ => return Err(usage(format!("unknown option {flag:?}"))),
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
        "info" => Command::Info(next()),
        _ => Command::Traceback(next()),
    };
    // An option the command would ignore: the user meant something it does not do.
    let ignored = match options.command {
        Command::Traceback(_) => [("--key", seen_key), ("--cumulative", options.cumulative)]
            .into_iter()
            .find(|&(_, given)| given),
        Command::Info(_) => [
            ("--key", seen_key),
            ("--cumulative", options.cumulative),
            ("--limit", seen_limit),
        ]
        .into_iter()
        .find(|&(_, given)| given),
        Command::Stats(_) | Command::Compare(..) => None,
    };
    if let Some((flag, _)) = ignored {
        return Err(usage(format!("{flag} does not apply to {command}")));
    }
    if options.cumulative && options.key == KeyType::Traceback {
        return Err(usage(
            "--cumulative works with --key filename or lineno, not traceback",
        ));
    }
    Ok(Request::Report(options))
}

/// A firmware file named by `--elf`, opened once for every snapshot of the command.
struct Firmware {
    path: PathBuf,
    /// Its GNU build id, if it has one and it can be read.
    build_id: Result<Option<Vec<u8>>, String>,
    resolver: ElfResolver,
}

impl Firmware {
    /// Opens `path`, naming source paths from `roots` (those of every `--elf` file).
    fn open(path: &Path, roots: Vec<String>) -> Result<Firmware, CliError> {
        // Told apart before the symbolizer maps it: a FIFO would block, a device never end.
        let file = files::open_checked(path, Accept::Regular).map_err(|source| {
            CliError::File(FileError::Io {
                path: path.display().to_string(),
                source,
            })
        })?;
        if !symbolize::is_elf(&file) {
            return Err(CliError::Failed(format!(
                "{}: not an ELF file (--elf takes the firmware's ELF file, with its debug info)",
                path.display()
            )));
        }
        let resolver = ElfResolver::open_named_from(path, 0, roots)
            .map_err(|e| CliError::Failed(e.to_string()))?;
        Ok(Firmware {
            path: path.to_owned(),
            build_id: symbolize::build_id_of(&file),
            resolver,
        })
    }

    fn is_build(&self, build_id: &[u8]) -> bool {
        matches!(&self.build_id, Ok(Some(id)) if id == build_id)
    }

    /// Which build this file is, for messages.
    fn describe(&self) -> String {
        match &self.build_id {
            Ok(Some(id)) => format!("{} is build {}", self.path.display(), Hex(id)),
            Ok(None) => format!("{} is a file without a build id", self.path.display()),
            Err(e) => format!(
                "{} is a file whose build id cannot be read ({e})",
                self.path.display()
            ),
        }
    }
}

/// The `--elf` files that may name the raw addresses of `snapshot` (read from `path`), as
/// indices into `firmwares`, in argument order: those of the build the snapshot says wrote it
/// (a stripped copy and the file with debug info may both be given). A snapshot that does not
/// say takes the one build that is not the build another snapshot of the command names
/// (`claimed`): in a comparison across the first build with ids, the older snapshot has none.
/// Another build's file is refused: its lines would look right and be wrong.
fn firmwares_for(
    firmwares: &[Firmware],
    snapshot: &Snapshot,
    path: &Path,
    claimed: &[Vec<u8>],
) -> Result<Vec<usize>, CliError> {
    if snapshot.build_id.is_empty() {
        let free: Vec<usize> = (0..firmwares.len())
            .filter(|&i| !claimed.iter().any(|id| firmwares[i].is_build(id)))
            .collect();
        // Several files of one known build are that build's copies.
        let one_build = match free.first().map(|&i| &firmwares[i].build_id) {
            Some(Ok(Some(id))) => free.iter().all(|&i| firmwares[i].is_build(id)),
            _ => free.len() == 1,
        };
        return match free.len() {
            0 => Err(CliError::Failed(format!(
                "{} does not say which firmware build wrote it, and each --elf file is the build \
                 another snapshot names: give its own --elf too",
                path.display()
            ))),
            _ if one_build => Ok(free),
            _ if claimed.is_empty() => Err(CliError::Failed(format!(
                "{} does not say which firmware build wrote it, so it takes one --elf file, or \
                 copies of one build that carry its build id",
                path.display()
            ))),
            _ => Err(CliError::Failed(format!(
                "{} does not say which firmware build wrote it: give one --elf file for it (or \
                 copies of one build that carry its build id), beside those of the builds the \
                 other snapshot names",
                path.display()
            ))),
        };
    }
    let of_build: Vec<usize> = (0..firmwares.len())
        .filter(|&i| firmwares[i].is_build(&snapshot.build_id))
        .collect();
    if !of_build.is_empty() {
        return Ok(of_build);
    }
    let given: Vec<String> = firmwares.iter().map(Firmware::describe).collect();
    Err(CliError::Failed(format!(
        "{} was written by firmware build {}, but {}: \
         give --elf the firmware that wrote the snapshot",
        path.display(),
        Hex(&snapshot.build_id),
        given.join(", ")
    )))
}

/// Names the raw addresses of `snapshot` (read from `path`) with the first of `candidates`
/// that has a source line for any of them; refused when none has.
fn resolve_with(
    snapshot: &mut Snapshot,
    path: &Path,
    firmwares: &mut [Firmware],
    candidates: &[usize],
) -> Result<(), CliError> {
    // Each file but the last is asked first, address by address until one has a line: a
    // stripped copy names its functions, and its names would stay if it resolved in place.
    let raw = if candidates.len() > 1 {
        snapshot.raw_addresses()
    } else {
        Vec::new()
    };
    let Some((&last, others)) = candidates.split_last() else {
        return Ok(()); // `firmwares_for` gives at least one
    };
    let at = others
        .iter()
        .copied()
        .find(|&at| {
            let mut frames = Vec::new();
            let resolver = &mut firmwares[at].resolver;
            let named = raw.iter().any(|&address| {
                frames.clear();
                resolver.frames_at(address, &mut frames);
                frames.iter().any(|f| f.lineno != 0)
            });
            if !named {
                resolver.forget_lookups(); // every address, remembered for nothing
            }
            named
        })
        .unwrap_or(last);
    let firmware = &mut firmwares[at];
    let (looked_up, with_lines) = snapshot
        .resolve_raw_addresses_within(&mut firmware.resolver, headroom::for_one_step())
        .map_err(|over| {
            let doing = format!("naming its addresses with {}", firmware.path.display());
            CliError::Failed(format!(
                "{}: {}",
                path.display(),
                headroom::refusal(&doing, over.limit)
            ))
        })?;
    if looked_up == 0 || with_lines > 0 {
        return Ok(());
    }
    let one = candidates.len() == 1;
    let why = match (snapshot.build_id.is_empty(), one) {
        (true, true) => "is it the firmware that wrote the snapshot?",
        (true, false) => "are they the firmware that wrote the snapshot?",
        (false, true) => "it is the build that wrote the snapshot: was its debug info stripped?",
        (false, false) => {
            "they are the build that wrote the snapshot: was their debug info stripped?"
        }
    };
    let mut files: Vec<String> = candidates
        .iter()
        .map(|&at| firmwares[at].path.display().to_string())
        .collect();
    let files = match files.pop() {
        Some(last) if !files.is_empty() => format!("{} and {last}", files.join(", ")),
        last => last.unwrap_or_default(),
    };
    Err(CliError::Failed(format!(
        "{files} {} a source line for none of the {looked_up} code addresses of {}: {why}",
        if one { "has" } else { "have" },
        path.display()
    )))
}

fn load(path: &Path) -> Result<Snapshot, CliError> {
    files::load(path).map_err(CliError::File)
}

/// The one snapshot of a command, loaded and prepared.
fn open(
    path: &PathBuf,
    options: &Options,
    firmwares: &mut [Firmware],
) -> Result<Snapshot, CliError> {
    let mut snapshots = [load(path)?];
    prepare(&mut snapshots, &[path], options, firmwares)?;
    let [snapshot] = snapshots;
    Ok(snapshot)
}

/// Prepares the command's `snapshots` (read from `paths`) for printing: names their raw
/// addresses with the `--elf` files, applies the filters and escapes the names.
fn prepare(
    snapshots: &mut [Snapshot],
    paths: &[&PathBuf],
    options: &Options,
    firmwares: &mut [Firmware],
) -> Result<(), CliError> {
    let claimed: Vec<Vec<u8>> = snapshots
        .iter()
        .map(|s| s.build_id.clone())
        .filter(|id| !id.is_empty())
        .collect();
    for (snapshot, path) in snapshots.iter_mut().zip(paths) {
        // Only a device's raw addresses: a host snapshot's frames were resolved when it was
        // taken, at load addresses the firmware's file does not know.
        if !firmwares.is_empty() && snapshot.has_raw_addresses() {
            let candidates = firmwares_for(firmwares, snapshot, path, &claimed)?;
            resolve_with(snapshot, path, firmwares, &candidates)?;
        }
        if !options.filters.is_empty() {
            *snapshot = snapshot.filter_traces(&options.filters);
        }
        // After the filters, which match the names as they are.
        printable::escape_names(snapshot);
    }
    Ok(())
}

/// What `snapshot` (read from `path`) holds, one fact a line: which firmware build wrote it
/// (for `--elf`), how it was traced, and its totals.
fn write_info(snapshot: &Snapshot, path: &Path, out: &mut dyn Write) -> std::io::Result<()> {
    let size = |bytes: u64| tracemalloc_core::format_size(bytes as f64, false);
    let blocks = |n: u64| format!("{n} block{}", if n == 1 { "" } else { "s" });
    let c = &snapshot.counters;
    // Saturating (interval 0: the sizes as they are): a forged file's may add up past `u64`.
    let traced = scaled_total(snapshot.traces.iter().map(|t| t.size), 0);
    writeln!(out, "file:            {}", path.display())?;
    writeln!(
        out,
        "traces:          {}, {}",
        blocks(snapshot.traces.len() as u64),
        size(traced)
    )?;
    writeln!(
        out,
        "traced memory:   {} when taken, peak {}",
        size(c.current),
        size(c.peak)
    )?;
    writeln!(
        out,
        "untraced:        {}, {}",
        blocks(c.untraced_blocks),
        size(c.untraced_bytes)
    )?;
    writeln!(
        out,
        "tracebacks:      {}, of up to {} frames",
        snapshot.tracebacks.len(),
        snapshot.traceback_limit
    )?;
    if snapshot.has_raw_addresses() {
        writeln!(out, "code addresses:  raw: --elf names them")?;
    }
    match snapshot.sample_interval {
        0 => writeln!(out, "sampling:        none, every block traced")?,
        interval => writeln!(
            out,
            "sampling:        one block per {} on average: sizes are estimates",
            size(interval)
        )?,
    }
    writeln!(out, "tracer memory:   {}", size(snapshot.tracer_memory))?;
    match &snapshot.build_id[..] {
        [] => writeln!(out, "build id:        not recorded"),
        id => writeln!(out, "build id:        {}", Hex(id)),
    }
}

/// What a report of no traces adds when filters may have left them out.
fn filtered(options: &Options) -> &'static str {
    if options.filters.is_empty() {
        ""
    } else {
        " (after filters)"
    }
}

fn take_limit<T>(items: Vec<T>, limit: usize) -> impl Iterator<Item = T> {
    let n = if limit == 0 { items.len() } else { limit };
    items.into_iter().take(n)
}

/// Runs the command line `args` (without the program name), writing the report to `out`.
pub fn run<S: Into<OsString>>(
    args: impl IntoIterator<Item = S>,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let write_err = CliError::Output;
    let options = match parse(args.into_iter().map(Into::into).collect())? {
        Request::Report(options) => options,
        Request::Help => return writeln!(out, "{USAGE}").map_err(write_err),
        Request::Version => {
            return writeln!(out, "tracemalloc {}", env!("CARGO_PKG_VERSION")).map_err(write_err)
        }
    };
    // One line of one workspace reads alike whichever file names it: an older build's ELF kept
    // outside `target` would otherwise name it by its absolute path, and `compare` would show
    // a growing line as one site gone and a new one.
    let cwd = std::env::current_dir().ok();
    let roots = symbolize::roots_for(options.elf.iter().map(PathBuf::as_path), cwd);
    let mut firmwares = options
        .elf
        .iter()
        .map(|path| Firmware::open(path, roots.clone()))
        .collect::<Result<Vec<_>, _>>()?;
    let out = &mut Printable::new(out);
    match &options.command {
        Command::Stats(path) => {
            let snapshot = open(path, &options, &mut firmwares)?;
            let stats = snapshot
                .statistics(options.key, options.cumulative)
                .map_err(|e| usage(e.to_string()))?;
            if stats.is_empty() {
                writeln!(out, "no traces in {}{}", path.display(), filtered(&options))
                    .map_err(write_err)?;
            }
            for stat in take_limit(stats, options.limit) {
                writeln!(out, "{stat}").map_err(write_err)?;
            }
        }
        Command::Compare(old, new) => {
            let mut snapshots = [load(old)?, load(new)?];
            prepare(&mut snapshots, &[old, new], &options, &mut firmwares)?;
            let [old_snapshot, new_snapshot] = snapshots;
            let diffs = new_snapshot
                .compare_to(&old_snapshot, options.key, options.cumulative)
                .map_err(|e| usage(e.to_string()))?;
            if diffs.is_empty() {
                writeln!(out, "no traces in either snapshot{}", filtered(&options))
                    .map_err(write_err)?;
            }
            for diff in take_limit(diffs, options.limit) {
                writeln!(out, "{diff}").map_err(write_err)?;
            }
        }
        Command::Info(path) => {
            let snapshot = open(path, &options, &mut firmwares)?;
            write_info(&snapshot, path, out).map_err(write_err)?;
        }
        Command::Traceback(path) => {
            let snapshot = open(path, &options, &mut firmwares)?;
            let stats = snapshot
                .statistics(KeyType::Traceback, false)
                .map_err(|e| usage(e.to_string()))?;
            if stats.is_empty() {
                writeln!(out, "no traces in {}{}", path.display(), filtered(&options))
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
                sources
                    .write(&stat.traceback, None, out)
                    .map_err(write_err)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<OsString> {
        s.split_whitespace().map(OsString::from).collect()
    }

    #[test]
    fn patterns_take_a_trailing_line_number() {
        let f = parse_pattern("--include", "src/*.rs:42").unwrap();
        assert_eq!(f.lineno, Some(42));
        assert_eq!(f.filename_pattern, "src/*.rs");
        let f = parse_pattern("--exclude", "C:\\x").unwrap();
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
            "stats a --key filename --key lineno",
            "stats a --limit 3 --limit 4",
            "traceback a --key filename",
            "traceback a --cumulative",
            "info a --limit 3",
            "info a --key lineno",
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
                "unknown command \"frob\" (expected stats, compare, traceback or info)",
            ),
            (
                "--key lineno stats f",
                "the command (stats, compare, traceback or info) comes first",
            ),
            ("", "no command given (stats, compare, traceback or info)"),
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
            ("stats --limit 3 --version f", "tracemalloc "),
        ] {
            let mut out = Vec::new();
            run(args(asked), &mut out).unwrap();
            assert!(String::from_utf8(out).unwrap().contains(says), "{asked}");
        }
    }

    #[test]
    fn after_a_double_dash_every_argument_is_a_file() {
        let Request::Report(o) = parse(args("compare --limit 3 -- --old -new")).unwrap() else {
            panic!("not a report");
        };
        let files = (PathBuf::from("--old"), PathBuf::from("-new"));
        assert_eq!(o.command, Command::Compare(files.0, files.1));
        assert_eq!(o.limit, 3);
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
