//! Puts memory.x where cortex-m-rt's link.x finds it and, when tracing, links the build id note
//! into flash: tracemalloc-embedded's `build-id` feature writes it into every snapshot.
use std::{env, fs, path::PathBuf};

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").unwrap());
    fs::copy("memory.x", out.join("memory.x")).unwrap();
    println!("cargo:rustc-link-search={}", out.display());
    println!("cargo:rerun-if-changed=memory.x");
    if env::var_os("CARGO_FEATURE_TRACING").is_some() {
        // The script comes from tracemalloc-embedded's build script (its own link search path).
        println!("cargo:rustc-link-arg=-Ttracemalloc-build-id.x");
        println!("cargo:rustc-link-arg=--build-id=sha1");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
