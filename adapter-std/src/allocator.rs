//! The `#[global_allocator]` wrapper.
//!
//! Every method forwards to the inner allocator first and returns exactly what it returned; the
//! tracer only looks at the result. A null result records nothing, and a block the tracer could
//! not record is still handed out (and counted as untraced).

use core::alloc::{GlobalAlloc, Layout};
use std::alloc::System;

use crate::state;

/// Traces the blocks of an inner allocator. Install it as the global allocator:
///
/// ```no_run
/// #[global_allocator]
/// static ALLOC: tracemalloc::TracingAllocator = tracemalloc::TracingAllocator::system();
///
/// fn main() {
///     tracemalloc::start(16).unwrap();
///     let leak: &'static mut Vec<u8> = Box::leak(Box::new(vec![0; 4096]));
///     let snapshot = tracemalloc::take_snapshot().unwrap();
///     # let _ = (leak, snapshot);
/// }
/// ```
///
/// Use one per process, as the global allocator (a `static`, possibly inside another
/// allocator that wraps it): the tracer is process-wide, takes its own memory from the inner
/// allocator of the instance that switches tracing on, and keeps references to the inner
/// allocator to free the blocks that threads queue. Another instance's blocks are traced too,
/// but never grow the tracer's tables: its allocator did not give them.
#[repr(C)]
pub struct TracingAllocator<A: GlobalAlloc = System> {
    /// First, at the wrapper's own address (see [`inner_address`]).
    inner: A,
    /// Gives every wrapper a byte of its own, so that no two wrappers share an address, even
    /// around a zero-sized allocator such as `System`.
    _own_address: u8,
}

/// Tells inner allocators apart: the address of the wrapper's `inner` field, which is the
/// wrapper's own (`repr(C)`, first field) and differs between wrappers (each holds at least a
/// byte). Only references to a wrapper's inner allocator are compared, never arbitrary ones.
/// Not the vtable: one allocator may have several, one per crate that made a reference to it.
#[inline(always)]
pub(crate) fn inner_address(inner: &dyn GlobalAlloc) -> usize {
    inner as *const dyn GlobalAlloc as *const () as usize
}

impl<A: GlobalAlloc> TracingAllocator<A> {
    /// Wraps `inner`.
    pub const fn new(inner: A) -> Self {
        TracingAllocator {
            inner,
            _own_address: 0,
        }
    }

    /// The wrapped allocator.
    pub const fn inner(&self) -> &A {
        &self.inner
    }
}

impl TracingAllocator<System> {
    /// Wraps the system allocator.
    pub const fn system() -> Self {
        TracingAllocator::new(System)
    }
}

impl Default for TracingAllocator<System> {
    fn default() -> Self {
        Self::system()
    }
}

// The traced paths live out of line, so that while tracing is off each method is one relaxed
// load, a compare and a tail call into the inner allocator, with no frame of its own to set up.
// While sampling, the countdown (allocations) or the page filter (frees) is tested inline as
// well, and only blocks that are or become sampled leave the fast path.
impl<A: GlobalAlloc> TracingAllocator<A> {
    /// # Safety
    /// `GlobalAlloc::alloc`'s (or `alloc_zeroed`'s) contract for `layout`.
    #[inline(never)]
    unsafe fn alloc_traced(&self, layout: Layout, zeroed: bool) -> *mut u8 {
        // SAFETY: forwarded with the caller's layout, which meets the contract.
        let ptr = unsafe {
            if zeroed {
                self.inner.alloc_zeroed(layout)
            } else {
                self.inner.alloc(layout)
            }
        };
        if !ptr.is_null() && state::should_record(&self.inner) {
            state::on_alloc(&self.inner, ptr as usize, layout.size());
        }
        ptr
    }

    /// # Safety
    /// `GlobalAlloc::dealloc`'s contract for `ptr` and `layout`.
    #[inline(never)]
    unsafe fn dealloc_traced(&self, ptr: *mut u8, layout: Layout) {
        if state::is_on() {
            // SAFETY: the caller's contract, forwarded unchanged.
            unsafe { state::dealloc(&self.inner, ptr, layout) }
        } else {
            // SAFETY: as above.
            unsafe { self.inner.dealloc(ptr, layout) }
        }
    }

    /// # Safety
    /// `GlobalAlloc::realloc`'s contract for `ptr`, `layout` and `new_size`.
    #[inline(never)]
    unsafe fn realloc_traced(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if state::should_record(&self.inner) {
            // SAFETY: the caller's contract, forwarded unchanged.
            unsafe { state::realloc(&self.inner, ptr, layout, new_size) }
        } else {
            // SAFETY: as above.
            unsafe { self.inner.realloc(ptr, layout, new_size) }
        }
    }
}

// SAFETY: every method forwards to `inner` with the caller's arguments unchanged and returns its
// result unchanged, so `inner`'s guarantees are ours. The tracer reads only the returned address
// and the requested size, never the block's memory.
unsafe impl<A: GlobalAlloc> GlobalAlloc for TracingAllocator<A> {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if state::passes_alloc(layout.size()) {
            // SAFETY: forwarded with the caller's layout, which meets `alloc`'s contract.
            return unsafe { self.inner.alloc(layout) };
        }
        // SAFETY: as above.
        unsafe { self.alloc_traced(layout, false) }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if state::passes_alloc(layout.size()) {
            // SAFETY: forwarded with the caller's layout, which meets the contract.
            return unsafe { self.inner.alloc_zeroed(layout) };
        }
        // SAFETY: as above.
        unsafe { self.alloc_traced(layout, true) }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if state::passes_free(ptr as usize) {
            // SAFETY: the caller guarantees `ptr` was allocated by this allocator (so by
            // `inner`) with `layout`; forwarded unchanged.
            return unsafe { self.inner.dealloc(ptr, layout) };
        }
        // SAFETY: as above.
        unsafe { self.dealloc_traced(ptr, layout) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if state::passes_realloc(ptr as usize, new_size) {
            // SAFETY: the caller's contract for `realloc` is forwarded unchanged.
            return unsafe { self.inner.realloc(ptr, layout, new_size) };
        }
        // SAFETY: as above.
        unsafe { self.realloc_traced(ptr, layout, new_size) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static FIRST: TracingAllocator = TracingAllocator::system();
    static SECOND: TracingAllocator = TracingAllocator::system();

    #[test]
    fn wrappers_of_a_zero_sized_allocator_have_distinct_inner_addresses() {
        assert!(size_of::<TracingAllocator<System>>() > 0);
        let (first, second) = (inner_address(FIRST.inner()), inner_address(SECOND.inner()));
        assert_ne!(first, second);
        assert_eq!(first, &FIRST as *const TracingAllocator as usize);
        // The same wrapper, whatever reference to its allocator is taken.
        let as_dyn: &dyn GlobalAlloc = FIRST.inner();
        assert_eq!(inner_address(as_dyn), first);
    }
}
