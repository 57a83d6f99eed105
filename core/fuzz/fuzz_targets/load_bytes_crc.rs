//! The fuzz input is a version selector (its first byte, modulo the versions read) and
//! the body of a binary snapshot (after magic and version, before the CRC); the target adds a
//! valid header and checksum so every input reaches the body decoder.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tracemalloc_core::codec::binary::{Crc32, MAGIC, OLDEST_VERSION, VERSION};
use tracemalloc_core::Snapshot;

fuzz_target!(|input: &[u8]| {
    let Some((&selector, body)) = input.split_first() else {
        return;
    };
    let version = OLDEST_VERSION + selector % (VERSION - OLDEST_VERSION + 1);
    let mut file = Vec::with_capacity(body.len() + 11);
    file.extend_from_slice(MAGIC);
    file.push(version);
    file.extend_from_slice(body);
    let mut crc = Crc32::new();
    crc.update(&file);
    file.extend_from_slice(&crc.finish().to_le_bytes());
    if let Ok(snapshot) = Snapshot::load_bytes(&file) {
        Snapshot::load_bytes(&snapshot.dump_bytes()).expect("re-encoded snapshot must decode");
    }
});
