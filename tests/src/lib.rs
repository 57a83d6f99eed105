//! Cross-crate tests live in `tests/`; this library holds the helpers several of them share.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicI64, Ordering::Relaxed};

use tracemalloc::{Filter, KeyType, Snapshot, TraceFilter};

/// The 1-based line of `source` that ends with the comment `// MARKER`: tests tag the lines
/// whose allocations they look for in snapshots.
pub fn marked_line(source: &str, marker: &str) -> u32 {
    let needle = format!("// {marker}");
    source
        .lines()
        .position(|l| l.trim_end().ends_with(&needle))
        .unwrap_or_else(|| panic!("marker {marker} not found")) as u32
        + 1
}

/// `n` blocks made by `make`, kept in a Vec allocated before the first of them.
pub fn blocks<T>(n: usize, make: impl Fn() -> T) -> Vec<T> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(make());
    }
    out
}

/// `(size, count)` of the traced blocks allocated at `file:line` (the first frame's line).
pub fn traced_at(snapshot: &Snapshot, file: &str, line: u32) -> Option<(u64, u64)> {
    let only_file = [TraceFilter::Filter(Filter::new(true, file))];
    let stats = snapshot
        .filter_traces(&only_file)
        .statistics(KeyType::Lineno, false)
        .unwrap();
    stats
        .iter()
        .find(|s| s.traceback.frames[0].lineno == line)
        .map(|s| (s.size, s.count))
}

/// The system allocator, counting the bytes it has handed out and not yet taken back (in
/// [`LIVE`]): an inner allocator for tests that check what reaches it.
pub struct Counting;

/// Bytes [`Counting`] has handed out and not yet taken back.
pub static LIVE: AtomicI64 = AtomicI64::new(0);

// SAFETY: forwards to `System` unchanged; only counts sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is forwarded.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as i64, Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as i64, Relaxed);
        // SAFETY: the caller's contract is forwarded.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is forwarded.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as i64, Relaxed);
        }
        p
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's contract is forwarded.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_add(new_size as i64 - layout.size() as i64, Relaxed);
        }
        p
    }
}
