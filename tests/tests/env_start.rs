//! `RUST_TRACEMALLOC=N` starts tracing with N frames before `main`, as `PYTHONTRACEMALLOC` does;
//! `RUST_TRACEMALLOC_SAMPLE=BYTES` beside it makes that tracing sampled, and
//! `RUST_TRACEMALLOC_STORAGE` picks where the traces go.

use tracemalloc::{Storage, TracingAllocator};

#[global_allocator]
static ALLOC: TracingAllocator = TracingAllocator::system();

#[test]
fn env_variable_starts_tracing_at_the_first_allocation() {
    if std::env::var_os("TRACEMALLOC_CHILD").is_some() {
        // In the child: tracing must already be on, with the limit from the environment (a
        // limit of 0: tracing must be off).
        let nframe: usize = std::env::var("TRACEMALLOC_CHILD_NFRAME")
            .unwrap()
            .parse()
            .unwrap();
        if nframe == 0 {
            assert!(!tracemalloc::is_tracing());
            return;
        }
        assert!(tracemalloc::is_tracing());
        assert_eq!(tracemalloc::traceback_limit(), nframe);
        let expected: u64 = std::env::var("TRACEMALLOC_CHILD").unwrap().parse().unwrap();
        let storage = match std::env::var("TRACEMALLOC_CHILD_STORAGE").as_deref() {
            Ok("table") => Storage::Table,
            Ok("shadow") => Storage::Shadow,
            other => panic!("no expected storage: {other:?}"),
        };
        assert_eq!(tracemalloc::storage_in_use(), Some(storage));
        // A block far bigger than the interval is sampled for certain (at 512 KiB, a 64 MiB
        // block is missed with probability e^-128).
        let kept = vec![0u8; 64 << 20];
        let snapshot = tracemalloc::take_snapshot().unwrap();
        assert_eq!(snapshot.sample_interval, expected);
        assert!(snapshot.traces.iter().any(|t| t.size == 64 << 20));
        drop(kept);
        return;
    }
    let exe = std::env::current_exe().unwrap();
    // The child is told the sample interval, the storage in use and the limit it must find;
    // `storage` is `RUST_TRACEMALLOC_STORAGE`'s value, if any.
    let run_with = |value: Option<&str>,
                    sample: Option<&str>,
                    storage: Option<&str>,
                    expected: (u64, &str, usize)| {
        let mut cmd = std::process::Command::new(&exe);
        cmd.args([
            "--exact",
            "env_variable_starts_tracing_at_the_first_allocation",
        ])
        .env("TRACEMALLOC_CHILD", expected.0.to_string())
        .env("TRACEMALLOC_CHILD_STORAGE", expected.1)
        .env("TRACEMALLOC_CHILD_NFRAME", expected.2.to_string());
        match storage {
            Some(v) => cmd.env("RUST_TRACEMALLOC_STORAGE", v),
            None => cmd.env_remove("RUST_TRACEMALLOC_STORAGE"),
        };
        match value {
            Some(v) => cmd.env("RUST_TRACEMALLOC", v),
            None => cmd.env_remove("RUST_TRACEMALLOC"),
        };
        match sample {
            Some(v) => cmd.env("RUST_TRACEMALLOC_SAMPLE", v),
            None => cmd.env_remove("RUST_TRACEMALLOC_SAMPLE"),
        };
        cmd.output().unwrap()
    };
    // By default full tracing records into shadow memory (where the address space is not
    // limited, as it is not here), and sampling into the tables.
    let run = |value: Option<&str>, sample: Option<&str>, expected: u64| {
        let storage = if sample.is_some() { "table" } else { "shadow" };
        run_with(value, sample, None, (expected, storage, 5))
    };
    let ok = |out: &std::process::Output| {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    };
    ok(&run(Some("5"), None, 0));
    ok(&run(Some("5"), Some("65536"), 65536));
    // A value that is not a number says so and samples at the default interval.
    let typo = run(Some("5"), Some("64k"), tracemalloc::DEFAULT_SAMPLE_INTERVAL);
    ok(&typo);
    assert!(
        String::from_utf8_lossy(&typo.stderr).contains("RUST_TRACEMALLOC_SAMPLE is not a number"),
        "{}",
        String::from_utf8_lossy(&typo.stderr)
    );
    // The tables when asked for, for full tracing too; a typo says so and keeps the default.
    ok(&run_with(Some("5"), None, Some("table"), (0, "table", 5)));
    ok(&run_with(
        Some("5"),
        Some("4096"),
        Some("shadow"),
        (4096, "table", 5),
    ));
    let typo = run_with(Some("5"), None, Some("tables"), (0, "shadow", 5));
    ok(&typo);
    assert!(
        String::from_utf8_lossy(&typo.stderr).contains("RUST_TRACEMALLOC_STORAGE is not"),
        "{}",
        String::from_utf8_lossy(&typo.stderr)
    );
    // A limit that is not a number, or too big, says so; tracing starts with 1 or 65535 frames.
    for (value, nframe, warning) in [
        ("five", 1, "RUST_TRACEMALLOC is not a number of frames"),
        (
            "100000",
            65535,
            "RUST_TRACEMALLOC is more than 65535 frames",
        ),
        (
            "99999999999999999999999",
            65535,
            "RUST_TRACEMALLOC is more than 65535 frames",
        ),
    ] {
        let out = run_with(Some(value), None, None, (0, "shadow", nframe));
        ok(&out);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(warning), "{stderr}");
    }
    // 0, however written, leaves tracing off.
    for off in ["0", "00", " "] {
        ok(&run_with(Some(off), None, None, (0, "shadow", 0)));
    }
    // Without the variable, tracing is off in the child and its assertion fails.
    assert!(!run(None, None, 0).status.success());
}
