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
//! `--build-id` the section is empty and snapshots say the build is not known. Built for a host
//! (the crate's own tests), there is no such script and the build is not known.

/// The running firmware's GNU build id: the note's descriptor, 20 bytes with
/// `--build-id=sha1`; empty when the firmware was linked without `--build-id`.
#[cfg(target_os = "none")]
pub fn build_id() -> &'static [u8] {
    unsafe extern "C" {
        // Defined by `tracemalloc-build-id.x`: the bounds of the `.note.gnu.build-id` section.
        // Zero-sized: they mark addresses, and the bytes between belong to neither.
        static __tracemalloc_build_id_start: [u8; 0];
        static __tracemalloc_build_id_end: [u8; 0];
    }
    let start = (&raw const __tracemalloc_build_id_start).cast::<u8>();
    let end = (&raw const __tracemalloc_build_id_end).cast::<u8>();
    let len = (end as usize).saturating_sub(start as usize);
    let start = core::ptr::with_exposed_provenance::<u8>(start.expose_provenance());
    // SAFETY: the linker script puts both symbols around the note section, in flash: the `len`
    // bytes from `start` are part of the image, initialised and never written while it runs,
    // and the pointer carries the provenance of the whole image (exposed, as for any address a
    // linker script defines).
    let notes = unsafe { core::slice::from_raw_parts(start, len) };
    // The section is 4-aligned, as notes of 32-bit objects are.
    tracemalloc_core::build_id::from_notes(notes, 4).unwrap_or(&[])
}

/// The running program's GNU build id: not known on a host, which has no such linker script.
#[cfg(not(target_os = "none"))]
pub fn build_id() -> &'static [u8] {
    &[]
}
