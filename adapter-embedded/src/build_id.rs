//! The firmware's own GNU build id (feature `build-id`), which [`crate::TracedHeap`] writes into
//! every snapshot so that the host CLI refuses another build's debug info (its lines would look
//! right and be wrong).
//!
//! The linker writes the id into the image as an ELF note when asked (`--build-id`); the linker
//! script this crate ships, `tracemalloc-build-id.x`, keeps that note in flash between two
//! symbols. Link with both, after cortex-m-rt's `link.x`:
//!
//! ```toml
//! # .cargo/config.toml
//! [target.thumbv7m-none-eabi]
//! rustflags = [
//!   "-C", "link-arg=-Tlink.x",
//!   "-C", "link-arg=-Ttracemalloc-build-id.x",
//!   "-C", "link-arg=--build-id=sha1",
//! ]
//! ```
//!
//! Without the script the firmware does not link (the symbols are missing); without
//! `--build-id` the section is empty and snapshots say the build is not known.

use tracemalloc_core::build_id::from_notes;

unsafe extern "C" {
    // Defined by `tracemalloc-build-id.x`: the bounds of the `.note.gnu.build-id` section.
    static __tracemalloc_build_id_start: u8;
    static __tracemalloc_build_id_end: u8;
}

/// The running firmware's GNU build id: the note's descriptor, 20 bytes with
/// `--build-id=sha1`; empty when the firmware was linked without `--build-id`.
pub fn build_id() -> &'static [u8] {
    let start = &raw const __tracemalloc_build_id_start;
    let end = &raw const __tracemalloc_build_id_end;
    let len = (end as usize).saturating_sub(start as usize);
    // SAFETY: the linker script puts both symbols around the note section, in flash: the `len`
    // bytes from `start` are part of the image, initialised and never written while it runs.
    let notes = unsafe { core::slice::from_raw_parts(start, len) };
    // The section is 4-aligned, as notes of 32-bit objects are.
    from_notes(notes, 4).unwrap_or(&[])
}
