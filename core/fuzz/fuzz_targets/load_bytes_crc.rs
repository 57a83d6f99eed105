//! The fuzz input is the body of a binary snapshot (after magic and version, before the CRC);
//! the target adds a valid header and checksum so every input reaches the body decoder.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tracemalloc_core::codec::binary::{Crc32, MAGIC, VERSION};
use tracemalloc_core::Snapshot;

fuzz_target!(|body: &[u8]| {
    let mut file = Vec::with_capacity(body.len() + 11);
    file.extend_from_slice(MAGIC);
    file.push(VERSION);
    file.extend_from_slice(body);
    let mut crc = Crc32::new();
    crc.update(&file);
    file.extend_from_slice(&crc.finish().to_le_bytes());
    if let Ok(snapshot) = Snapshot::load_bytes(&file) {
        Snapshot::load_bytes(&snapshot.dump_bytes()).expect("re-encoded snapshot must decode");
    }
});
