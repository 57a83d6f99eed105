//! Raw bytes into the binary decoder: header, magic, version and checksum handling.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tracemalloc_core::Snapshot;

fuzz_target!(|data: &[u8]| {
    if let Ok(snapshot) = Snapshot::load_bytes(data) {
        // Whatever decodes must encode and decode again.
        Snapshot::load_bytes(&snapshot.dump_bytes()).expect("re-encoded snapshot must decode");
    }
});
