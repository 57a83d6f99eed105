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
