//! A library loaded by a relative path (`dlopen("./plugins/libx.so")`) keeps that path in the
//! loader's list, relative to the directory that was current then. The program may leave that
//! directory before its first snapshot: the library's frames must still name its lines. A test
//! file of its own, as it changes the process's current directory.

#![cfg(target_os = "linux")]

use std::path::Path;
use std::process::Command;

use tracemalloc::TracingAllocator;
use tracemalloc_tests::load_symbol;

#[global_allocator]
static ALLOC: TracingAllocator = TracingAllocator::system();

/// Allocates a block of 5000 bytes that stays live.
extern "C" fn allocate() {
    std::mem::forget(vec![7u8; 5000]);
}

#[test]
fn a_library_loaded_by_a_relative_path_names_its_lines_from_another_directory() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("rel-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("plugins")).unwrap();
    let status = Command::new("cc")
        .args(["-shared", "-fPIC", "-g", "-O0", "-fno-omit-frame-pointer"])
        .arg("-o")
        .arg(dir.join("plugins/libcallback.so"))
        .arg(root.join("tests/c/callback.c"))
        .status()
        .expect("this test needs a C compiler, `cc`");
    assert!(status.success(), "cc failed: {status}");
    std::env::set_current_dir(&dir).unwrap();
    let (_handle, symbol) = load_symbol(
        Path::new("./plugins/libcallback.so"),
        c"tracemalloc_test_call",
    );
    // SAFETY: the symbol is `void tracemalloc_test_call(void (*)(void))`, of this ABI.
    let call =
        unsafe { std::mem::transmute::<*mut libc::c_void, extern "C" fn(extern "C" fn())>(symbol) };
    std::env::set_current_dir(root).unwrap();

    tracemalloc::start(2).unwrap();
    call(allocate);
    let snapshot = tracemalloc::take_snapshot().unwrap();
    tracemalloc::stop();
    let trace = snapshot
        .traces
        .iter()
        .find(|t| t.size == 5000)
        .expect("traced");
    let frames = &snapshot.tracebacks[trace.traceback as usize].frames;
    let line = include_str!("../c/callback.c")
        .lines()
        .position(|l| l.ends_with("/* CALL */"))
        .unwrap() as u32
        + 1;
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(
        frames[1].filename.ends_with("tests/c/callback.c") && frames[1].lineno == line,
        "{frames:?}"
    );
}
