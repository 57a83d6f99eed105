//! Bytes into the JSON decoder (as text, the way the std adapter calls it).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tracemalloc_core::Snapshot;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = core::str::from_utf8(data) else {
        return;
    };
    if let Ok(snapshot) = Snapshot::from_json(text) {
        Snapshot::from_json(&snapshot.to_json()).expect("re-encoded snapshot must decode");
    }
});
