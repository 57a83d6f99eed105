//! Frames in a shared library the program loaded are looked up in that library's own debug info
//! (Linux). A `cdylib` that installs the tracer, such as a Python extension written in Rust, has
//! all its frames in such a library; before, they were looked up in the executable and lost.

#![cfg(target_os = "linux")]

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::Command;

use tracemalloc::TracingAllocator;
use tracemalloc_tests::{marked_line, traced_at};

#[global_allocator]
static ALLOC: TracingAllocator = TracingAllocator::system();

const THIS_FILE: &str = "tests/tests/shared_library.rs";
const LIBRARY_SOURCE: &str = "tests/c/callback.c";

/// Allocates a block that stays live.
extern "C" fn allocate() {
    std::mem::forget(vec![7u8; 5000]); // ALLOCATE
}

/// Builds `tests/c/callback.c` into a shared library and loads it; returns its entry point.
fn load_library() -> extern "C" fn(extern "C" fn()) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let library = Path::new(env!("CARGO_TARGET_TMPDIR")).join("libtracemalloc_callback.so");
    let status = Command::new("cc")
        .args([
            "-shared",
            "-fPIC",
            "-g",
            "-O0",
            "-fno-omit-frame-pointer",
            "-o",
        ])
        .arg(&library)
        .arg(root.join(LIBRARY_SOURCE))
        .status()
        .expect("this test needs a C compiler, `cc`");
    assert!(status.success(), "cc failed: {status}");
    let path = CString::new(library.as_os_str().as_bytes()).unwrap();
    // SAFETY: the library is ours and has no initialisers; it stays loaded for the process.
    let handle = unsafe { libc::dlopen(path.as_ptr(), libc::RTLD_NOW) };
    assert!(!handle.is_null(), "dlopen failed");
    // SAFETY: `handle` is a loaded library; the name is NUL-terminated.
    let symbol = unsafe { libc::dlsym(handle, c"tracemalloc_test_call".as_ptr()) };
    assert!(!symbol.is_null(), "dlsym failed");
    // SAFETY: the symbol is `void tracemalloc_test_call(void (*)(void))`, which has this ABI.
    unsafe { std::mem::transmute::<*mut libc::c_void, extern "C" fn(extern "C" fn())>(symbol) }
}

#[test]
fn frames_in_a_library_loaded_after_the_first_snapshot_name_its_source_lines() {
    tracemalloc::start(3).unwrap();
    // The resolver lists the process's objects at the first snapshot: the library comes later,
    // and an address in it makes the resolver read the list again.
    let before = tracemalloc::take_snapshot().unwrap();
    let call = load_library();
    call(allocate); // LOAD_AND_CALL
    let snapshot = tracemalloc::take_snapshot().unwrap();
    tracemalloc::stop();

    let allocate_line = marked_line(include_str!("shared_library.rs"), "ALLOCATE");
    assert_eq!(traced_at(&before, THIS_FILE, allocate_line), None);
    assert_eq!(
        traced_at(&snapshot, THIS_FILE, allocate_line),
        Some((5000, 1))
    );
    let trace = snapshot
        .traces
        .iter()
        .find(|t| t.size == 5000)
        .expect("the block is traced");
    let frames = &snapshot.tracebacks[trace.traceback as usize].frames;
    let lines: Vec<(&str, u32)> = frames.iter().map(|f| (&*f.filename, f.lineno)).collect();
    let call_line = include_str!("../c/callback.c")
        .lines()
        .position(|l| l.ends_with("/* CALL */"))
        .expect("the C file's marker") as u32
        + 1;
    assert_eq!(
        lines,
        [
            (THIS_FILE, allocate_line),
            (LIBRARY_SOURCE, call_line),
            (
                THIS_FILE,
                marked_line(include_str!("shared_library.rs"), "LOAD_AND_CALL")
            ),
        ]
    );
}
