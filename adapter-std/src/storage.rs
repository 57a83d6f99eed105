//! Arrays for the tracer's tables, taken from the inner allocator directly (never through the
//! traced path) and given back to it when a table moves to bigger storage.

use core::alloc::{GlobalAlloc, Layout};

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
