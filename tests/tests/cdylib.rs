//! A `cdylib` that installs its own tracer, as a Python extension written in Rust would, finds
//! its frames in itself: a shared library, not the executable that loaded it. Its allocating
//! line must come out by its own file and line.

#![cfg(target_os = "linux")]

use std::path::PathBuf;
use std::process::Command;

use tracemalloc_tests::{load_symbol, marked_line};

/// Builds the probe library (`tests/cdylib`) with the cargo running this test, and returns its
/// path: cargo's `test` builds no `cdylib` for a test to load.
fn build_probe() -> PathBuf {
    // This test runs from `<target>/<profile folder>/deps`: the library is built with the same
    // profile into the same target folder, which puts it in `<profile folder>`.
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).unwrap();
    let target_dir = profile_dir.parent().unwrap();
    let profile = match profile_dir.file_name().unwrap().to_str().unwrap() {
        "debug" => "dev",
        other => other,
    };
    let status = Command::new(env!("CARGO"))
        .args([
            "build",
            "-q",
            "-p",
            "tracemalloc-cdylib-probe",
            "--profile",
            profile,
        ])
        .arg("--target-dir")
        .arg(target_dir)
        .status()
        .expect("cargo, to build the probe library");
    assert!(status.success(), "building tests/cdylib failed: {status}");
    profile_dir.join("libtracemalloc_cdylib_probe.so")
}

#[test]
fn a_cdylib_with_its_own_tracer_names_its_own_lines() {
    let (_stays_loaded, symbol) = load_symbol(&build_probe(), c"tracemalloc_probe");
    type Probe = unsafe extern "C" fn(*mut u8, usize) -> isize;
    // SAFETY: the symbol is `tracemalloc_probe` of `tests/cdylib/src/lib.rs`, of this type.
    let probe = unsafe { std::mem::transmute::<*mut libc::c_void, Probe>(symbol) };
    let mut out = [0u8; 256];
    // SAFETY: `out` has the length given.
    let n = unsafe { probe(out.as_mut_ptr(), out.len()) };
    assert!(n >= 0, "the probe could not trace");
    let found = std::str::from_utf8(&out[..n as usize]).unwrap();
    let line = marked_line(include_str!("../cdylib/src/lib.rs"), "PROBE");
    assert_eq!(found, format!("tests/cdylib/src/lib.rs:{line}"));
}
