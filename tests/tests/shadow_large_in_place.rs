//! Blocks of 1 KiB and more are traced in the tables while smaller ones have shadow cells
//! (`adapter-std/src/shadow.rs`, `LARGE`). Under an inner allocator that reallocates in place,
//! a block resized across that size keeps its address while its trace changes storage, both
//! ways, and a failed reallocation leaves the trace where it was. Blocks recorded with `track`
//! in the default domain are found by `untrack` in either storage, though `untrack` has no size
//! to tell which, and a block tracked again at the same address replaces the trace there.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

use tracemalloc::{Config, Storage, TracingAllocator};

/// Every block lies in a slot of at least [`SLOT`] bytes, so that reallocations within it stay
/// in place; beyond it they move, or fail while [`FAIL`] is set.
struct InPlace;

const SLOT: usize = 4096;
static FAIL: AtomicBool = AtomicBool::new(false);

impl InPlace {
    fn slot(layout: Layout) -> Layout {
        Layout::from_size_align(layout.size().max(SLOT), layout.align().max(16))
            .expect("test layouts are small")
    }
}

// SAFETY: every block is a `System` block of `slot(layout)`, at least as large and as aligned
// as the caller's layout; `dealloc` frees it with the same slot layout. A reallocation within
// the slot returns the same block (its bytes stay), a failed one returns null and leaves it.
unsafe impl GlobalAlloc for InPlace {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the slot layout has a non-zero size.
        unsafe { System.alloc(Self::slot(layout)) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated with the slot of this layout.
        unsafe { System.dealloc(ptr, Self::slot(layout)) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if layout.size().max(new_size) <= SLOT {
            return ptr;
        }
        if FAIL.load(Relaxed) {
            return std::ptr::null_mut();
        }
        let new_layout = Layout::from_size_align(new_size, layout.align()).expect("valid");
        // SAFETY: a non-zero size; the copy stays within both live, distinct blocks, and the old
        // block is freed with its own layout.
        unsafe {
            let new = self.alloc(new_layout);
            if !new.is_null() {
                std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
            new
        }
    }
}

#[global_allocator]
static ALLOC: TracingAllocator<InPlace> = TracingAllocator::new(InPlace);

tracemalloc_tests::this_file!();

#[inline(never)]
fn small() -> *mut u8 {
    let layout = Layout::from_size_align(512, 8).unwrap();
    // `black_box` keeps the call from becoming a tail call in release builds, which would take
    // this line out of the traceback.
    // SAFETY: a non-zero size.
    std::hint::black_box(unsafe { std::alloc::alloc(layout) }) // SMALL
}

#[inline(never)]
fn resized(ptr: *mut u8, from: usize, to: usize) -> *mut u8 {
    let layout = Layout::from_size_align(from, 8).unwrap();
    // SAFETY: `ptr` is a live block of `layout` (the caller's), `to` is non-zero.
    std::hint::black_box(unsafe { std::alloc::realloc(ptr, layout, to) }) // RESIZED
}

/// The sizes of the traced blocks allocated from this file's functions, smallest first, each
/// with its traceback's functions (for the message of a failed comparison). The test harness's
/// `main` is this file's too, as symbolization names it: its thread's blocks (a channel's
/// waiting context, allocated when the test runs long) are not the test's.
fn traced_from_here() -> Vec<(u64, String)> {
    let snapshot = tracemalloc::take_snapshot().unwrap();
    let ours = |f: &tracemalloc::Frame| {
        &*f.filename == THIS_FILE && !f.function.as_deref().is_some_and(|f| f.ends_with("::main"))
    };
    let mut traces: Vec<(u64, String)> = snapshot
        .traces
        .iter()
        .filter_map(|t| {
            let frames = &snapshot.traceback_of(t).frames;
            frames.iter().any(ours).then(|| {
                let functions: Vec<String> = frames
                    .iter()
                    .map(|f| format!("{}:{}", f.function.as_deref().unwrap_or("?"), f.lineno))
                    .collect();
                (t.size, functions.join(" < "))
            })
        })
        .collect();
    traces.sort_unstable();
    traces
}

/// [`traced_from_here`]'s sizes, with all of it in the message when they are not `expected`.
fn assert_traced_sizes(expected: &[u64], why: &str) {
    let traces = traced_from_here();
    let sizes: Vec<u64> = traces.iter().map(|(size, _)| *size).collect();
    assert_eq!(sizes, expected, "{why}: {traces:#?}");
}

#[test]
fn blocks_resized_in_place_move_between_a_cell_and_the_tables() {
    tracemalloc::start_with(Config {
        nframe: 8,
        storage: Storage::Shadow,
        ..Config::default()
    })
    .unwrap();
    drop(std::hint::black_box(Box::new(1u8))); // switches tracing on
    let (base, _) = tracemalloc::traced_memory();
    let grown_by = |bytes: u64| tracemalloc::traced_memory().0 - base == bytes as usize;

    let block = small();
    assert!(grown_by(512));
    assert_eq!(traced_here("SMALL"), Some((512, 1)));

    let same = resized(block, 512, 2048); // in place, from its cell to the tables
    assert_eq!(same, block);
    assert!(grown_by(2048));
    assert_eq!(traced_here("SMALL"), None);
    assert_eq!(traced_here("RESIZED"), Some((2048, 1)));
    assert_traced_sizes(&[2048], "one trace, not the cell's too");

    FAIL.store(true, Relaxed);
    assert!(
        resized(block, 2048, 8192).is_null(),
        "fails, the block untouched"
    );
    FAIL.store(false, Relaxed);
    assert!(grown_by(2048));
    assert_eq!(traced_here("RESIZED"), Some((2048, 1)));

    let same = resized(block, 2048, 100); // in place, from the tables to its cell
    assert_eq!(same, block);
    assert!(grown_by(100));
    assert_traced_sizes(&[100], "one trace, not the table's too");
    let traceback = tracemalloc::object_traceback(block).expect("the block's traceback");
    assert_eq!(traceback.frames[0].lineno, line_of("RESIZED"));

    let moved = resized(block, 100, 3 * SLOT); // moves, to the tables
    assert_ne!(moved, block);
    assert!(grown_by(3 * SLOT as u64));
    // SAFETY: `moved` is live, of that layout.
    unsafe { std::alloc::dealloc(moved, Layout::from_size_align(3 * SLOT, 8).unwrap()) };
    assert!(grown_by(0));
    assert_traced_sizes(&[], "freed");

    // `untrack` finds a large and a small tracked block (no live block there: an address far
    // from any heap).
    let far = 0x7000_0000_0000usize as *const u8;
    assert!(tracemalloc::track(0, far, 4096));
    assert!(tracemalloc::track(0, far.wrapping_add(8192), 16));
    assert!(grown_by(4096 + 16));
    assert!(tracemalloc::untrack(0, far), "the tables' block");
    assert!(
        tracemalloc::untrack(0, far.wrapping_add(8192)),
        "the cell's block"
    );
    assert!(grown_by(0));
    assert!(!tracemalloc::untrack(0, far), "forgotten once");

    // Tracked again at the same address, a block replaces the trace there, whichever storage
    // or grid of cells each size takes (4 KiB: the tables; 300 bytes: the coarse grid; 16 bytes:
    // its span's cell).
    let at = far.wrapping_add(64 << 10);
    for (size, then) in [(4096, 300), (300, 16), (16, 4096)] {
        assert!(tracemalloc::track(0, at, size));
        assert!(tracemalloc::track(0, at, then));
        assert!(grown_by(then as u64), "{size} then {then}");
        assert!(tracemalloc::untrack(0, at));
        assert!(grown_by(0));
        assert!(
            !tracemalloc::untrack(0, at),
            "{size} then {then}: one trace"
        );
    }
    tracemalloc::stop();
}
