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

/// `stats` of `snapshot`, written to the file `name`, with this test binary as `--elf`: a file
/// with debug info, which knows no device's addresses.
fn stats_with_this_binary_as_elf(name: &str, snapshot: &Snapshot) -> Result<String, CliError> {
    let file = temp(name, &snapshot.dump_bytes());
    let exe = std::env::current_exe().unwrap();
    cli(&[
        "stats",
        file.to_str().unwrap(),
        "--elf",
        exe.to_str().unwrap(),
    ])
}

fn cli(args: &[&str]) -> Result<String, CliError> {
    let mut out = Vec::new();
    run(args.iter().copied(), &mut out)?;
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

/// `info` says what a file holds, one fact a line; for a device's snapshot, which build wrote
/// it (the `--elf` file it needs).
#[test]
fn info_says_what_a_file_holds() {
    let (_, mut later) = snapshots();
    later.counters.untraced_blocks = 2;
    later.counters.untraced_bytes = 100;
    later.tracer_memory = 4096;
    let file = temp("info.tmsnap", &later.dump_bytes());
    let out = cli(&["info", file.to_str().unwrap()]).unwrap();
    assert_eq!(
        out,
        format!(
            "file:            {}\n\
             traces:          4 blocks, 31.0 KiB\n\
             traced memory:   31.0 KiB when taken, peak 31.0 KiB\n\
             untraced:        2 blocks, 100 B\n\
             tracebacks:      2, of up to 16 frames\n\
             sampling:        none, every block traced\n\
             tracer memory:   4096 B\n\
             build id:        not recorded\n",
            file.display()
        )
    );
    let raw = Traceback::new(vec![Frame::unresolved(0x10)]);
    let mut device = snapshot_from_traces(8, [(0, 64, raw)]);
    device.addresses[0] = vec![0x10];
    device.build_id = vec![0xde, 0xad, 0xbe, 0xef];
    device.sample_interval = 512 * 1024;
    // Sizes that add up past u64, as only a forged file's do, saturate.
    let mut forged = device.clone();
    forged.traces.extend([forged.traces[0], forged.traces[0]]);
    forged.traces[1].size = u64::MAX;
    let file = temp("info-forged.tmsnap", &forged.dump_bytes());
    let out = cli(&["info", file.to_str().unwrap()]).unwrap();
    assert!(
        out.contains("traces:          3 blocks, 16777216 TiB"),
        "{out}"
    );
    let file = temp("info-device.tmsnap", &device.dump_bytes());
    let out = cli(&["info", file.to_str().unwrap()]).unwrap();
    for line in [
        "code addresses:  raw: --elf names them\n",
        "traces:          1 block, 64 B\n",
        "sampling:        one block per 512 KiB on average: sizes are estimates\n",
        "build id:        deadbeef\n",
    ] {
        assert!(out.contains(line), "{line}: {out}");
    }
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

/// A snapshot from elsewhere cannot drive the terminal: control characters in its file names
/// and in the source lines shown under them are printed escaped, and a newline in a name cannot
/// print a report line of its own.
#[test]
fn control_characters_from_files_are_printed_escaped() {
    let source = temp(
        "evil.rs",
        b"fn main() {\n    leak(); // \x1b]0;pwned\x07\x1b[2J\n}\n",
    );
    let evil = Traceback::new(vec![Frame::new(source.to_str().unwrap(), 2)]);
    let named = Traceback::new(vec![Frame::new("src/\x1b[31mred\n\u{9b}.rs", 7)]);
    let snapshot = snapshot_from_traces(16, [(0, 100, evil), (0, 10, named)]);
    let file = temp("evil.tmsnap", &snapshot.dump_bytes());
    let printed = |args: &[&str]| {
        let out = cli(args).unwrap();
        assert!(!out.chars().any(|c| c.is_control() && c != '\n'), "{out:?}");
        out
    };

    let stats = printed(&["stats", file.to_str().unwrap(), "--key", "traceback"]);
    assert_eq!(stats.lines().count(), 2, "{stats}");
    let out = printed(&["stats", file.to_str().unwrap()]);
    assert!(
        out.contains("src/\\u{1b}[31mred\\u{a}\\u{9b}.rs:7: size=10 B"),
        "{out}"
    );
    // Filters match the names as they are.
    let only = printed(&[
        "stats",
        file.to_str().unwrap(),
        "--include",
        "*red\n\u{9b}.rs",
    ]);
    assert_eq!(only.lines().count(), 1, "{only}");

    let traceback = printed(&["traceback", file.to_str().unwrap(), "--limit", "1"]);
    assert!(
        traceback.ends_with("    leak(); // \\u{1b}]0;pwned\\u{7}\\u{1b}[2J\n"),
        "{traceback}"
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

/// JSON as editors save it (a byte-order mark first) loads; JSON that is not UTF-8 is called
/// invalid JSON, not "not a snapshot file".
#[test]
fn json_files_with_a_bom_load_and_bad_utf8_is_named() {
    let (_, later) = snapshots();
    let mut with_bom = b"\xEF\xBB\xBF".to_vec();
    with_bom.extend_from_slice(later.to_json().as_bytes());
    let file = temp("bom.json", &with_bom);
    let out = cli(&["stats", file.to_str().unwrap()]).unwrap();
    assert!(out.starts_with("src/cache.rs:42: size=30.0 KiB"), "{out}");

    // The offset is the file's, byte-order mark included.
    for bom in [&b""[..], b"\xEF\xBB\xBF"] {
        let mut bad = bom.to_vec();
        bad.extend_from_slice(later.to_json().as_bytes());
        let at = bad.len() / 2;
        bad[at] = 0xFF;
        let file = temp("bad-utf8.json", &bad);
        let err = cli(&["stats", file.to_str().unwrap()]).unwrap_err();
        assert_eq!(err.exit_code(), 1);
        assert!(
            err.to_string()
                .ends_with(&format!("invalid JSON snapshot: byte {at} is not UTF-8")),
            "{err}"
        );
    }
}

/// Directories and devices named as snapshots, and anything but a regular file named as
/// firmware, end with one error at once, before the file is opened (a FIFO without a writer
/// would block, a device be read until memory ran out). A pipe is read as a snapshot: the
/// shell's `<(ssh host cat snap)` and `/dev/stdin`.
#[test]
#[cfg(unix)]
fn snapshots_come_from_regular_files_or_pipes_and_firmware_from_regular_files() {
    use std::os::unix::fs::OpenOptionsExt;
    let (_, later) = snapshots();
    let bytes = later.dump_bytes();
    let good = temp("good.tmsnap", &bytes);
    let fifo = good.with_file_name("a.fifo");
    let _ = std::fs::remove_file(&fifo);
    let name = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: `name` is a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o600) }, 0);
    let dir = std::env::temp_dir();
    let (fifo_name, good_name) = (fifo.to_str().unwrap(), good.to_str().unwrap());
    // A firmware file whose DWARF package, which the symbolizer would map by name, is the FIFO.
    let firmware = good.with_file_name("fw.elf");
    let package = good.with_file_name("fw.elf.dwp");
    for link in [&firmware, &package] {
        let _ = std::fs::remove_file(link);
    }
    std::os::unix::fs::symlink(std::env::current_exe().unwrap(), &firmware).unwrap();
    std::os::unix::fs::symlink(&fifo, &package).unwrap();
    for (args, says) in [
        (vec!["stats", "/dev/zero"], "not a regular file or a pipe"),
        (
            vec!["stats", dir.to_str().unwrap()],
            "not a regular file or a pipe",
        ),
        (
            vec!["stats", good_name, "--elf", fifo_name],
            "not a regular file",
        ),
        (
            vec!["stats", good_name, "--elf", "/dev/null"],
            "not a regular file",
        ),
        (
            vec!["stats", good_name, "--elf", firmware.to_str().unwrap()],
            "fw.elf.dwp: the DWARF package beside \
             /tmp/tracemalloc-cli-PID/fw.elf is not a regular file",
        ),
        // A regular file, but not an ELF file (a Mach-O file would send the symbolizer
        // through the `.dSYM` folders beside it, opening whatever is there).
        (
            vec!["stats", good_name, "--elf", good_name],
            "good.tmsnap: not an ELF file (--elf takes the firmware's ELF file, \
             with its debug info)",
        ),
    ] {
        let says = says.replace(
            "/tmp/tracemalloc-cli-PID",
            good.parent().unwrap().to_str().unwrap(),
        );
        // In a thread: a file that blocks must fail this test, not hang it.
        let (done, result) = std::sync::mpsc::channel();
        let owned: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        std::thread::spawn(move || {
            let args: Vec<&str> = owned.iter().map(String::as_str).collect();
            let _ = done.send(cli(&args).map_err(|e| (e.exit_code(), e.to_string())));
        });
        let Ok(outcome) = result.recv_timeout(std::time::Duration::from_secs(60)) else {
            // Let the blocked reader go, then fail.
            let _ = std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&fifo);
            panic!("{args:?} blocked");
        };
        let (code, err) = outcome.unwrap_err();
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(err.ends_with(&says), "{args:?}: {err}");
    }
    let writer = std::thread::spawn({
        let fifo = fifo.clone();
        move || std::fs::write(fifo, bytes).unwrap()
    });
    let out = cli(&["stats", fifo_name]).unwrap();
    writer.join().unwrap();
    assert!(out.starts_with("src/cache.rs:42: size=30.0 KiB"), "{out}");
    std::fs::remove_file(&fifo).unwrap();
}

