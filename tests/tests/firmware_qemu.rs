//! End to end on a microcontroller: builds the example firmware, runs it in QEMU
//! (`ci/firmware.sh`), compares its decoded defmt log with the golden file, then renders the
//! snapshots it wrote through semihosting with the `tracemalloc` CLI against the firmware's ELF
//! and checks that the leaking line is the top site and the top growth site.
//!
//! Needs qemu-system-arm, arm-none-eabi-size, defmt-print and the thumbv6m/thumbv7m targets
//! (`ci/install.sh`). Set `TRACEMALLOC_SKIP_QEMU=1` to skip it on a machine without them, and
//! `TRACEMALLOC_BLESS=1` to rewrite the golden file after an intended change.

use std::path::{Path, PathBuf};
use std::process::Command;

use tracemalloc_core::build_id::Hex;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The decoded log with what varies between builds masked: frame addresses.
fn stable_part(log: &str) -> String {
    let mut out = String::new();
    for line in log.lines() {
        match line.find("frames=[") {
            Some(at) => {
                out.push_str(&line[..at]);
                out.push_str("frames=[..]");
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// The number after `key=` in `line`.
fn field(line: &str, key: &str) -> u64 {
    let rest = &line[line
        .find(&format!("{key}="))
        .unwrap_or_else(|| panic!("no {key} in {line}"))
        + key.len()
        + 1..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().unwrap()
}

/// `src/main.rs:N` of the firmware line marked as the leak.
fn leak_site() -> String {
    let source =
        std::fs::read_to_string(root().join("adapter-embedded/firmware/src/main.rs")).unwrap();
    let line = source
        .lines()
        .position(|l| l.contains("// the leak:"))
        .expect("the firmware marks its leaking line")
        + 1;
    format!("src/main.rs:{line}")
}

fn cli(args: &[&str]) -> String {
    let mut out = Vec::new();
    tracemalloc::cli::run(args.iter().copied(), &mut out)
        .unwrap_or_else(|e| panic!("tracemalloc CLI: {e}"));
    String::from_utf8(out).unwrap()
}

/// The error the CLI ends `args` with.
fn cli_error(args: &[&str]) -> String {
    let mut out = Vec::new();
    match tracemalloc::cli::run(args.iter().copied(), &mut out) {
        Ok(()) => panic!("{args:?} succeeded:\n{}", String::from_utf8_lossy(&out)),
        Err(e) => e.to_string(),
    }
}

/// The first line of `compare OLD NEW --key lineno` with `elfs` as `--elf` files: the top
/// growth site.
fn top_growth(old: &str, new: &str, elfs: &[&str]) -> String {
    let mut args = vec!["compare", old, new, "--key", "lineno"];
    for elf in elfs {
        args.extend(["--elf", elf]);
    }
    let out = cli(&args);
    out.lines().next().unwrap_or_default().to_owned()
}

#[test]
fn firmware_in_qemu_reports_the_leaking_line_as_top_growth_site() {
    if std::env::var_os("TRACEMALLOC_SKIP_QEMU").is_some() {
        eprintln!("skipped: TRACEMALLOC_SKIP_QEMU is set");
        return;
    }
    let root = root();
    let out = root.join("target/firmware-test");
    let status = Command::new("bash")
        .arg(root.join("ci/firmware.sh"))
        .env("OUT", &out)
        .status()
        .expect("bash runs ci/firmware.sh");
    let log = std::fs::read_to_string(out.join("log.txt")).unwrap_or_default();
    assert!(status.success(), "ci/firmware.sh failed:\n{log}");

    // 1. The device's own report, as users see it in the defmt log.
    let golden_path = root.join("adapter-embedded/firmware/expected/log.out");
    let actual = stable_part(&log);
    if std::env::var_os("TRACEMALLOC_BLESS").is_some() {
        std::fs::create_dir_all(golden_path.parent().unwrap()).unwrap();
        std::fs::write(&golden_path, &actual).unwrap();
    }
    let golden = std::fs::read_to_string(&golden_path).unwrap();
    assert_eq!(
        actual,
        golden,
        "decoded defmt log differs from {}",
        golden_path.display()
    );

    let check = log.lines().find(|l| l.contains("check: traced=")).unwrap();
    let (traced, requested, used) = (
        field(check, "traced"),
        field(check, "requested"),
        field(check, "used"),
    );
    assert_eq!(
        traced, requested,
        "traced bytes are the bytes the firmware requested"
    );
    assert!(
        traced <= used,
        "traced bytes never exceed the heap's used(): {check}"
    );
    assert!(log.contains("check: passed"));
    assert!(
        log.contains("45 interrupt allocations"),
        "SysTick allocated: {log}"
    );
    let growth = log
        .lines()
        .skip_while(|l| !l.contains("by growth since baseline"))
        .nth(1)
        .unwrap();
    assert!(
        growth.contains("(+2560) count=40 (+40)"),
        "the outbox payloads grow most: {growth}"
    );

    // 2. The host's report of the dumped snapshots, resolved with the firmware's debug info.
    let elf = out.join("firmware.elf");
    let (elf, snapshot, baseline) = (
        elf.to_str().unwrap(),
        out.join("snapshot.tmsnap"),
        out.join("baseline.tmsnap"),
    );
    let leak = leak_site();
    let stats = cli(&[
        "stats",
        snapshot.to_str().unwrap(),
        "--elf",
        elf,
        "--key",
        "lineno",
    ]);
    let top = stats.lines().next().unwrap_or_default();
    // The path is relative to the workspace the ELF sits in, so only its end is fixed.
    let (site, rest) = top.split_once(": ").unwrap_or_default();
    assert!(
        site.ends_with(&leak) && rest.starts_with("size=2880 B, count=45"),
        "top site is the leak:\n{stats}"
    );
    let top = top_growth(
        baseline.to_str().unwrap(),
        snapshot.to_str().unwrap(),
        &[elf],
    );
    let (site, rest) = top.split_once(": ").unwrap_or_default();
    assert!(
        site.ends_with(&leak) && rest.starts_with("size=2880 B (+2560 B), count=45 (+40)"),
        "top growth site is the leak: {top}"
    );

    // 3. The snapshots name the firmware's build, read from its own flash: the debug info of
    // another build (the same file under another build id) is refused, and a comparison across
    // two builds takes each snapshot's own.
    let (elf_build, _) =
        tracemalloc_tests::build_id_in(&std::fs::read(elf).unwrap()).expect("linked with one");
    let mut written = tracemalloc::load(&snapshot).unwrap();
    assert_eq!(written.build_id, elf_build);
    // The tracer's memory as the device counts it, per-site totals included.
    let counted = log.lines().find(|l| l.contains("tracer memory=")).unwrap();
    assert_eq!(written.tracer_memory, field(counted, "tracer memory"));
    let info = cli(&["info", snapshot.to_str().unwrap()]);
    assert!(
        info.contains(&format!("build id:        {}\n", Hex(&elf_build))),
        "{info}"
    );
    let other = out.join("firmware-other-build.elf");
    tracemalloc_tests::copy_as_another_build(elf.as_ref(), &other, Some(!elf_build[0]));
    let other = other.to_str().unwrap();
    let err = cli_error(&["stats", snapshot.to_str().unwrap(), "--elf", other]);
    assert!(err.contains("was written by firmware build"), "{err}");
    written.build_id = tracemalloc_tests::build_id_in(&std::fs::read(other).unwrap())
        .unwrap()
        .0;
    let later_build = out.join("snapshot-other-build.tmsnap");
    tracemalloc::dump(&written, &later_build).unwrap();
    let later_build = later_build.to_str().unwrap();
    let baseline = baseline.to_str().unwrap();
    let top = top_growth(baseline, later_build, &[other, elf]);
    assert!(
        top.contains(&leak) && top.contains("(+2560 B)"),
        "each snapshot named by its own build: {top}"
    );
    // Across the first build with ids: the older snapshot names none (as a version 2 file),
    // and takes the one file no other snapshot claims; given only the newer build's, it is
    // refused rather than named with that build's lines.
    let mut unnamed = tracemalloc::load(baseline).unwrap();
    unnamed.build_id.clear();
    let unnamed_path = out.join("baseline-no-build-id.tmsnap");
    tracemalloc::dump(&unnamed, &unnamed_path).unwrap();
    let unnamed_path = unnamed_path.to_str().unwrap();
    let top = top_growth(unnamed_path, later_build, &[other, elf]);
    assert!(
        top.contains(&leak) && top.contains("(+2560 B)"),
        "the snapshot without a build id takes the file no other claims: {top}"
    );
    let err = cli_error(&["compare", unnamed_path, later_build, "--elf", other]);
    assert!(
        err.contains("each --elf file is the build another snapshot names"),
        "{err}"
    );

    // 4. A build's stripped copy (what is flashed) beside its file with debug info, in either
    // order: the one with lines names the addresses, and the stripped one alone is told so.
    let stripped = out.join("firmware-stripped.elf");
    let status = Command::new("arm-none-eabi-objcopy")
        .args(["--strip-debug", elf, stripped.to_str().unwrap()])
        .status()
        .expect("arm-none-eabi-objcopy runs (ci/install.sh installs it)");
    assert!(status.success());
    let stripped = stripped.to_str().unwrap();
    for elfs in [[stripped, elf], [elf, stripped]] {
        let top = top_growth(baseline, snapshot.to_str().unwrap(), &elfs);
        assert!(
            top.contains(&leak) && top.contains("(+2560 B)"),
            "{elfs:?}: {top}"
        );
        // The snapshot without an id takes the copies of the one build no other claims.
        let top = top_growth(unnamed_path, later_build, &[other, elfs[0], elfs[1]]);
        assert!(
            top.contains(&leak) && top.contains("(+2560 B)"),
            "{elfs:?}: {top}"
        );
    }
    let err = cli_error(&["stats", snapshot.to_str().unwrap(), "--elf", stripped]);
    assert!(err.contains("was its debug info stripped?"), "{err}");
    let err = cli_error(&[
        "stats",
        snapshot.to_str().unwrap(),
        "--elf",
        stripped,
        "--elf",
        stripped,
    ]);
    assert!(
        err.contains(" have a source line for none of the ")
            && err.ends_with(
                "they are the build that wrote the snapshot: was their debug info stripped?"
            ),
        "{err}"
    );
}
