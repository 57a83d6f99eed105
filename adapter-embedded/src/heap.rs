//! The heaps the tracer can wrap.
//!
//! Any [`GlobalAlloc`] that can say how many bytes it has handed out will do; embedded-alloc's
//! `LlffHeap` (feature `llff`) and `TlsfHeap` (feature `tlsf`) implement [`Heap`] here.

use core::alloc::GlobalAlloc;

/// A heap the traced heap wraps: an allocator that reports its own usage.
///
/// `used()` is the heap's own view (it includes rounding and per-block overhead where the
/// heap counts them), so traced bytes never exceed it: the firmware can check that.
pub trait Heap: GlobalAlloc {
    /// Bytes in use, as the heap counts them.
    fn used(&self) -> usize;
    /// Bytes still available, as the heap counts them.
    fn free(&self) -> usize;
}

#[cfg(feature = "llff")]
impl Heap for embedded_alloc::LlffHeap {
    fn used(&self) -> usize {
        embedded_alloc::LlffHeap::used(self)
    }
    fn free(&self) -> usize {
        embedded_alloc::LlffHeap::free(self)
    }
}

#[cfg(feature = "tlsf")]
impl Heap for embedded_alloc::TlsfHeap {
    fn used(&self) -> usize {
        embedded_alloc::TlsfHeap::used(self)
    }
    fn free(&self) -> usize {
        embedded_alloc::TlsfHeap::free(self)
    }
}
