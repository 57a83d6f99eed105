//! Shadow memory holds blocks under 1 KiB that start on an 8-byte boundary; the rest go to the
//! shard tables (`adapter-std/src/shadow.rs`). Under an inner allocator that hands out blocks 4
//! bytes past a 16-byte boundary for alignments of 4 and less, and 16-byte aligned ones
//! otherwise, every kind must be traced, found, moved by `realloc` (also from one storage to the
//! other), forgotten when freed and counted exactly, whichever storage it landed in.

use std::alloc::{GlobalAlloc, Layout, System};

use tracemalloc::{Config, Storage, TracingAllocator};
use tracemalloc_tests::blocks;

/// Hands out blocks 4 bytes past a 16-byte boundary when their alignment allows it.
struct Misaligned;

impl Misaligned {
    /// The layout of the block underneath, and the offset of the block handed out in it.
    fn underneath(layout: Layout) -> (Layout, usize) {
        if layout.align() > 4 {
            return (layout, 0);
        }
        let padded = Layout::from_size_align(layout.size() + 4, 16).expect("small test blocks");
        (padded, 4)
    }
}

// SAFETY: every block is a `System` block of the padded layout, offset by 4 bytes or 0; the
// offset keeps the alignment the layout asks for (4 at most when offset) and the size fits in
// the padding. `dealloc` undoes the same offset for the same layout.
unsafe impl GlobalAlloc for Misaligned {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let (under, offset) = Self::underneath(layout);
        // SAFETY: `under` has a non-zero size (at least the caller's, which is non-zero).
        let base = unsafe { System.alloc(under) };
        if base.is_null() {
            return base;
        }
        // SAFETY: `offset` (0 or 4) lies inside the block, which has `offset` bytes of padding.
        unsafe { base.add(offset) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let (under, offset) = Self::underneath(layout);
        // SAFETY: `ptr` came from `alloc` with this layout, so `ptr - offset` is the `System`
        // block of layout `under`.
        unsafe { System.dealloc(ptr.sub(offset), under) }
    }
}

#[global_allocator]
static ALLOC: TracingAllocator<Misaligned> = TracingAllocator::new(Misaligned);

tracemalloc_tests::this_file!();

/// A block 16-byte aligned by its type: it starts on a cell.
#[repr(align(16))]
struct Aligned([u8; 48]);

#[inline(never)]
#[allow(clippy::vec_box)] // one allocation per block is the point
fn in_cells(n: usize) -> Vec<Box<Aligned>> {
    blocks(n, || Box::new(Aligned([1; 48]))) // CELLS
}

#[inline(never)]
#[allow(clippy::vec_box)] // as above
fn in_tables(n: usize) -> Vec<Box<[u32; 10]>> {
    blocks(n, || Box::new([2; 10])) // TABLES
}

#[inline(never)]
fn grown(n: usize) -> Vec<Vec<u8>> {
    blocks(n, || {
        let mut v = Vec::with_capacity(8); // GROWN
        v.extend_from_slice(&[3u8; 200]); // realloc: the table's trace moves with the block
        v
    })
}

/// A block of 4 KiB, 16-byte aligned: it would start on a cell, but is too large for one.
#[repr(align(16))]
struct Large([u8; 4096]);

#[inline(never)]
#[allow(clippy::vec_box)] // as above
fn large(n: usize) -> Vec<Box<Large>> {
    blocks(n, || Box::new(Large([4; 4096]))) // LARGE
}

#[inline(never)]
fn grow(v: &mut Vec<u64>, to: usize) {
    v.reserve_exact(to - v.len()); // GROW
}

#[inline(never)]
fn shrink(v: &mut Vec<u64>, to: usize) {
    v.shrink_to(to); // SHRINK
}