/// A file that is neither form is refused from its first bytes, not read to its end (here a
/// sparse file of 64 GiB, which reading would take minutes and more memory than there is).
#[test]
fn a_file_of_neither_form_is_not_read_to_its_end() {
    let huge = temp("huge.bin", b"PK\x03\x04");
    std::fs::File::options()
        .write(true)
        .open(&huge)
        .unwrap()
        .set_len(64 << 30)
        .unwrap();
    let err = cli(&["stats", huge.to_str().unwrap()]).unwrap_err();
    assert!(
        err.to_string()
            .ends_with("not a snapshot file (neither the binary format nor JSON)"),
        "{err}"
    );
    std::fs::remove_file(&huge).unwrap();
}

/// A snapshot begins within its first 4 KiB: a file (or an endless pipe) of whitespace is not
/// read further, and a form feed, which JSON does not skip, begins neither form.
#[test]
fn whitespace_is_no_snapshot_beyond_the_first_bytes() {
    let (_, later) = snapshots();
    let json = later.to_json();
    for (name, prefix, loads) in [
        ("spaced.json", " ".repeat(4095), true),
        ("too-spaced.json", " ".repeat(4096), false),
        ("form-feed.json", "\x0c".to_owned(), false),
    ] {
        let file = temp(name, format!("{prefix}{json}").as_bytes());
        let result = cli(&["stats", file.to_str().unwrap()]);
        if loads {
            assert!(
                result.is_ok(),
                "{name}: {:?}",
                result.err().map(|e| e.to_string())
            );
        } else {
            let err = result.unwrap_err().to_string();
            assert!(
                err.ends_with("not a snapshot file (neither the binary format nor JSON)"),
                "{name}: {err}"
            );
        }
    }
}

