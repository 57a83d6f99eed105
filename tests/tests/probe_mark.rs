//! While sampling, `start()` marks its probe block's page in the sampling filter for the time
//! of the probe's free (`deferred::note_global`). A `clear_traces()` meanwhile zeroes the
//! filter, and a block sampled after it on the same page marks the page again: the probe's
//! unmark must not take that mark, or the block's free skips the tracer and its trace stays
//! for good. Here a thread is held inside the probe's free while the main thread clears.
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};

use tracemalloc::{Config, TracingAllocator};
use tracemalloc_tests::Arena;

static ARENA: Arena = Arena::new();

thread_local! {
    static HOOKED: Cell<bool> = const { Cell::new(false) };
}
static EIGHT_BYTE_FREES: AtomicUsize = AtomicUsize::new(0);
static IN_WINDOW: AtomicUsize = AtomicUsize::new(0); // probe address while S waits
static GO: AtomicBool = AtomicBool::new(false);

/// Small blocks from an arena (neighbours share a page), the rest from `System`; on the hooked
/// thread, the second free of 8 bytes (note_global's probe) waits for the main thread.
struct Hooked;

// SAFETY: blocks of up to 256 bytes come from the arena (never reused, 64-byte aligned, at
// least as large as asked), the rest from `System`, freed there with their own layout; the
// hook only waits.
unsafe impl GlobalAlloc for Hooked {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() <= 256 && layout.align() <= 64 {
            let p = ARENA.take(layout.size().div_ceil(64) * 64);
            if !p.is_null() {
                return p;
            }
        }
        // SAFETY: the caller's contract is forwarded.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // The hooked thread's second free of 8 bytes is the probe's.
        if layout.size() == 8
            && HOOKED.try_with(Cell::get).unwrap_or(false)
            && EIGHT_BYTE_FREES.fetch_add(1, SeqCst) == 1
        {
            IN_WINDOW.store(ptr as usize, SeqCst);
            while !GO.load(SeqCst) {
                std::hint::spin_loop();
            }
        }
        if !ARENA.contains(ptr) {
            // SAFETY: not the arena's, so `System`'s, of this layout.
            unsafe { System.dealloc(ptr, layout) }
        }
    }
}

#[global_allocator]
static ALLOC: TracingAllocator<Hooked> = TracingAllocator::new(Hooked);

fn sampled() -> Config {
    Config {
        nframe: 4,
        sample_interval: 1,
        ..Config::default()
    }
}

#[inline(never)]
fn site() -> Box<[u8; 48]> {
    Box::new([7u8; 48]) // SITE
}

fn main() {
    tracemalloc::start_with(sampled()).unwrap();
    let starter = std::thread::spawn(|| {
        HOOKED.with(|h| h.set(true));
        // Already tracing: nothing changes, but `start_with` probes again.
        tracemalloc::start_with(sampled()).unwrap();
        HOOKED.with(|h| h.set(false));
    });
    while IN_WINDOW.load(SeqCst) == 0 {
        std::thread::yield_now();
    }
    let probe = IN_WINDOW.load(SeqCst);
    tracemalloc::clear_traces(); // between the probe's mark and unmark
    let block = site();
    let addr = &*block as *const [u8; 48] as usize;
    assert!(
        tracemalloc::object_traceback(addr as *const u8).is_some(),
        "sampled and traced"
    );
    GO.store(true, SeqCst);
    starter.join().unwrap();
    drop(block);
    let after = tracemalloc::object_traceback(addr as *const u8).is_some();
    let snapshot = tracemalloc::take_snapshot().unwrap();
    let in_snapshot = snapshot.traces.iter().any(|t| t.size == 48);
    let (current, _) = tracemalloc::traced_memory();
    println!(
        "probe {probe:#x}, block {addr:#x} (same page: {}); after the free: object_traceback {after}, in snapshot {in_snapshot}, traced_memory {current}",
        probe >> 12 == addr >> 12
    );
    assert_eq!(probe >> 12, addr >> 12, "the block shares the probe's page");
    assert!(!after && !in_snapshot, "a freed block shows after its free");
    assert_eq!(current, 0);
}
