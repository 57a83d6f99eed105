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
/// Use one per process, as the global allocator: the tracer is process-wide and takes its own
/// memory from the inner allocator of the instance that switches tracing on.
pub struct TracingAllocator<A: GlobalAlloc = System> {
    inner: A,
}

impl<A: GlobalAlloc> TracingAllocator<A> {
    /// Wraps `inner`.
    pub const fn new(inner: A) -> Self {
        TracingAllocator { inner }
    }

    /// The wrapped allocator.
    pub const fn inner(&self) -> &A {
        &self.inner
    }
}

impl TracingAllocator<System> {
    /// Wraps the system allocator.
    pub const fn system() -> Self {
        TracingAllocator { inner: System }
    }
}

impl Default for TracingAllocator<System> {
    fn default() -> Self {
        Self::system()
    }
}

impl<A: GlobalAlloc> TracingAllocator<A> {
    #[inline(always)]
    fn tracing(&self) -> bool {
        state::should_record(&self.inner)
    }
}

// SAFETY: every method forwards to `inner` with the caller's arguments unchanged and returns its
// result unchanged, so `inner`'s guarantees are ours. The tracer reads only the returned address
// and the requested size, never the block's memory.
unsafe impl<A: GlobalAlloc> GlobalAlloc for TracingAllocator<A> {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's layout, which meets `alloc`'s contract.
        let ptr = unsafe { self.inner.alloc(layout) };
        if !ptr.is_null() && self.tracing() {
            state::on_alloc(&self.inner, ptr as usize, layout.size());
        }
        ptr
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let ptr = unsafe { self.inner.alloc_zeroed(layout) };
        if !ptr.is_null() && self.tracing() {
            state::on_alloc(&self.inner, ptr as usize, layout.size());
        }
        ptr
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if state::is_on() {
            // SAFETY: the caller guarantees `ptr` was allocated by this allocator (so by
            // `inner`) with `layout`; forwarded unchanged.
            unsafe { state::dealloc(&self.inner, ptr, layout) }
        } else {
            // SAFETY: as above.
            unsafe { self.inner.dealloc(ptr, layout) }
        }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if self.tracing() {
            // SAFETY: the caller's contract for `realloc` is forwarded unchanged.
            unsafe { state::realloc(&self.inner, ptr, layout, new_size) }
        } else {
            // SAFETY: the caller's contract for `realloc` is forwarded unchanged.
            unsafe { self.inner.realloc(ptr, layout, new_size) }
        }
    }
}
