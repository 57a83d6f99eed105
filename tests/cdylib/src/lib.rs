//! A shared library with its own tracer, loaded by `tests/tests/cdylib.rs`.

use tracemalloc::TracingAllocator;

#[global_allocator]
static ALLOC: TracingAllocator = TracingAllocator::system();

/// Traces one allocation and writes `file:line` of its first frame into `out` (NUL-terminated,
/// cut to `len`); returns the length written, or -1 when tracing failed.
///
/// # Safety
/// `out` points to `len` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn tracemalloc_probe(out: *mut u8, len: usize) -> isize {
    if tracemalloc::start(4).is_err() {
        return -1;
    }
    let block = vec![1u8; 7000]; // PROBE
    let found = tracemalloc::object_traceback(block.as_ptr())
        .map(|tb| format!("{}:{}", tb.frames[0].filename, tb.frames[0].lineno));
    tracemalloc::stop();
    let Some(found) = found else {
        return -1;
    };
    let n = found.len().min(len.saturating_sub(1));
    // SAFETY: the caller's contract: `out` has `len` bytes, and `n < len`.
    unsafe {
        core::ptr::copy_nonoverlapping(found.as_ptr(), out, n);
        *out.add(n) = 0;
    }
    n as isize
}