/// `--elf` with a file that has no line for any of a device snapshot's addresses is refused as
/// the wrong firmware, rather than printing `<unknown>` lines.
#[test]
fn firmware_that_names_none_of_the_addresses_is_refused() {
    let raw = Traceback::new(vec![Frame::unresolved(0x10), Frame::unresolved(0x20)]);
    let mut device = snapshot_from_traces(8, [(0, 64, raw)]);
    device.addresses[0] = vec![0x10, 0x20];
    let err = stats_with_this_binary_as_elf("device.tmsnap", &device).unwrap_err();
    assert_eq!(err.exit_code(), 1);
    assert!(
        err.to_string()
            .contains("has a source line for none of the 2 code addresses of"),
        "{err}"
    );
}

/// A device snapshot names the build that wrote it: `--elf` with another build, or with a file
/// without a build id, is refused before any address is named; the same build goes on. With
/// several `--elf` files, each snapshot takes the one of its build.
#[test]
#[cfg(target_os = "linux")]
fn elf_of_another_build_is_refused() {
    use std::path::Path;
    use tracemalloc_core::build_id::Hex;

    let exe = std::env::current_exe().unwrap();
    let (this_build, _) = tracemalloc_tests::build_id_in(&std::fs::read(&exe).unwrap())
        .expect("Linux test binaries carry a GNU build id");
    let raw = Traceback::new(vec![Frame::unresolved(0x10)]);
    let mut device = snapshot_from_traces(8, [(0, 64, raw)]);
    device.addresses[0] = vec![0x10];
    device.build_id = vec![0xde, 0xad, 0xbe, 0xef];
    let err = stats_with_this_binary_as_elf("other-build.tmsnap", &device).unwrap_err();
    assert_eq!(err.exit_code(), 1);
    let expected = format!(
        "other-build.tmsnap was written by firmware build deadbeef, but {} is build {}: \
         give --elf the firmware that wrote the snapshot",
        exe.display(),
        Hex(&this_build)
    );
    assert!(err.to_string().ends_with(&expected), "{err}");

    // A snapshot with nothing left to name is not the file's business, whatever its build.
    let (_, mut resolved) = snapshots();
    resolved.build_id = device.build_id.clone();
    let out = stats_with_this_binary_as_elf("resolved.tmsnap", &resolved).unwrap();
    assert!(out.starts_with("src/cache.rs:42"), "{out}");

    // The same build passes, and meets the next check: none of these addresses has a line.
    device.build_id = this_build.clone();
    let snapshot = temp("same-build.tmsnap", &device.dump_bytes());
    let err = stats_with_this_binary_as_elf("same-build.tmsnap", &device).unwrap_err();
    let err = err.to_string();
    assert!(
        err.contains("has a source line for none of the 1 code addresses of ")
            && err.ends_with(
                "same-build.tmsnap: it is the build that wrote the snapshot: \
                 was its debug info stripped?"
            ),
        "{err}"
    );

    // A file without a build id cannot be the build the snapshot names, nor can another
    // build's, however many are given.
    let stripped = snapshot.with_file_name("no-build-id.elf");
    tracemalloc_tests::copy_as_another_build(&exe, &stripped, None);
    let other = snapshot.with_file_name("other-build.elf");
    tracemalloc_tests::copy_as_another_build(&exe, &other, Some(!this_build[0]));
    // `command` on `files`, with each of `elfs` as an `--elf`.
    let run_with = |command: &str, files: &[&Path], elfs: &[&Path]| {
        let mut args = vec![command.to_owned()];
        args.extend(files.iter().map(|f| f.to_str().unwrap().to_owned()));
        for elf in elfs {
            args.extend(["--elf".to_owned(), elf.to_str().unwrap().to_owned()]);
        }
        let mut out = Vec::new();
        run(args, &mut out).map(|()| String::from_utf8(out).unwrap())
    };
    let stats = |elfs: &[&Path]| run_with("stats", &[&snapshot], elfs);
    let err = stats(&[&stripped, &other]).unwrap_err().to_string();
    assert!(
        err.contains("no-build-id.elf is a file without a build id, ")
            && err.contains("other-build.elf is build ")
            && err.ends_with(": give --elf the firmware that wrote the snapshot"),
        "{err}"
    );
    // Given its build among others, the snapshot takes it (and meets the next check).
    let err = stats(&[&other, &exe]).unwrap_err().to_string();
    assert!(err.contains("was its debug info stripped?"), "{err}");
    // A snapshot that names no build needs the one file, not a choice.
    device.build_id.clear();
    std::fs::write(&snapshot, device.dump_bytes()).unwrap();
    let err = stats(&[&other, &exe]).unwrap_err().to_string();
    assert!(
        err.ends_with(
            "does not say which firmware build wrote it, so it takes one --elf file, or copies of \
             one build that carry its build id"
        ),
        "{err}"
    );
    // Beside a snapshot of this build, it may take the one other file, not one of two.
    let mut named = device.clone();
    named.build_id = this_build.clone();
    let named = temp("named-build.tmsnap", &named.dump_bytes());
    let compare = |elfs: &[&Path]| run_with("compare", &[&snapshot, &named], elfs);
    let err = compare(&[&exe, &other, &stripped]).unwrap_err().to_string();
    assert!(
        err.ends_with(
            "give one --elf file for it (or copies of one build that carry its build id), beside \
             those of the builds the other snapshot names"
        ),
        "{err}"
    );
    // With one: taken (this test binary names no device address, as the message says).
    let err = compare(&[&exe, &other]).unwrap_err().to_string();
    assert!(
        err.starts_with(&format!("{} has a source line for none", other.display())),
        "{err}"
    );
}