/// Blocks of 1 KiB and more are traced in the tables, where they take no page of cells, and a
/// block resized across that size moves between a cell and the tables.
fn large_blocks_are_traced_in_the_tables() {
    let (before, _) = tracemalloc::traced_memory();
    let memory_before = tracemalloc::tracemalloc_memory();
    let blocks = large(1000);
    assert!(blocks.iter().all(|b| b.0[4095] == 4));
    assert_eq!(traced_here("LARGE"), Some((1000 * 4096, 1000)));
    // In cells, 1000 blocks 4 KiB apart would have written a page of cells per 16 KiB.
    let taken = tracemalloc::tracemalloc_memory().saturating_sub(memory_before);
    assert!(
        taken < 128 * 1024,
        "{taken} bytes of tracer memory for 1000 blocks of 4 KiB"
    );
    let traceback = tracemalloc::object_traceback(&*blocks[3]).expect("a large block's");
    assert_eq!(traceback.frames[0].lineno, line_of("LARGE"));
    drop(blocks);
    assert_eq!(traced_here("LARGE"), None);

    let mut v: Vec<u64> = Vec::with_capacity(64); // 512 bytes: a cell
    grow(&mut v, 256); // 2 KiB: the tables
    assert_eq!(traced_here("GROW"), Some((2048, 1)));
    shrink(&mut v, 64); // back to a cell
    assert_eq!(traced_here("GROW"), None);
    assert_eq!(traced_here("SHRINK"), Some((512, 1)));
    let traceback = tracemalloc::object_traceback(v.as_ptr()).expect("the shrunk block's");
    assert_eq!(traceback.frames[0].lineno, line_of("SHRINK"));
    drop(v);
    assert_eq!(traced_here("SHRINK"), None);
    assert_eq!(
        tracemalloc::traced_memory().0,
        before,
        "every block forgotten once"
    );
}

#[test]
fn blocks_that_fit_no_cell_are_traced_in_the_tables() {
    tracemalloc::start_with(Config {
        nframe: 8,
        storage: Storage::Shadow,
        ..Config::default()
    })
    .unwrap();
    let (before, _) = tracemalloc::traced_memory();

    let cells = in_cells(100);
    let tables = in_tables(100);
    let grown = grown(100);
    assert!(cells
        .iter()
        .all(|b| (&**b as *const Aligned as usize).is_multiple_of(16) && b.0[47] == 1));
    assert!(tables.iter().all(|b| b.as_ptr() as usize % 16 == 4));
    assert!(grown.iter().all(|v| v.as_ptr() as usize % 16 == 4));

    assert_eq!(traced_here("CELLS"), Some((100 * 48, 100)));
    assert_eq!(traced_here("TABLES"), Some((100 * 40, 100)));
    // The traceback of a realloc is the realloc's: the block moved, with its new size.
    let grown_bytes = grown.iter().map(|v| v.capacity() as u64).sum::<u64>();
    let at_realloc = traced_here("GROWN").map_or(0, |(bytes, _)| bytes);
    let snapshot = tracemalloc::take_snapshot().unwrap();
    let whole_file = snapshot
        .traces
        .iter()
        .filter(|t| {
            snapshot
                .traceback_of(t)
                .frames
                .iter()
                .any(|f| &*f.filename == THIS_FILE)
        })
        .map(|t| t.size)
        .sum::<u64>();
    assert_eq!(at_realloc, 0, "the first block's trace left with it");
    assert!(whole_file >= 100 * 48 + 100 * 40 + grown_bytes);

    let (with, _) = tracemalloc::traced_memory();
    let outer_vecs = size_of_val(&*cells) + size_of_val(&*tables) + size_of_val(&*grown);
    assert_eq!(
        with - before,
        100 * 48 + 100 * 40 + grown_bytes as usize + outer_vecs,
        "traced_memory() counts both storages"
    );

    // Found by address in either storage.
    let cell_tb = tracemalloc::object_traceback(&*cells[7]).expect("a cell's traceback");
    let table_tb = tracemalloc::object_traceback(&*tables[7]).expect("a table's traceback");
    assert_eq!(cell_tb.frames[0].lineno, line_of("CELLS"));
    assert_eq!(table_tb.frames[0].lineno, line_of("TABLES"));

    drop((cells, tables, grown));
    assert_eq!(traced_here("CELLS"), None);
    assert_eq!(traced_here("TABLES"), None);
    let (after, _) = tracemalloc::traced_memory();
    assert_eq!(after, before, "every block forgotten once");

    // Blocks recorded before a `clear_traces()` are forgotten by it: their later frees, in a
    // cell or a table, take nothing off the new count.
    let cells = in_cells(10);
    let tables = in_tables(10);
    tracemalloc::clear_traces();
    assert_eq!(tracemalloc::traced_memory().0, 0);
    drop((cells, tables));
    assert_eq!(tracemalloc::traced_memory().0, 0, "frees of cleared blocks");
    let kept = in_cells(3);
    assert_eq!(
        traced_here("CELLS"),
        Some((3 * 48, 3)),
        "and new blocks count"
    );
    drop(kept);
    large_blocks_are_traced_in_the_tables();
    tracemalloc::stop();
}
