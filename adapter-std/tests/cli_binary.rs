//! The installed binary: exit statuses and one-line errors.

use std::process::Command;

fn tracemalloc(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tracemalloc"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn a_missing_file_fails_with_status_1_and_names_it() {
    let out = tracemalloc(&["stats", "/nonexistent/snapshot.tmsnap"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("tracemalloc: /nonexistent/snapshot.tmsnap"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(out.stdout.is_empty());
}

#[test]
fn an_unknown_flag_fails_with_status_2_on_one_line() {
    let out = tracemalloc(&["stats", "x", "--frobnicate"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown option \"--frobnicate\""), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn help_prints_usage_and_succeeds() {
    let out = tracemalloc(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("usage: tracemalloc"));
}

/// `tracemalloc stats BIG --limit 0 | head`: the reader leaves early, and the tool ends quietly
/// with status 0 rather than a "broken pipe" error.
#[test]
fn a_reader_leaving_early_ends_the_report_quietly() {
    use std::io::Read;
    use tracemalloc::core::snapshot::snapshot_from_traces;
    use tracemalloc::{Frame, Traceback};
    // 20 000 sites: about a megabyte of report, far more than a pipe holds.
    let traces = (0..20_000u32).map(|i| {
        let frame = Frame::new(&format!("src/site_{i}.rs"), i + 1);
        (0, 64, Traceback::new(vec![frame]))
    });
    let file = std::env::temp_dir().join(format!("tracemalloc-pipe-{}.tmsnap", std::process::id()));
    std::fs::write(&file, snapshot_from_traces(16, traces).dump_bytes()).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tracemalloc"))
        .args(["stats", file.to_str().unwrap(), "--limit", "0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 64];
    child.stdout.take().unwrap().read_exact(&mut first).unwrap(); // then the reader closes
    let out = child.wait_with_output().unwrap();
    std::fs::remove_file(&file).unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// With stderr unwritable (`2>/dev/full`), the status still says what failed: no panic.
#[test]
#[cfg(target_os = "linux")]
fn an_unwritable_stderr_keeps_the_exit_status() {
    let full = std::fs::File::options()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tracemalloc"))
        .args(["stats", "/nonexistent/snapshot.tmsnap"])
        .stderr(full)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
}
