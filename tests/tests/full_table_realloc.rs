//! A reallocation takes its block's trace out of the table before the inner `realloc` runs
//! (no lock is held across it), so other threads may fill the table meanwhile. When the block
//! stays (the realloc fails, or succeeds in place), its trace must find room again even in a
//! table that is full and may not grow; otherwise a live block would turn untraced. Only such a
//! trace passes the table's load limit: blocks the full table refused stay untraced when they
//! are reallocated in place.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::time::{Duration, Instant};

use tracemalloc::{Config, Storage, TracingAllocator};
use tracemalloc_tests::{traced_now, Arena};

/// The size whose reallocation fails, after another thread filled the tables.
const FAIL: usize = 777_777;
/// The block reallocated, and the filler's blocks: both come from [`ARENA`].
const BLOCK: usize = 2048;
const FILLER: usize = 64;
const FILLER_LAYOUT: Layout = Layout::new::<[u8; FILLER]>();

static IN_REALLOC: AtomicBool = AtomicBool::new(false);
static FILLED: AtomicBool = AtomicBool::new(false);

/// Blocks of [`BLOCK`] and [`FILLER`] bytes, from any thread, are cut from this, so that they
/// all lie in one MiB of address space, which the tracer's tables give to one shard.
static ARENA: Arena = Arena::new();

fn in_arena(ptr: *mut u8) -> bool {
    ARENA.contains(ptr)
}

struct FailsAfterFill;

// SAFETY: blocks of `BLOCK` and `FILLER` bytes are distinct 64-byte-aligned parts of `ARENA`,
// never reused (their frees do nothing; a realloc shrinks one in place or moves it to `System`
// with its contents), or null once it is used up; everything else is `System`'s, unchanged.
// A realloc to `FAIL` bytes waits (without allocating) and returns null, which
// `GlobalAlloc::realloc` allows (the old block stays valid and untouched).
unsafe impl GlobalAlloc for FailsAfterFill {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if (layout.size() == BLOCK || layout.size() == FILLER) && layout.align() <= 64 {
            return ARENA.take(layout.size().next_multiple_of(64));
        }
        // SAFETY: the caller's contract, forwarded.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if !in_arena(ptr) {
            // SAFETY: as above.
            unsafe { System.dealloc(ptr, layout) }
        }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size == FAIL {
            IN_REALLOC.store(true, SeqCst);
            let start = Instant::now();
            while !FILLED.load(SeqCst) && start.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_millis(1));
            }
            return std::ptr::null_mut();
        }
        if in_arena(ptr) && new_size <= layout.size() {
            return ptr; // shrunk in place
        }
        if in_arena(ptr) {
            // A 64-byte buffer of the harness's growing: moved out of the arena.
            // SAFETY: `new_size` is non-zero (the caller's contract) with `layout`'s alignment.
            let new = unsafe {
                System.alloc(Layout::from_size_align_unchecked(new_size, layout.align()))
            };
            if !new.is_null() {
                // SAFETY: both blocks are live, distinct, and hold at least this many bytes.
                unsafe { std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size)) };
            }
            return new;
        }
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: TracingAllocator<FailsAfterFill> = TracingAllocator::new(FailsAfterFill);

#[test]
fn a_realloc_restores_only_the_trace_that_left_a_full_table() {
    tracemalloc::start_with(Config {
        nframe: 1,
        storage: Storage::Table,
        initial_slots_per_shard: 64,
        grow: false,
        ..Config::default()
    })
    .unwrap();
    let layout = Layout::from_size_align(BLOCK, 16).unwrap();
    // SAFETY: a non-zero size.
    let block = unsafe { std::alloc::alloc(layout) };
    assert!(!block.is_null());
    assert!(in_arena(block) && traced_now(block), "traced");
    let filler = std::thread::spawn(|| {
        while !IN_REALLOC.load(SeqCst) {
            std::thread::sleep(Duration::from_millis(1));
        }
        // A shard of 64 slots holds 48 traces: the block's shard fills, the slot it left
        // among them.
        let blocks: Vec<usize> = (0..1024)
            // SAFETY: a non-zero size.
            .map(|_| unsafe { std::alloc::alloc(FILLER_LAYOUT) } as usize)
            .collect();
        FILLED.store(true, SeqCst);
        blocks
    });
    // SAFETY: `block` is live, of `layout`; `FAIL` is non-zero and far from overflow.
    let moved = unsafe { std::alloc::realloc(block, layout, FAIL) };
    assert!(moved.is_null());
    let blocks = filler.join().unwrap();
    assert!(FILLED.load(SeqCst));
    let untraced = tracemalloc::take_snapshot()
        .unwrap()
        .counters
        .untraced_blocks;
    assert!(
        untraced > 900,
        "the shard filled up: {untraced} blocks went untraced"
    );
    assert!(
        traced_now(block),
        "the live block's trace came back into its full table"
    );
    // Blocks the full table refused, shrunk in place: no trace left their table, so none comes
    // back past its limit (only the block above did).
    for &filler in &blocks {
        // SAFETY: each filler block is live, of `FILLER_LAYOUT`; 32 is non-zero.
        let shrunk = unsafe { std::alloc::realloc(filler as *mut u8, FILLER_LAYOUT, 32) };
        assert_eq!(shrunk as usize, filler, "in place");
    }
    let traced_fillers = blocks
        .iter()
        .filter(|&&filler| tracemalloc::object_traceback(filler as *const u8).is_some())
        .count();
    assert!(
        traced_fillers <= 48,
        "{traced_fillers} fillers traced in a shard of 48 traces and the block restored"
    );
    for &filler in &blocks {
        // SAFETY: live, shrunk to 32 bytes in place.
        unsafe { std::alloc::dealloc(filler as *mut u8, Layout::from_size_align(32, 1).unwrap()) };
    }
    // SAFETY: `block` is still live (the realloc failed), of `layout`.
    unsafe { std::alloc::dealloc(block, layout) };
    assert!(!traced_now(block), "the free forgets it");
    tracemalloc::stop();
}