/// File names are whatever bytes the system allows; they are not text to be checked. (Linux:
/// macOS file systems refuse names that are not UTF-8.)
#[test]
#[cfg(target_os = "linux")]
fn file_names_need_not_be_utf8() {
    use std::os::unix::ffi::OsStrExt;
    let (_, later) = snapshots();
    let good = temp("good-name.tmsnap", &later.dump_bytes());
    let odd = good.with_file_name(std::ffi::OsStr::from_bytes(b"odd-\xFF.tmsnap"));
    std::fs::copy(&good, &odd).unwrap();
    let mut out = Vec::new();
    run(
        [std::ffi::OsString::from("stats"), odd.clone().into()],
        &mut out,
    )
    .unwrap();
    assert!(String::from_utf8(out)
        .unwrap()
        .starts_with("src/cache.rs:42"));
    // A pattern, though, is text.
    let bad_pattern = std::ffi::OsStr::from_bytes(b"\xFF*").to_owned();
    let args = [
        "stats".into(),
        odd.clone().into_os_string(),
        "--include".into(),
        bad_pattern,
    ];
    let err = run(args, &mut Vec::new()).unwrap_err();
    assert_eq!(err.exit_code(), 2, "{err}");
    std::fs::remove_file(&odd).unwrap();
}

/// `--elf` names a device's raw addresses and leaves a host snapshot's resolved frames alone.
#[test]
fn elf_resolution_keeps_frames_resolved_when_taken() {
    let (_, mut later) = snapshots();
    // Host snapshots keep their addresses beside the frames they were resolved to.
    for addresses in &mut later.addresses {
        *addresses = vec![0x1000, 0x2000];
    }
    let out = stats_with_this_binary_as_elf("host.tmsnap", &later).unwrap();
    assert!(out.starts_with("src/cache.rs:42: size=30.0 KiB"), "{out}");
}

#[test]
fn no_traces_is_said_once_and_names_filters_only_when_given() {
    let empty = snapshot_from_traces(16, []);
    let file = temp("empty.tmsnap", &empty.dump_bytes());
    let path = file.to_str().unwrap();
    assert_eq!(
        cli(&["stats", path]).unwrap(),
        format!("no traces in {path}\n")
    );
    assert_eq!(
        cli(&["traceback", path]).unwrap(),
        format!("no traces in {path}\n")
    );
    assert_eq!(
        cli(&["compare", path, path]).unwrap(),
        "no traces in either snapshot\n"
    );
    let (start, _) = snapshots();
    let file = temp("start-filtered.tmsnap", &start.dump_bytes());
    let path = file.to_str().unwrap();
    assert_eq!(
        cli(&["stats", path, "--include", "nothing/*"]).unwrap(),
        format!("no traces in {path} (after filters)\n")
    );
}
