//! With the `build-id` feature, puts the linker script that keeps the build id note
//! (`link/tracemalloc-build-id.x`) where the firmware's link finds it, as defmt does `defmt.x`.
use std::{env, fs, path::PathBuf};

fn main() {
    const SCRIPT: &str = "tracemalloc-build-id.x";
    println!("cargo:rerun-if-changed=link/{SCRIPT}");
    if env::var_os("CARGO_FEATURE_BUILD_ID").is_none() {
        return;
    }
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    fs::copy(format!("link/{SCRIPT}"), out.join(SCRIPT)).expect("the script is in the package");
    println!("cargo:rustc-link-search={}", out.display());
}
