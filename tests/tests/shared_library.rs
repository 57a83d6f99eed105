//! Frames in a shared library the program loaded are looked up in that library's own debug info
//! (Linux). A `cdylib` that installs the tracer, such as a Python extension written in Rust, has
//! all its frames in such a library; before, they were looked up in the executable and lost.

#![cfg(target_os = "linux")]

use std::path::{Path, PathBuf};
use std::process::Command;

use tracemalloc::TracingAllocator;
use tracemalloc_core::snapshot::Snapshot;
use tracemalloc_tests::{load_symbol, marked_line, traced_at};

#[global_allocator]
static ALLOC: TracingAllocator = TracingAllocator::system();

const THIS_FILE: &str = "tests/tests/shared_library.rs";
const LIBRARY_SOURCE: &str = "tests/c/callback.c";

/// Allocates a block of `SIZE` bytes that stays live.
extern "C" fn allocate<const SIZE: usize>() {
    std::mem::forget(vec![7u8; SIZE]); // ALLOCATE
}

/// A loaded build of `tests/c/callback.c`, unloaded and deleted on drop.
struct Library {
    handle: *mut libc::c_void,
    file: PathBuf,
    call: extern "C" fn(extern "C" fn()),
}

impl Library {
    /// Builds `tests/c/callback.c` (with `defines`) into a shared library of its own name and
    /// loads it.
    fn load(name: &str, defines: &[&str]) -> Library {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let file = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("lib{name}-{}.so", std::process::id()));
        let status = Command::new("cc")
            .args(["-shared", "-fPIC", "-g", "-O0", "-fno-omit-frame-pointer"])
            .args(defines)
            .arg("-o")
            .arg(&file)
            .arg(root.join(LIBRARY_SOURCE))
            .status()
            .expect("this test needs a C compiler, `cc`");
        assert!(status.success(), "cc failed: {status}");
        let (handle, symbol) = load_symbol(&file, c"tracemalloc_test_call");
        // SAFETY: the symbol is `void tracemalloc_test_call(void (*)(void))`, of this ABI.
        let call = unsafe {
            std::mem::transmute::<*mut libc::c_void, extern "C" fn(extern "C" fn())>(symbol)
        };
        Library { handle, file, call }
    }
}

impl Drop for Library {
    fn drop(&mut self) {
        // SAFETY: `handle` came from `dlopen`, and nothing of the library is used after this.
        assert_eq!(unsafe { libc::dlclose(self.handle) }, 0, "dlclose failed");
        let _ = std::fs::remove_file(&self.file);
    }
}

/// The (file, line) frames of the one traced block of `size` bytes.
fn frames_of(snapshot: &Snapshot, size: u64) -> Vec<(String, u32)> {
    let trace = snapshot
        .traces
        .iter()
        .find(|t| t.size == size)
        .expect("the block is traced");
    let frames = &snapshot.tracebacks[trace.traceback as usize].frames;
    frames
        .iter()
        .map(|f| (f.filename.to_string(), f.lineno))
        .collect()
}

/// The line of `tests/c/callback.c` that ends with `marker`.
fn c_line(marker: &str) -> u32 {
    include_str!("../c/callback.c")
        .lines()
        .position(|l| l.ends_with(marker))
        .expect("the C file's marker") as u32
        + 1
}

#[test]
fn frames_in_loaded_libraries_name_their_source_lines() {
    let this = include_str!("shared_library.rs");
    let allocate_line = marked_line(this, "ALLOCATE");
    let expect = |c_marker: &str, call_marker: &str| {
        vec![
            (THIS_FILE.to_owned(), allocate_line),
            (LIBRARY_SOURCE.to_owned(), c_line(c_marker)),
            (THIS_FILE.to_owned(), marked_line(this, call_marker)),
        ]
    };
    tracemalloc::start(3).unwrap();
    // The resolver lists the process's objects at the first snapshot: the library comes later,
    // and an address in it makes the resolver read the list again.
    let before = tracemalloc::take_snapshot().unwrap();
    let first = Library::load("tracemalloc_first", &[]);
    (first.call)(allocate::<5000>); // FIRST
    let snapshot = tracemalloc::take_snapshot().unwrap();
    assert_eq!(traced_at(&before, THIS_FILE, allocate_line), None);
    assert_eq!(frames_of(&snapshot, 5000), expect("/* CALL */", "FIRST"));

    // Unloaded, and another build loaded, where the loader usually puts it at the same
    // address: its frames must come from its own debug info, not the first library's.
    drop(first);
    let second = Library::load("tracemalloc_second", &["-DSECOND"]);
    (second.call)(allocate::<6000>); // SECOND
    let snapshot = tracemalloc::take_snapshot().unwrap();
    tracemalloc::stop();
    assert_eq!(
        frames_of(&snapshot, 6000),
        expect("/* SECOND CALL */", "SECOND")
    );
    drop(second);
}
