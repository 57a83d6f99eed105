//! The `tracemalloc` command on snapshot files the tests write, good and bad.

use std::path::PathBuf;

use tracemalloc::cli::{run, CliError};
use tracemalloc::{Frame, Snapshot, Traceback};
use tracemalloc_core::snapshot::snapshot_from_traces;

fn tb(frames: &[(&str, u32)]) -> Traceback {
    Traceback::new(frames.iter().map(|&(f, l)| Frame::new(f, l)).collect())
}

/// A start snapshot and a later one in which `src/cache.rs:42` grew.
fn snapshots() -> (Snapshot, Snapshot) {
    let request = tb(&[("src/request.rs", 7), ("src/main.rs", 3)]);
    let cache = tb(&[("src/cache.rs", 42), ("src/main.rs", 5)]);
    let start = snapshot_from_traces(
        16,
        [
            (0, 1000, request.clone()),
            (0, 1000, request.clone()),
            (0, 512, cache.clone()),
        ],
    );
    let mut later: Vec<(u32, u64, Traceback)> = vec![(0, 1000, request.clone())];
    later.extend((0..3).map(|_| (0, 10_240, cache.clone())));
    (start, snapshot_from_traces(16, later))
}

fn temp(name: &str, bytes: &[u8]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tracemalloc-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn cli(args: &[&str]) -> Result<String, CliError> {
    let mut out = Vec::new();
    run(args.iter().map(|s| s.to_string()).collect(), &mut out)?;
    Ok(String::from_utf8(out).unwrap())
}

#[test]
fn stats_prints_python_lines_for_binary_and_json_files() {
    let (_, later) = snapshots();
    let binary = temp("later.tmsnap", &later.dump_bytes());
    let json = temp("later.json", later.to_json().as_bytes());
    for file in [&binary, &json] {
        let out = cli(&["stats", file.to_str().unwrap()]).unwrap();
        assert_eq!(
            out,
            "src/cache.rs:42: size=30.0 KiB, count=3, average=10.0 KiB\n\
             src/request.rs:7: size=1000 B, count=1, average=1000 B\n"
        );
    }
    let out = cli(&[
        "stats",
        binary.to_str().unwrap(),
        "--key",
        "filename",
        "--limit",
        "1",
    ])
    .unwrap();
    assert_eq!(
        out,
        "src/cache.rs:0: size=30.0 KiB, count=3, average=10.0 KiB\n"
    );
    let out = cli(&[
        "stats",
        binary.to_str().unwrap(),
        "--key",
        "filename",
        "--cumulative",
    ])
    .unwrap();
    assert!(
        out.starts_with("src/main.rs:0: size=31.0 KiB, count=4"),
        "{out}"
    );
}

#[test]
fn compare_names_the_growing_line_first() {
    let (start, later) = snapshots();
    let old = temp("start.tmsnap", &start.dump_bytes());
    let new = temp("later2.tmsnap", &later.dump_bytes());
    let out = cli(&["compare", old.to_str().unwrap(), new.to_str().unwrap()]).unwrap();
    let first = out.lines().next().unwrap();
    assert_eq!(
        first,
        "src/cache.rs:42: size=30.0 KiB (+29.5 KiB), count=3 (+2), average=10.0 KiB"
    );
    let out = cli(&[
        "compare",
        old.to_str().unwrap(),
        new.to_str().unwrap(),
        "--exclude",
        "src/cache.rs",
    ])
    .unwrap();
    assert!(!out.contains("cache.rs"), "{out}");
    let out = cli(&[
        "compare",
        old.to_str().unwrap(),
        new.to_str().unwrap(),
        "--include",
        "src/ma*.rs:5",
        "--all-frames",
    ])
    .unwrap();
    assert!(out.starts_with("src/cache.rs:42"), "{out}");
    assert!(!out.contains("request.rs"), "{out}");
}

#[test]
fn traceback_prints_frames_oldest_first() {
    let (_, later) = snapshots();
    let file = temp("later3.tmsnap", &later.dump_bytes());
    let out = cli(&["traceback", file.to_str().unwrap(), "--limit", "1"]).unwrap();
    assert_eq!(
        out,
        "#1: 3 memory blocks: 30.0 KiB\n  File \"src/main.rs\", line 5\n  File \"src/cache.rs\", line 42\n"
    );
}

#[test]
fn bad_files_and_flags_end_with_one_clear_error() {
    let (_, later) = snapshots();
    let bytes = later.dump_bytes();
    let truncated = temp("truncated.tmsnap", &bytes[..bytes.len() / 2]);
    let mut flipped_bytes = bytes.clone();
    let mid = flipped_bytes.len() / 2;
    flipped_bytes[mid] ^= 0x40;
    let flipped = temp("flipped.tmsnap", &flipped_bytes);
    let text = temp("notes.txt", b"hello");
    let bad_json = temp(
        "bad.json",
        b"{\"format\": \"tracemalloc-snapshot\", \"version\": 1, \"traces\": [",
    );
    let cases: Vec<(Vec<String>, i32, &str)> = vec![
        (
            vec!["stats".into(), "/nonexistent/x.tmsnap".into()],
            1,
            "No such file",
        ),
        (
            vec!["stats".into(), truncated.display().to_string()],
            1,
            "snapshot file damaged or cut short",
        ),
        (
            vec!["stats".into(), flipped.display().to_string()],
            1,
            "snapshot file damaged or cut short",
        ),
        (
            vec!["stats".into(), text.display().to_string()],
            1,
            "not a snapshot file",
        ),
        (
            vec!["stats".into(), bad_json.display().to_string()],
            1,
            ": invalid JSON snapshot: EOF",
        ),
        (
            vec!["stats".into(), text.display().to_string(), "--bogus".into()],
            2,
            "unknown option",
        ),
    ];
    for (args, code, message) in cases {
        let mut out = Vec::new();
        let err = run(args.clone(), &mut out).unwrap_err();
        assert_eq!(err.exit_code(), code, "{args:?}: {err}");
        assert!(err.to_string().contains(message), "{args:?}: {err}");
        assert!(out.is_empty(), "{args:?} printed a report");
    }
}
