//! Arrays for the tracer's tables, taken from the inner allocator directly (never through the
//! traced path) and given back to it when a table moves to bigger storage or tracing stops.
//!
//! All of the tracer's storage comes from one allocator, its [source](set_source): the inner
//! allocator of the wrapper that armed the tracer. A second wrapper instance that records a
//! block does not grow the tables from its own allocator, so storage is never freed through an
//! allocator that did not hand it out.

use core::alloc::{GlobalAlloc, Layout};
use core::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use crate::deferred::words_of;

/// The source's reference as two words ([`words_of`]); zeros until the first arming.
static SOURCE: [AtomicUsize; 2] = [AtomicUsize::new(0), AtomicUsize::new(0)];

/// Makes `inner` the allocator the tracer's storage comes from. Called by an arming that finds
/// no storage, before it allocates any.
pub(crate) fn set_source(inner: &dyn GlobalAlloc) {
    let words = words_of(inner);
    SOURCE[0].store(words[0], Relaxed);
    SOURCE[1].store(words[1], Relaxed);
}

/// Whether the tracer's storage comes from `inner`, so that `inner` may grow it.
pub(crate) fn is_source(inner: &dyn GlobalAlloc) -> bool {
    source() == words_of(inner)
}

/// The words of the allocator the storage comes from.
pub(crate) fn source() -> [usize; 2] {
    [SOURCE[0].load(Relaxed), SOURCE[1].load(Relaxed)]
}

/// A zeroed array of `len` values from `inner`, or `None` when it has no memory.
///
/// Only for types whose all-zero bit pattern is a valid (empty) value: trace slots, traceback
/// entries and integers.
pub(crate) fn allocate_array<T>(inner: &dyn GlobalAlloc, len: usize) -> Option<&'static mut [T]> {
    let len = len.max(1);
    let layout = Layout::array::<T>(len).ok()?;
    // SAFETY: the layout has a non-zero size. The memory is zeroed, and every `T` used here is
    // valid when all-zero. The block is owned by the returned slice alone until `free_array`
    // gives it back, so the `'static` borrow is unique.
    unsafe {
        let ptr = inner.alloc_zeroed(layout).cast::<T>();
        if ptr.is_null() {
            return None;
        }
        Some(core::slice::from_raw_parts_mut(ptr, len))
    }
}

/// An uninitialised array of `len` values from `inner` (not zeroed: a capture buffer is written
/// before it is read, and zeroing 65 535 frames on every allocation would cost microseconds).
pub(crate) fn allocate_uninit<T>(
    inner: &dyn GlobalAlloc,
    len: usize,
) -> Option<&'static mut [core::mem::MaybeUninit<T>]> {
    let len = len.max(1);
    let layout = Layout::array::<T>(len).ok()?;
    // SAFETY: the layout has a non-zero size. `MaybeUninit` needs no initialisation. The block
    // is owned by the returned slice alone until `free_array` gives it back.
    unsafe {
        let ptr = inner.alloc(layout).cast::<core::mem::MaybeUninit<T>>();
        if ptr.is_null() {
            return None;
        }
        Some(core::slice::from_raw_parts_mut(ptr, len))
    }
}

/// Gives an array from [`allocate_array`] or [`allocate_uninit`] back to `inner`. An empty
/// array came from neither (they never return one), so it is not freed.
pub(crate) fn free_array<T>(inner: &dyn GlobalAlloc, array: &'static mut [T]) {
    if array.is_empty() {
        return;
    }
    if let Ok(layout) = Layout::array::<T>(array.len()) {
        // SAFETY: `array` came from `allocate_array` on this allocator with this length (tables
        // hand back exactly the storage they were given), so the layout matches, and the caller
        // gave up its only reference.
        unsafe { inner.dealloc(array.as_mut_ptr().cast(), layout) }
    }
}
