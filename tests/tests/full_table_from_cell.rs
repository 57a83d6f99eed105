//! A block whose trace leaves its shadow cell for a reallocation, and that stays where it is,
//! keeps its trace even when the trace must land in a table that is full and may not grow:
//! here it grows in place past what a cell holds (1 KiB), so its trace moves to the tables. A
//! trace that left its table comes back past the load limit (`full_table_realloc.rs`); one
//! that left its cell must too, or a live block turns untraced.

use std::alloc::{GlobalAlloc, Layout, System};

use tracemalloc::{Config, Storage, TracingAllocator};
use tracemalloc_tests::{traced_now, Arena};

/// Every block of the test's sizes takes a slot of this many bytes of [`ARENA`], and grows in
/// place within it.
const SLOT: usize = 4096;
const SMALL: usize = 100;
const LARGE: usize = 2048;
/// Past every cell's reach (blocks of 1 KiB and more go to the tables), within the slot.
const GROWN: usize = 3000;

/// Blocks of [`SMALL`] and [`LARGE`] bytes are cut from this, so that they all lie in one MiB
/// of address space, which the tracer's tables give to one shard.
static ARENA: Arena = Arena::new();

fn in_arena(ptr: *mut u8) -> bool {
    ARENA.contains(ptr)
}

struct Roomy;

// SAFETY: blocks of `SMALL` and `LARGE` bytes are distinct `SLOT`-aligned slots of `ARENA`,
// never reused (their frees do nothing), or null once it is used up; a realloc of one within
// its slot returns it unchanged, which `GlobalAlloc::realloc` allows (the block keeps its
// contents and now holds `new_size` bytes). Everything else is `System`'s, unchanged.
unsafe impl GlobalAlloc for Roomy {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if (layout.size() == SMALL || layout.size() == LARGE) && layout.align() <= SLOT {
            return ARENA.take(SLOT);
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
        if in_arena(ptr) {
            return if new_size <= SLOT {
                ptr
            } else {
                std::ptr::null_mut() // the test never asks for more
            };
        }
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: TracingAllocator<Roomy> = TracingAllocator::new(Roomy);

#[test]
fn a_trace_out_of_its_cell_finds_room_in_a_full_table() {
    tracemalloc::start_with(Config {
        nframe: 1,
        storage: Storage::Shadow,
        initial_slots_per_shard: 64,
        grow: false,
        ..Config::default()
    })
    .unwrap();
    let small = Layout::from_size_align(SMALL, 16).unwrap();
    // SAFETY: a non-zero size.
    let block = unsafe { std::alloc::alloc(small) };
    assert!(in_arena(block) && traced_now(block), "traced, in its cell");
    // A shard of 64 slots holds 48 traces: blocks of 1 KiB and more fill the block's shard.
    let large = Layout::from_size_align(LARGE, 16).unwrap();
    // SAFETY: a non-zero size.
    let fillers: Vec<*mut u8> = (0..100)
        .map(|_| unsafe { std::alloc::alloc(large) })
        .collect();
    assert!(fillers.iter().all(|&f| in_arena(f)));
    let untraced = tracemalloc::take_snapshot()
        .unwrap()
        .counters
        .untraced_blocks;
    assert!(untraced >= 40, "the shard filled up: {untraced} untraced");
    // SAFETY: `block` is live, of `small`; `GROWN` is non-zero.
    let grown = unsafe { std::alloc::realloc(block, small, GROWN) };
    assert_eq!(grown, block, "in place");
    assert!(
        traced_now(block),
        "the block's trace left its cell and found room in the full table"
    );
    let trace = tracemalloc::take_snapshot()
        .unwrap()
        .traces
        .into_iter()
        .filter(|t| t.size == GROWN as u64)
        .count();
    assert_eq!(trace, 1, "with its new size");
    // SAFETY: live, of `GROWN` bytes now.
    unsafe { std::alloc::dealloc(block, Layout::from_size_align(GROWN, 16).unwrap()) };
    assert!(!traced_now(block), "the free forgets it");
    for filler in fillers {
        // SAFETY: each is live, of `large`.
        unsafe { std::alloc::dealloc(filler, large) };
    }
    tracemalloc::stop();
}
