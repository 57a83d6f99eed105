//! GNU build ids: which build of a program a snapshot's code addresses belong to.
//!
//! A device's snapshot holds raw code addresses, named on the host with the firmware's debug
//! info (`tracemalloc stats --elf`). Another build of the same firmware names them too, with
//! plausible and wrong lines; the build id the linker writes into the image (`--build-id`, an
//! `NT_GNU_BUILD_ID` note) tells the two apart. The device reads its own note and writes its
//! descriptor into the snapshot; the host compares it with the ELF file's.

use core::fmt;

/// The longest build id a snapshot keeps, in bytes. Linkers write 8 to 20 (`--build-id=sha1`:
/// 20); a file claiming more is forged, and a longer id is written as not known.
pub const MAX_LEN: usize = 255;

/// The descriptor of the `NT_GNU_BUILD_ID` note among `notes`: the contents of an ELF note
/// section or segment, in this machine's byte order, its entries aligned to `align` (4, or 8
/// for some 64-bit objects; anything else reads as 4). `None` when there is no such note or
/// the notes are malformed.
pub fn from_notes(notes: &[u8], align: usize) -> Option<&[u8]> {
    const NT_GNU_BUILD_ID: u32 = 3;
    let align = if align == 8 { 8 } else { 4 };
    let word = |at: usize| -> Option<u32> {
        let bytes = notes.get(at..at.checked_add(4)?)?;
        Some(u32::from_ne_bytes(bytes.try_into().ok()?))
    };
    let mut at = 0usize;
    while at < notes.len() {
        let name_size = word(at)? as usize;
        let desc_size = word(at.checked_add(4)?)? as usize;
        let kind = word(at.checked_add(8)?)?;
        let name_start = at.checked_add(12)?;
        let name_end = name_start.checked_add(name_size)?;
        let desc_start = name_end.checked_next_multiple_of(align)?;
        let desc_end = desc_start.checked_add(desc_size)?;
        let name = notes.get(name_start..name_end)?;
        let desc = notes.get(desc_start..desc_end)?;
        if kind == NT_GNU_BUILD_ID && name == b"GNU\0" {
            return Some(desc);
        }
        at = desc_end.checked_next_multiple_of(align)?;
    }
    None
}

/// Shows a build id as `readelf` and `file` do: lowercase hex, no separators.
#[derive(Clone, Copy, Debug)]
pub struct Hex<'a>(pub &'a [u8]);

impl fmt::Display for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

/// The bytes of `hex` (as [`Hex`] shows them, either case), or `None` when it is not an even
/// number of hex digits.
#[cfg(feature = "alloc")]
pub fn parse_hex(hex: &str) -> Option<alloc::vec::Vec<u8>> {
    let digits = hex.as_bytes();
    if !digits.len().is_multiple_of(2) {
        return None;
    }
    let nibble = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    digits
        .chunks_exact(2)
        .map(|pair| Some(nibble(pair[0])? << 4 | nibble(pair[1])?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn note(name: &[u8], kind: u32, desc: &[u8], align: usize, out: &mut [u8]) -> usize {
        let mut at = 0;
        let mut put = |bytes: &[u8], at: &mut usize| {
            out[*at..*at + bytes.len()].copy_from_slice(bytes);
            *at += bytes.len();
        };
        put(&(name.len() as u32).to_ne_bytes(), &mut at);
        put(&(desc.len() as u32).to_ne_bytes(), &mut at);
        put(&kind.to_ne_bytes(), &mut at);
        put(name, &mut at);
        at = at.next_multiple_of(align);
        put(desc, &mut at);
        at.next_multiple_of(align)
    }

    #[test]
    fn the_build_id_is_found_among_other_notes() {
        for align in [4, 8] {
            let mut notes = [0u8; 128];
            let mut len = note(b"GNU\0", 1, &[0; 16], align, &mut notes);
            len += note(b"Go\0", 3, b"not-gnu", align, &mut notes[len..]);
            len += note(b"GNU\0", 3, &[0xab, 0xcd, 0xef], align, &mut notes[len..]);
            assert_eq!(
                from_notes(&notes[..len], align),
                Some(&[0xab, 0xcd, 0xef][..])
            );
            // Cut before the build id's descriptor: malformed, not a shorter id.
            assert_eq!(from_notes(&notes[..len - align], align), None);
        }
        assert_eq!(from_notes(&[], 4), None);
        assert_eq!(from_notes(&[0xff; 12], 4), None);
    }

    #[test]
    #[cfg(feature = "alloc")]
    fn hex_round_trips_and_refuses_what_is_not_hex() {
        use alloc::string::ToString;
        let id = [0x0f, 0x99, 0x7a, 0x00, 0xff];
        let hex = Hex(&id).to_string();
        assert_eq!(hex, "0f997a00ff");
        assert_eq!(parse_hex(&hex).as_deref(), Some(&id[..]));
        assert_eq!(parse_hex("0F997A00FF").as_deref(), Some(&id[..]));
        assert_eq!(parse_hex("").as_deref(), Some(&[][..]));
        for bad in ["0f9", "0g", "+1", " 0f", "éé"] {
            assert_eq!(parse_hex(bad), None, "{bad:?}");
        }
    }
}
