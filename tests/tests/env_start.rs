//! `RUST_TRACEMALLOC=N` starts tracing with N frames before `main`, as `PYTHONTRACEMALLOC` does.

use tracemalloc::TracingAllocator;

#[global_allocator]
static ALLOC: TracingAllocator = TracingAllocator::system();

#[test]
fn env_variable_starts_tracing_at_the_first_allocation() {
    if std::env::var_os("TRACEMALLOC_CHILD").is_some() {
        // In the child: tracing must already be on, with the limit from the environment.
        assert!(tracemalloc::is_tracing());
        assert_eq!(tracemalloc::traceback_limit(), 5);
        let kept = vec![0u8; 5555];
        let snapshot = tracemalloc::take_snapshot().unwrap();
        assert!(snapshot.traces.iter().any(|t| t.size == 5555));
        drop(kept);
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let run = |value: Option<&str>| {
        let mut cmd = std::process::Command::new(&exe);
        cmd.args([
            "--exact",
            "env_variable_starts_tracing_at_the_first_allocation",
        ])
        .env("TRACEMALLOC_CHILD", "1");
        match value {
            Some(v) => cmd.env("RUST_TRACEMALLOC", v),
            None => cmd.env_remove("RUST_TRACEMALLOC"),
        };
        cmd.output().unwrap()
    };
    let traced = run(Some("5"));
    assert!(
        traced.status.success(),
        "{}",
        String::from_utf8_lossy(&traced.stdout)
    );
    // Without the variable, tracing is off in the child and its assertion fails.
    assert!(!run(None).status.success());
}
