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

/// The address space a limited run may take: a few times what the binary needs for itself.
#[cfg(target_os = "linux")]
const ADDRESS_SPACE: u64 = 256 << 20;

/// A device snapshot (binary form, no build id): one traceback of `count` copies of `address`
/// and no traces. Header: version 3, limit 16, five counters, tracer memory, sample interval, no
/// build id, no strings; one traceback with addresses, total_nframe 0; the addresses, each the
/// zigzag of its difference from the one before; no traces; the CRC.
#[cfg(target_os = "linux")]
fn device_file(address: u64, count: u64) -> Vec<u8> {
    use tracemalloc::core::codec::binary::Crc32;
    fn varint(body: &mut Vec<u8>, mut n: u64) {
        while n >= 0x80 {
            body.push(n as u8 | 0x80);
            n >>= 7;
        }
        body.push(n as u8);
    }
    let mut body = b"TMSNAP\x03".to_vec();
    body.extend_from_slice(&[16, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0]);
    varint(&mut body, count);
    varint(&mut body, address << 1);
    body.resize(body.len() + count as usize, 0); // the other copies, then no traces
    let mut crc = Crc32::new();
    crc.update(&body);
    body.extend_from_slice(&crc.finish().to_le_bytes());
    body
}

/// Runs the binary with `args` and its address space limited to [`ADDRESS_SPACE`]: exit
/// status, stdout and stderr.
#[cfg(target_os = "linux")]
fn run_limited(args: &[&str]) -> (Option<i32>, String, String) {
    let out = limited(args).output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The binary with `args`, to run with its address space limited to [`ADDRESS_SPACE`].
#[cfg(target_os = "linux")]
fn limited(args: &[&str]) -> Command {
    use std::os::unix::process::CommandExt;
    let mut child = Command::new(env!("CARGO_BIN_EXE_tracemalloc"));
    child.args(args);
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
    child
}

/// Checks a one-line refusal that names, after `said`, a size that is half of what the limit
/// leaves beside the process's own mappings (the binary, the file's bytes): well above
/// nothing, below half the limit.
#[cfg(target_os = "linux")]
fn assert_refused_within_limit(stderr: &str, said: &str) {
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    let (_, rest) = stderr.split_once(said).expect(stderr);
    // Or at the least a step is given ("the least a step may take, more than half …") when
    // less is left.
    assert!(
        rest.contains(" MiB of memory, half of what this process can still get")
            || rest.starts_with("64.0 MiB of memory, the least a step may take, more than half"),
        "{stderr}"
    );
    let mib: f64 = rest.split(' ').next().unwrap().parse().unwrap();
    assert!((32.0..128.0).contains(&mib), "{stderr}");
}

/// A file that describes far more than it holds (forged: one traceback of millions of one-byte
/// addresses, each 48 bytes once loaded) is refused in one line, within the memory the process
/// may take, instead of ending it with an allocation failure; an ordinary file still loads
/// under the same limit.
#[test]
#[cfg(target_os = "linux")]
fn a_file_describing_more_than_memory_allows_is_refused() {
    use tracemalloc::core::snapshot::snapshot_from_traces;
    use tracemalloc::{Frame, Traceback};

    let dir = std::env::temp_dir().join(format!("tracemalloc-limit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let forged = dir.join("forged.tmsnap");
    std::fs::write(&forged, device_file(0, 8_000_000)).unwrap(); // 8 MB, 384 MB loaded
    let cache = Traceback::new(vec![Frame::new("src/cache.rs", 42)]);
    let good = dir.join("under-a-limit.tmsnap");
    let traces = (0..3).map(|_| (0, 10_240, cache.clone()));
    std::fs::write(&good, snapshot_from_traces(16, traces).dump_bytes()).unwrap();

    let (code, _, stderr) = run_limited(&["stats", forged.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{stderr}");
    let said = format!(
        "tracemalloc: {}: loading this snapshot would take more than ",
        forged.display()
    );
    assert_refused_within_limit(&stderr, &said);
    // An ordinary file loads under the same limit.
    let (code, stdout, stderr) = run_limited(&["stats", good.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stdout.contains("src/cache.rs:42: size=30.0 KiB"),
        "{stdout}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A pipe that never ends (here: a binary header, then zeros for longer than the limit allows)
/// is refused in one line once its bytes pass half of what the process can still get, rather
/// than read until memory runs out (without a limit, until the OOM killer comes).
#[test]
#[cfg(target_os = "linux")]
fn an_endless_pipe_is_refused_within_the_limit() {
    use std::io::Write;
    use std::process::Stdio;

    let mut child = limited(&["stats", "/dev/stdin"]);
    child
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = child.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        let mut written = 0u64;
        let _ = stdin.write_all(b"TMSNAP\x03");
        let zeros = vec![0u8; 1 << 20];
        // Twice the address space: more than any budget the limit leaves. The reader stops
        // early, and the write then fails.
        while written < 2 * ADDRESS_SPACE && stdin.write_all(&zeros).is_ok() {
            written += zeros.len() as u64;
        }
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_refused_within_limit(
        &stderr,
        "tracemalloc: /dev/stdin: loading this snapshot would take more than ",
    );
}

/// A device snapshot that loads within the limit but whose addresses, named with `--elf`,
/// would take more memory than is left is refused at that step, in one line, and a few copies
/// of the same address are named under the same limit. The `--elf` file is this binary itself
/// (it carries a build id and line tables), the address one of its own with a source line.
#[test]
#[cfg(target_os = "linux")]
fn naming_more_frames_than_memory_allows_is_refused() {
    use object::{Object, ObjectSymbol};
    use tracemalloc::core::snapshot::Resolver;

    let elf = env!("CARGO_BIN_EXE_tracemalloc");
    let data = std::fs::read(elf).unwrap();
    let file = object::File::parse(&*data).unwrap();
    let mut resolver = tracemalloc::symbolize::ElfResolver::open(elf.as_ref(), 0).unwrap();
    // A function of the core crate: never hidden as allocation plumbing.
    let address = file
        .symbols()
        .filter(|s| s.kind() == object::SymbolKind::Text && s.address() != 0)
        .filter(|s| s.name().is_ok_and(|n| n.contains("tracemalloc_core")))
        .map(|s| s.address())
        .find(|&a| {
            let mut frames = Vec::new();
            resolver.resolve(a as usize, &mut frames) && frames.iter().any(|f| f.lineno != 0)
        })
        .expect("a function of tracemalloc_core with a source line");

    let dir = std::env::temp_dir().join(format!("tracemalloc-naming-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let forged = dir.join("device.tmsnap");
    let path = forged.to_str().unwrap();
    let said =
        format!("tracemalloc: {path}: naming its addresses with {elf} would take more than ");
    // Named, each copy takes more memory (its frames) than loaded (one shared name), how much
    // more depending on the frames inlined at the address: one of these counts loads and
    // cannot be named. Every run either succeeds or ends with a one-line refusal, never with
    // an allocation failure.
    let mut refused_naming = false;
    for count in [
        1_000_000, 1_400_000, 1_700_000, 2_000_000, 2_400_000, 2_800_000,
    ] {
        std::fs::write(&forged, device_file(address, count)).unwrap();
        let (code, _, stderr) = run_limited(&["info", path, "--elf", elf]);
        match code {
            Some(0) => assert!(stderr.is_empty(), "{count} copies: {stderr}"),
            Some(1) if stderr.contains("naming its addresses") => {
                assert_refused_within_limit(&stderr, &said);
                refused_naming = true;
            }
            Some(1) => assert!(
                stderr.contains("loading this snapshot"),
                "{count} copies: {stderr}"
            ),
            _ => panic!("{count} copies: {code:?} {stderr}"),
        }
    }
    assert!(refused_naming, "no count was refused while naming");
    std::fs::write(&forged, device_file(address, 1_000)).unwrap();
    let (code, stdout, stderr) = run_limited(&["info", path, "--elf", elf]);
    assert_eq!((code, stderr.as_str()), (Some(0), ""), "{stdout}");
    std::fs::remove_dir_all(&dir).unwrap();
}
