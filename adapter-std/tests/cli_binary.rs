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

/// A file that describes far more than it holds (forged: one traceback of millions of one-byte
/// addresses, each 48 bytes once loaded) is refused in one line, within the memory the process
/// may take, instead of ending it with an allocation failure; an ordinary file still loads
/// under the same limit.
#[test]
#[cfg(target_os = "linux")]
fn a_file_describing_more_than_memory_allows_is_refused() {
    use std::os::unix::process::CommandExt;
    use tracemalloc::core::codec::binary::Crc32;
    use tracemalloc::core::snapshot::snapshot_from_traces;
    use tracemalloc::{Frame, Traceback};

    const ADDRESSES: usize = 8_000_000; // 8 MB of file, 384 MB loaded
    const ADDRESS_SPACE: u64 = 256 << 20;
    let dir = std::env::temp_dir().join(format!("tracemalloc-limit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();

    // Header: version 3, limit 16, five counters, tracer memory, sample interval, no build id,
    // no strings; one traceback with addresses, total_nframe 0; the addresses; no traces.
    let mut body = b"TMSNAP\x03".to_vec();
    body.extend_from_slice(&[16, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0]);
    let mut n = ADDRESSES;
    while n >= 0x80 {
        body.push(n as u8 | 0x80);
        n >>= 7;
    }
    body.push(n as u8);
    body.resize(body.len() + ADDRESSES + 1, 0);
    let mut crc = Crc32::new();
    crc.update(&body);
    body.extend_from_slice(&crc.finish().to_le_bytes());
    let forged = dir.join("forged.tmsnap");
    std::fs::write(&forged, body).unwrap();
    let cache = Traceback::new(vec![Frame::new("src/cache.rs", 42)]);
    let good = dir.join("under-a-limit.tmsnap");
    let traces = (0..3).map(|_| (0, 10_240, cache.clone()));
    std::fs::write(&good, snapshot_from_traces(16, traces).dump_bytes()).unwrap();

    // `stats FILE` with the address space limited.
    let stats_limited = |file: &std::path::Path| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tracemalloc"));
        child.args(["stats", file.to_str().unwrap()]);
        // SAFETY: `setrlimit` is async-signal-safe and touches no memory of the parent's.
        unsafe {
            child.pre_exec(|| {
                let limit = libc::rlimit {
                    rlim_cur: ADDRESS_SPACE,
                    rlim_max: ADDRESS_SPACE,
                };
                if libc::setrlimit(libc::RLIMIT_AS, &limit) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
        let out = child.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, _, stderr) = stats_limited(&forged);
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    let said = format!(
        "tracemalloc: {}: loading this snapshot would take more than ",
        forged.display()
    );
    let (_, rest) = stderr.split_once(&said).expect(&stderr);
    assert!(
        rest.contains(" MiB of memory, half of what this process can still get"),
        "{stderr}"
    );
    // Half of what the limit leaves beside the process's own mappings (the binary, the file's
    // bytes): well above nothing, below half the limit.
    let mib: f64 = rest.split(' ').next().unwrap().parse().unwrap();
    assert!((32.0..128.0).contains(&mib), "{stderr}");
    // An ordinary file loads under the same limit.
    let (code, stdout, stderr) = stats_limited(&good);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stdout.contains("src/cache.rs:42: size=30.0 KiB"),
        "{stdout}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
