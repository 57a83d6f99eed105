//! A service runs for weeks, and a deploy puts a new build at its path meanwhile: its snapshots
//! must still name its own lines (Linux). The symbolizer reads the running executable through
//! `/proc/self/exe`; before, it opened the path, which then named a file that was gone.

#![cfg(target_os = "linux")]

use tracemalloc::TracingAllocator;
use tracemalloc_tests::traced_at;

#[global_allocator]
static ALLOC: TracingAllocator = TracingAllocator::system();

tracemalloc_tests::this_file!();
const NAME: &str = "an_executable_replaced_on_disk_still_names_its_lines";

#[test]
fn an_executable_replaced_on_disk_still_names_its_lines() {
    if std::env::var_os("TRACEMALLOC_TEST_REPLACED").is_none() {
        // A copy of this test program, which replaces itself on disk as it runs.
        let copy = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("replaced-binary-{}", std::process::id()));
        std::fs::copy(std::env::current_exe().unwrap(), &copy).unwrap();
        let output = std::process::Command::new(&copy)
            .args(["--exact", NAME, "--test-threads=1", "--nocapture"])
            .env("TRACEMALLOC_TEST_REPLACED", "1")
            .output()
            .unwrap();
        let _ = std::fs::remove_file(&copy);
        assert!(
            output.status.success(),
            "the copy failed: {}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        // A renamed test would run nothing in the copy, and pass.
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(stdout.contains("1 passed"), "{stdout}");
        return;
    }
    // As a deploy does: the new build is renamed over the old one, whose file lives on only as
    // the running program's.
    let me = std::env::current_exe().unwrap();
    let upgrade = me.with_extension("upgrade");
    std::fs::write(&upgrade, b"the next build").unwrap();
    std::fs::rename(&upgrade, &me).unwrap();

    tracemalloc::start(4).unwrap();
    let block = vec![7u8; 4321]; // ALLOCATE
    let snapshot = tracemalloc::take_snapshot().unwrap();
    tracemalloc::stop();
    assert_eq!(
        traced_at(&snapshot, THIS_FILE, line_of("ALLOCATE")),
        Some((4321, 1))
    );
    drop(block);
}
