//! The fuzz input is a version selector (its first byte, modulo the versions read) and
//! the body of a binary snapshot (after magic and version, before the CRC); the target adds a
//! valid header and checksum so every input reaches the body decoder. The selector's high
//! bits also set a memory limit (up to 60 times the body's size): decoding within it gives the
//! same snapshot or error as without, or refuses the file as too large, nothing else.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tracemalloc_core::codec::binary::{Crc32, DecodeError, MAGIC, OLDEST_VERSION, VERSION};
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
    let unlimited = Snapshot::load_bytes(&file);
    let limit = body.len().saturating_mul(usize::from(selector >> 4) * 4);
    match (Snapshot::load_bytes_within(&file, limit), &unlimited) {
        (Ok(within), Ok(all)) => assert_eq!(within.dump_bytes(), all.dump_bytes()),
        (Err(DecodeError::TooLarge { limit: said }), _) => assert_eq!(said, limit as u64),
        (Err(within), Err(all)) => assert_eq!(within, *all),
        (within, all) => panic!("within {limit} B: {within:?}; unlimited: {all:?}"),
    }
    if let Ok(snapshot) = unlimited {
        Snapshot::load_bytes(&snapshot.dump_bytes()).expect("re-encoded snapshot must decode");
    }
});
