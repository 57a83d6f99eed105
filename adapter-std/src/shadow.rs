//! Shadow memory: the default domain's traces, each at a place computed from its block's
//! address.
//!
//! Every 32 bytes of address space (the cell's span) have 8-byte cells, which hold the trace
//! of a block that starts there: its size, the traceback store's generation, where in the span
//! the block starts (in 8-byte steps) and the traceback's id. A block's cell lies beside its
//! heap neighbours' cells, so recording and forgetting follow the heap's own cache locality,
//! where a hash table keyed by address scatters them (BENCHMARKS.md, section 3: on serde_json
//! the table alone cost 1.55x, shadow memory 1.18x). Nor does it need a lock. Snapshots read
//! cells while they change, each one atomically.
//!
//! How many cells a span has is chosen when tracing starts with shadow memory, until the first
//! region is reserved, and is fixed from then on ([`choose_planes`]). One, when the inner
//! allocator starts its smallest blocks at least 32 bytes apart, as glibc does (its smallest
//! chunk, header included): a cell per 32 bytes took half the memory and page faults of one per
//! 16 (json's shadow cost fell from +0.045 s to +0.018 s in the floor benchmark). Four, in four
//! planes, for allocators that hand out small blocks side by side (jemalloc, mimalloc, musl): a
//! block that starts 8, 16 or 24 bytes into its span has its cell in the second, third or
//! fourth plane, so 8-byte blocks side by side each have one, and a plane's pages are written
//! only where blocks start at its offset: blocks of 32, 64 or more bytes, which mimalloc lines
//! up on 32 bytes, leave three planes alone (under mimalloc, json's tracer memory was 61 MB
//! with a cell per 16 bytes and its 8-byte blocks in the tables, 47 MB with two planes of 16-byte
//! spans, 30 MB with four planes). With one plane up to four blocks may start in a span (under
//! an allocator that packs blocks closer than the probe saw): the first one recorded takes the
//! cell with a compare-and-swap (the others may belong to other threads), the others go to the
//! tables. A cell holding a block's trace is written by no one else until that block is freed;
//! its free empties it with a compare-and-swap, which a record racing with a `clear_traces()`
//! cannot slip past.
//!
//! The address space is cut into 1 GiB regions. The first block in a region reserves the
//! region's 1 GiB of cells in planes (`MAP_NORESERVE`: only the pages written take memory; with
//! one plane only the first quarter is used), 224 MiB of coarser cells for blocks of
//! [`MEDIUM`] bytes and more (three grids, see [`record`]), and a bitmap of the cell pages
//! written, which snapshots, [`clear`] and [`memory_bytes`] walk instead of
//! the reservation. Reservations are never unmapped, as a thread may be writing a cell while
//! tracing stops; [`clear`] gives the written pages back instead.
//!
//! What does not fit a cell goes to the shard tables (see `state`): blocks not aligned to 8
//! bytes, of [`LARGE`] (1 KiB) or more, or of size 0, blocks whose cell holds a neighbour's
//! trace, and any block in a region that could not be reserved. Sampling always uses the
//! tables, and so does every block on a system whose pages are larger than 4 KiB (the
//! reservation's guard pages cannot be set there, so reserving fails).
//!
//! The generation in each cell tells the traces of the current store from those a thread wrote
//! while racing with `clear_traces()` (which gives the written pages back, then starts a new
//! generation). It is 11 bits: after 2048 clears a stale cell that escaped both could read as
//! current again.

use core::alloc::{GlobalAlloc, Layout};
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::*};

use tracemalloc_core::table::Placement;
use tracemalloc_core::TracebackId;

/// The alignment a block needs to have a cell: a cell tells where in its span the block
/// starts, in steps of this.
const GRAIN: usize = 8;
/// Bytes of address space per span, as a shift.
const SPAN_SHIFT: u32 = 5;
/// Whether each span has a cell per [`GRAIN`], in planes, or one cell; see [`choose_planes`].
static PLANED: AtomicBool = AtomicBool::new(true);
/// Addresses above this are not shadowed (the user half of a 48-bit address space).
const ADDRESS_BITS: u32 = 48;
const REGION_BITS: u32 = 30;
/// Cells of a plane: one per span of a region.
const PLANE_CELLS: usize = 1 << (REGION_BITS - SPAN_SHIFT);
/// Planes, when there are several: a block's plane is where in its span it starts, in
/// [`GRAIN`]s.
const PLANES: usize = 1 << (SPAN_SHIFT - GRAIN.trailing_zeros());
/// Blocks of this many bytes and more (up to [`LARGE`]) have their cells on coarser grids,
/// after the planes: blocks of 64 to 127 bytes a cell per 64 bytes of address space, of 128 to
/// 255 a cell per 128, larger ones a cell per 256 ([`Grid::coarse_for`]). No two blocks of a
/// grid's size start in one of its stretches, and a cell per 32 bytes would cost them a quarter
/// of their size (36 bytes a 128-byte block, 144 a 512-byte one, where their grids take 9 and 16).
pub(crate) const MEDIUM: usize = 1 << MIN_COARSE_SHIFT;
const MIN_COARSE_SHIFT: u32 = 6;
const MAX_COARSE_SHIFT: u32 = 8;
/// The first cell of the coarse grids.
const COARSE_BASE: usize = PLANES * PLANE_CELLS;
/// Cells a region may need: the planes', then the coarse grids', the finest first.
const REGION_CELLS: usize = coarse_base(MAX_COARSE_SHIFT + 1);

/// The first cell of the coarse grid of a cell per `1 << shift` bytes: after the planes and the
/// finer grids, each twice the size of the next.
const fn coarse_base(shift: u32) -> usize {
    COARSE_BASE + (1 << (REGION_BITS + 1 - MIN_COARSE_SHIFT)) - (1 << (REGION_BITS + 1 - shift))
}

/// Which cells a block's trace may be in: its span's, or a coarse grid's of a cell per
/// `1 << shift` bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Grid {
    Span,
    Coarse(u32),
}

impl Grid {
    /// Every coarse grid, the finest first.
    const COARSE: [Grid; (MAX_COARSE_SHIFT - MIN_COARSE_SHIFT + 1) as usize] = {
        let mut grids = [Grid::Span; (MAX_COARSE_SHIFT - MIN_COARSE_SHIFT + 1) as usize];
        let mut i = 0;
        while i < grids.len() {
            grids[i] = Grid::Coarse(MIN_COARSE_SHIFT + i as u32);
            i += 1;
        }
        grids
    };

    /// The grid cell `index` of a region belongs to.
    fn of_cell(index: usize) -> Grid {
        Grid::COARSE
            .into_iter()
            .rev()
            .find(|&grid| matches!(grid, Grid::Coarse(shift) if index >= coarse_base(shift)))
            .unwrap_or(Grid::Span)
    }

    /// The coarse grid of a block of `size` bytes, at least [`MEDIUM`]: the largest stretch
    /// that is no larger than the block, up to 256 bytes.
    #[inline(always)]
    fn coarse_for(size: u64) -> Grid {
        Grid::Coarse((u64::BITS - 1 - size.leading_zeros()).min(MAX_COARSE_SHIFT))
    }
}
const CELLS_BYTES: usize = REGION_CELLS * size_of::<u64>();
const PAGE: usize = 4096;
const CELLS_PER_PAGE: usize = PAGE / size_of::<u64>();
const PAGES: usize = CELLS_BYTES / PAGE;
/// One bit per page of cells, after the cells in the same reservation, in whole pages.
const BITMAP_WORDS: usize = (PAGES / 64).next_multiple_of(PAGE / size_of::<u64>());
const RESERVATION: usize = CELLS_BYTES + BITMAP_WORDS * size_of::<u64>();
/// Regions a process may reserve (4 TiB of address space holding traced blocks); blocks in
/// further regions go to the tables.
const MAX_REGIONS: usize = 4096;

/// The largest size a cell can hold (24 bits; [`fits`] keeps blocks of [`LARGE`] and more out).
pub(crate) const MAX_SIZE: u64 = (1 << SIZE_BITS) - 1;
const SIZE_BITS: u32 = 24;
const SIZE_SHIFT: u32 = 64 - SIZE_BITS;
const ID_BITS: u32 = 24;
/// Where in its cell's stretch of address space (a span, or a coarse grid's 64 to 256 bytes)
/// the block starts, in [`GRAIN`]s: 5 bits, beside the id.
const OFFSET_BITS: u32 = MAX_COARSE_SHIFT - GRAIN.trailing_zeros();
const OFFSET_MASK: u64 = (1 << OFFSET_BITS) - 1;
const GENERATION_SHIFT: u32 = ID_BITS + OFFSET_BITS;
/// Generation bits: a stale cell that escaped a clear reads as current again only after this
/// many more clears.
const GENERATION_MASK: u64 = (1 << (SIZE_SHIFT - GENERATION_SHIFT)) - 1;

/// The cells' base address per region; 0 while not reserved, [`UNRESERVABLE`] once a
/// reservation failed (the region's blocks go to the tables from then on, instead of every
/// allocation there trying again under the lock).
static DIRECTORY: [AtomicUsize; 1 << (ADDRESS_BITS - REGION_BITS)] =
    [const { AtomicUsize::new(0) }; 1 << (ADDRESS_BITS - REGION_BITS)];
const UNRESERVABLE: usize = 1;
/// The regions reserved, in order, so that walks need not read the whole directory.
static RESERVED: [AtomicUsize; MAX_REGIONS] = [const { AtomicUsize::new(0) }; MAX_REGIONS];
static RESERVED_LEN: AtomicUsize = AtomicUsize::new(0);
/// Taken to reserve a region (and by the fork handlers).
pub(crate) static RESERVING: spin::Mutex<()> = spin::Mutex::new(());

/// A cell's content: 0, or a trace as size (high 24 bits), generation (11 bits), offset in
/// the cell's stretch (5 bits, in [`GRAIN`]s) and id (24 bits).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Packed(u64);

impl Packed {
    pub(crate) const EMPTY: Packed = Packed(0);

    /// The trace of a block at `offset` in its cell's stretch ([`Place::offset`]), of `size` bytes
    /// (1..=[`MAX_SIZE`], so the cell is never 0), with `id` of the store's `generation`.
    #[inline(always)]
    fn new(offset: u64, size: u64, generation: u32, id: TracebackId) -> Packed {
        debug_assert!(size != 0 && size <= MAX_SIZE);
        Packed(
            size << SIZE_SHIFT
                | (u64::from(generation) & GENERATION_MASK) << GENERATION_SHIFT
                | offset << ID_BITS
                | u64::from(id.index()),
        )
    }

    /// The trace's size and id, if the cell holds one of `generation`: other generations'
    /// ids name tracebacks of a store since cleared.
    #[inline]
    pub(crate) fn of_generation(self, generation: u32) -> Option<(u64, TracebackId)> {
        self.is_of(generation).then(|| {
            (
                self.0 >> SIZE_SHIFT,
                TracebackId::from_index(self.0 as u32 & ((1 << ID_BITS) - 1)),
            )
        })
    }

    #[inline(always)]
    fn is_of(self, generation: u32) -> bool {
        self.0 != 0
            && (self.0 >> GENERATION_SHIFT) & GENERATION_MASK
                == u64::from(generation) & GENERATION_MASK
    }

    /// Whether this is the trace of a block at `offset` in the cell's stretch (of any
    /// generation), rather than of another block starting in the stretch.
    #[inline(always)]
    fn is_at(self, offset: u64) -> bool {
        self.0 != 0 && (self.0 >> ID_BITS) & OFFSET_MASK == offset
    }

    /// The offset of the traced block in its cell's stretch, in bytes.
    fn offset(self) -> usize {
        ((self.0 >> ID_BITS) & OFFSET_MASK) as usize * GRAIN
    }

    /// The traced block's size (of any generation).
    fn size(self) -> usize {
        (self.0 >> SIZE_SHIFT) as usize
    }

    /// The same trace, of a block at `offset` in a cell's stretch.
    fn at(self, offset: u64) -> Packed {
        Packed(self.0 & !(OFFSET_MASK << ID_BITS) | offset << ID_BITS)
    }
}

/// [`PLANED`]: it changes only before the first region is reserved.
#[inline(always)]
fn planed() -> bool {
    PLANED.load(Relaxed)
}

/// Chooses how many cells a span has, for the allocator whose blocks are about to be traced,
/// by the decision that places its trace tables ([`Placement::for_spacing`] of its
/// [`least_spacing`]): one where its small blocks lie a span apart or more (`Spaced`), one per
/// [`GRAIN`] in planes where they lie closer or the spacing is unknown (`Packed`). Only before
/// the first region is reserved: cells are read as they were written, so a later start under
/// another allocator keeps the choice (which costs it memory or speed, never traces).
pub(crate) fn choose_planes(placement: Placement) {
    const _: () = assert!(
        1 << SPAN_SHIFT == 32,
        "Placement::for_spacing's bound is the span"
    );
    let _reserving = RESERVING.lock();
    if RESERVED_LEN.load(Relaxed) == 0 {
        PLANED.store(placement == Placement::Packed, Relaxed);
    }
}

/// The least distance between the starts of small blocks of `inner` allocated one after the
/// other (16 each of 8, 16 and 24 bytes, 8-aligned), all freed again; `usize::MAX` if it has
/// none to give. It sets the cells' span, and the trace tables' placement.
pub(crate) fn least_spacing(inner: &dyn GlobalAlloc) -> usize {
    const EACH: usize = 16;
    let mut blocks = [(0usize, Layout::new::<u8>()); 3 * EACH];
    for (i, block) in blocks.iter_mut().enumerate() {
        let layout = Layout::from_size_align(8 * (1 + i / EACH), 8).unwrap_or(block.1);
        // SAFETY: a non-zero size; the block is freed below with the same layout.
        *block = (unsafe { inner.alloc(layout) } as usize, layout);
    }
    let mut starts = blocks.map(|(addr, _)| addr);
    for (addr, layout) in blocks {
        if addr != 0 {
            // SAFETY: allocated above by `inner` with this layout, and freed once.
            unsafe { inner.dealloc(addr as *mut u8, layout) };
        }
    }
    spacing(&mut starts)
}

/// The least distance between the non-zero addresses of `starts` (sorted on the way).
fn spacing(starts: &mut [usize]) -> usize {
    starts.sort_unstable();
    let allocated = &starts[starts.partition_point(|&a| a == 0)..];
    allocated
        .windows(2)
        .map(|pair| pair[1] - pair[0])
        .min()
        .unwrap_or(usize::MAX)
}

/// Blocks of this many bytes and more have no cell: their traces go to the tables. A page of
/// cells serves 16 KiB of heap, so a heap densely filled with such blocks would pay a quarter
/// of its size in cells, 256 bytes a block and more (1039 at 4 KiB, measured), where the tables
/// take 21 to 43 bytes a block whatever its size; and a block this large costs its program far
/// more than the table's lock and probe.
pub(crate) const LARGE: usize = 1024;
const _: () = assert!(LARGE as u64 <= MAX_SIZE);

/// Whether a block at `addr` of `size` bytes can have a cell.
#[inline(always)]
pub(crate) fn fits(addr: usize, size: usize) -> bool {
    addr.is_multiple_of(GRAIN) && size != 0 && size < LARGE && (addr as u64) >> ADDRESS_BITS == 0
}

/// The cells of `addr`'s region, reserving them if needed; `None` when they cannot be.
#[inline(always)]
fn cells_of(addr: usize, reserve: bool) -> Option<usize> {
    let region = addr >> REGION_BITS;
    match DIRECTORY.get(region)?.load(Acquire) {
        0 if reserve => reserve_region(region),
        0 | UNRESERVABLE => None,
        base => Some(base),
    }
}

/// Cell `index` of the reservation at `base`.
///
/// # Safety
/// `base` is a reservation, as [`cells_of`] or [`reserved`] return it, and
/// `index < REGION_CELLS`.
#[inline(always)]
unsafe fn cell(base: usize, index: usize) -> &'static AtomicU64 {
    // SAFETY: `base` is the start of a reservation of `RESERVATION` bytes that is never
    // unmapped (the caller's contract), whose first `CELLS_BYTES` are `REGION_CELLS` aligned
    // 8-byte cells, only ever accessed atomically; `index < REGION_CELLS`. Reading or writing a
    // page never written maps a zero page or a fresh one (`MAP_NORESERVE`), and `clear` gives
    // pages back with `MADV_DONTNEED`, after which they read as zeros: every access is defined.
    unsafe { &*(base as *const AtomicU64).add(index) }
}

/// Where a block's trace lives: its cell, the bitmap bit of the cell's page, and the block's
/// offset in the cell's stretch, in [`GRAIN`]s. Computed once per record or free, from one read
/// of the span.
struct Place {
    cell: &'static AtomicU64,
    word: &'static AtomicU64,
    bit: u64,
    offset: u64,
}

impl Place {
    /// Whether the cell's page was written since the last [`clear`].
    #[inline(always)]
    fn marked(&self) -> bool {
        self.word.load(Relaxed) & self.bit != 0
    }

    /// Empties the cell if it holds the trace of the block at this place's offset, and returns
    /// that trace.
    #[inline(always)]
    fn take(&self) -> Packed {
        let held = Packed(self.cell.load(Relaxed));
        // Only a `clear` changes the cell of a live block, and after one a neighbour may take
        // the emptied cell: a plain store of 0 could erase the neighbour's new trace.
        if held.is_at(self.offset)
            && self
                .cell
                .compare_exchange(held.0, 0, Relaxed, Relaxed)
                .is_ok()
        {
            held
        } else {
            Packed::EMPTY
        }
    }

    /// Marks the page after a write to the cell: a `clear` that took the bit meanwhile may not
    /// have given the page back yet, and a page holding a cell must stay marked, to be counted
    /// and cleared. `marked` is what [`Place::marked`] said before the write.
    /// Sequentially consistent, as [`clear`]'s taking of the bits: a writer that then reads the
    /// generation unchanged knows this clear or the next finds the page marked
    /// (`state::void_in_cell`).
    #[inline(always)]
    fn mark(&self, marked: bool) {
        if !marked || self.word.load(SeqCst) & self.bit == 0 {
            self.word.fetch_or(self.bit, SeqCst);
        }
    }
}

/// The place of the block at `addr` in `grid`.
///
/// # Safety
/// `base` is the reservation of `addr`'s region, as [`cells_of`] returns it.
#[inline(always)]
unsafe fn place(base: usize, addr: usize, grid: Grid) -> Place {
    let in_region = addr & ((1 << REGION_BITS) - 1);
    let (index, offset) = match grid {
        Grid::Coarse(shift) => {
            let offset = (in_region & ((1 << shift) - 1)) / GRAIN;
            (coarse_base(shift) + (in_region >> shift), offset)
        }
        Grid::Span => {
            let offset = (in_region & ((1 << SPAN_SHIFT) - 1)) / GRAIN;
            let plane = if planed() { offset } else { 0 };
            (plane * PLANE_CELLS + (in_region >> SPAN_SHIFT), offset)
        }
    };
    let page = index / CELLS_PER_PAGE;
    Place {
        // SAFETY: `index < REGION_CELLS`: an offset in a region divided by the span is below
        // `PLANE_CELLS`, and `plane < PLANES` (an offset in the span divided by the grain, or
        // 0); divided by a coarse grid's stretch, it is below that grid's cells, which end
        // where the next grid's begin (`coarse_base`), the last at `REGION_CELLS`. `base` is
        // the caller's.
        cell: unsafe { cell(base, index) },
        // SAFETY: `page < PAGES`, so its word is in the bitmap; `base` is the caller's.
        word: unsafe { bitmap_word(base, page / 64) },
        bit: 1 << (page % 64),
        offset: offset as u64,
    }
}

/// The place of `addr` in `grid`, if its cell's page was written since the last [`clear`]:
/// cells in other pages are empty. Not reading those matters: a read maps the shared zero
/// page, and the first write after it faults again and flushes the TLB of every core running
/// the process.
/// None for an address off the [`GRAIN`]: no block there has a cell, and its cell's trace, at
/// another offset, is some neighbour's.
#[inline(always)]
fn written_place(addr: usize, grid: Grid) -> Option<Place> {
    if !addr.is_multiple_of(GRAIN) {
        return None;
    }
    let base = cells_of(addr, false)?;
    // SAFETY: `base` is `addr`'s reservation (`cells_of`).
    let place = unsafe { place(base, addr, grid) };
    place.marked().then_some(place)
}

/// Word `word` of the bitmap of the reservation at `base`.
///
/// # Safety
/// `base` as for [`cell`], and `word < BITMAP_WORDS`.
#[inline(always)]
unsafe fn bitmap_word(base: usize, word: usize) -> &'static AtomicU64 {
    debug_assert!(word < BITMAP_WORDS);
    // SAFETY: as in `cell`: the bitmap's `BITMAP_WORDS` aligned words follow the cells in
    // the same reservation, and the caller keeps `word` in range.
    unsafe { &*((base + CELLS_BYTES) as *const AtomicU64).add(word) }
}

/// Records the block at `addr` (which [`fits`]). Returns the size of the traces of
/// `generation` it replaced (of blocks at this address whose frees the tracer missed), or
/// `Err` when the block has no cell: its region cannot be reserved, or the cell holds the trace
/// (live or stale) of another block starting in its stretch.
///
/// A block of [`MEDIUM`] bytes or more takes its span's cell where that cell's page holds
/// smaller neighbours' cells already, as in a heap of mixed sizes, and costs no memory there;
/// elsewhere, as among blocks of its own size, it takes a cell on its coarse grid (on the fine
/// one, a heap of 512-byte blocks took 144 bytes a block, on the coarse 16; on the coarse
/// alone, serde_json's mixed heap took 11 % more tracer memory).
#[inline(always)]
pub(crate) fn record(addr: usize, size: u64, generation: u32, id: TracebackId) -> Result<u64, ()> {
    let base = cells_of(addr, true).ok_or(())?;
    // SAFETY: `base` is `addr`'s reservation (`cells_of`).
    let fine = unsafe { place(base, addr, Grid::Span) };
    let current = |held: Packed| held.of_generation(generation).map_or(0, |(size, _)| size);
    if size < MEDIUM as u64 {
        return record_in(&fine, size, generation, id).map(current);
    }
    let own = Grid::coarse_for(size);
    let in_span = if fine.marked() {
        record_in(&fine, size, generation, id).ok()
    } else {
        None
    };
    let (before, grid) = match in_span {
        Some(before) => (before, Grid::Span),
        None => {
            // SAFETY: as above.
            let coarse = unsafe { place(base, addr, own) };
            (record_in(&coarse, size, generation, id)?, own)
        }
    };
    // A block at this address whose free the tracer missed, of another size, may have left
    // its trace on its own grid, where no record of this size would replace it: taken, as a
    // cell's record replaces one, and counted if current. (One on the span's cell is not: a
    // block there was recorded in it, or the cell holds a neighbour's trace.)
    let mut replaced = current(before);
    for other in Grid::COARSE.into_iter().filter(|&other| other != grid) {
        // SAFETY: as above.
        let missed = unsafe { place(base, addr, other) };
        if missed.marked() {
            replaced += current(missed.take());
        }
    }
    Ok(replaced)
}

/// [`record`] in the cell at `place`.
#[inline(always)]
fn record_in(place: &Place, size: u64, generation: u32, id: TracebackId) -> Result<Packed, ()> {
    // The page's bit is set after its first cell is written, by the thread that wrote it; a
    // cell of a page without it is empty (or a cell of an old generation, written by a thread
    // racing with `clear`), and is first tried as empty without being read (see
    // `written_place`): the compare-and-swap then faults a fresh page in at once (on ARM
    // without LSE atomics, its exclusive load maps the zero page first, and the loop retries
    // once after the store's fault).
    let marked = place.marked();
    let mut before = if marked {
        Packed(place.cell.load(Relaxed))
    } else {
        Packed::EMPTY
    };
    let new = Packed::new(place.offset, size, generation, id);
    loop {
        // A neighbour's trace, even a stale one, is never replaced: a record that read its
        // generation before a clear cannot tell a live neighbour of the next one.
        if before != Packed::EMPTY && !before.is_at(place.offset) {
            return Err(());
        }
        match place
            .cell
            .compare_exchange_weak(before.0, new.0, Relaxed, Relaxed)
        {
            Ok(_) => break,
            Err(now) => before = Packed(now),
        }
    }
    place.mark(marked);
    Ok(before)
}

/// Empties the cell of the block of `size` bytes at `addr` and returns what it held for that
/// block (`generation`: the current one, see [`take_any`]).
#[inline(always)]
pub(crate) fn take(addr: usize, size: usize, generation: u32) -> Packed {
    if size >= LARGE {
        return Packed::EMPTY; // no cell (see `fits`)
    }
    if size >= MEDIUM {
        // In its span's cell or on its coarse grid (see `record`).
        return take_from(addr, [Grid::coarse_for(size as u64)], generation);
    }
    take_in(addr, Grid::Span)
}

/// [`take`] from the cell in `grid`.
#[inline(always)]
fn take_in(addr: usize, grid: Grid) -> Packed {
    written_place(addr, grid).map_or(Packed::EMPTY, |place| place.take())
}

/// Empties the cells that hold a trace of a block at `addr`, whatever its size, and returns
/// the trace of `generation` among them, if any: for callers that do not know the size. A
/// stale trace in the span's cell does not hide a current one on a coarse grid.
pub(crate) fn take_any(addr: usize, generation: u32) -> Packed {
    take_from(addr, Grid::COARSE, generation)
}

/// Empties the cells of `addr` in its span and then in `coarse` until one holds a trace of
/// `generation`, and returns that trace, or else the last trace found (of another generation).
#[inline(always)]
fn take_from(addr: usize, coarse: impl IntoIterator<Item = Grid>, generation: u32) -> Packed {
    let mut found = take_in(addr, Grid::Span);
    for grid in coarse {
        if found.is_of(generation) {
            break;
        }
        match take_in(addr, grid) {
            Packed::EMPTY => {}
            held => found = held,
        }
    }
    found
}

/// Puts back what [`take`] returned, for a block that turned out not to be freed (a failed
/// `realloc`). Returns false when it cannot: a neighbour took the cell meanwhile (the trace
/// then belongs in the tables), or a `clear` gave the page back (the trace is of an old
/// generation, which the tables refuse).
pub(crate) fn put_back(addr: usize, held: Packed) -> bool {
    if held == Packed::EMPTY {
        return true;
    }
    // `take` found `held` in a page written, unless a clear came since; a larger block's
    // trace goes back to either of its cells, where `take` looks for it.
    put_back_in(addr, held, Grid::Span)
        || (held.size() >= MEDIUM && put_back_in(addr, held, Grid::coarse_for(held.size() as u64)))
}

/// [`put_back`] into the cell in `grid`, with the block's offset in that cell's stretch
/// (`take` may have found it in the other grid).
fn put_back_in(addr: usize, held: Packed, grid: Grid) -> bool {
    let Some(place) = written_place(addr, grid) else {
        return false;
    };
    let held = held.at(place.offset);
    let restored = place
        .cell
        .compare_exchange(0, held.0, Relaxed, Relaxed)
        .is_ok();
    if restored {
        place.mark(true);
    }
    restored
}

/// What the cells of `addr` hold for the block there, whatever its size: the span's cell's
/// trace, or else the first coarse grid's (the tests' view; the tracer asks for [`current`]).
#[cfg(test)]
fn get(addr: usize) -> Packed {
    core::iter::once(Grid::Span)
        .chain(Grid::COARSE)
        .map(|grid| held_in(addr, grid))
        .find(|&held| held != Packed::EMPTY)
        .unwrap_or(Packed::EMPTY)
}

/// The size and id of the trace of `generation` at `addr`, in any grid: a stale trace in the
/// span's cell does not hide a current one on a coarse grid (see [`take_any`]).
pub(crate) fn current(addr: usize, generation: u32) -> Option<(u64, TracebackId)> {
    core::iter::once(Grid::Span)
        .chain(Grid::COARSE)
        .find_map(|grid| held_in(addr, grid).of_generation(generation))
}

/// What the cell of `addr` in `grid` holds for the block there.
fn held_in(addr: usize, grid: Grid) -> Packed {
    written_place(addr, grid)
        .map(|place| (Packed(place.cell.load(Relaxed)), place.offset))
        .filter(|&(held, offset)| held.is_at(offset))
        .map_or(Packed::EMPTY, |(held, _)| held)
}

#[cold]
fn reserve_region(region: usize) -> Option<usize> {
    let _reserving = RESERVING.lock();
    let base = DIRECTORY[region].load(Acquire);
    if base != 0 {
        return Some(base);
    }
    let reserved = RESERVED
        .get(RESERVED_LEN.load(Relaxed))
        .and_then(|slot| Some((slot, reserve(RESERVATION)?)));
    let Some((slot, base)) = reserved else {
        DIRECTORY[region].store(UNRESERVABLE, Release);
        return None;
    };
    // The directory first: walks find a region through `RESERVED` and then read its base.
    DIRECTORY[region].store(base, Release);
    slot.store(region, Relaxed);
    RESERVED_LEN.fetch_add(1, Release);
    Some(base)
}

/// Whether a reservation takes its whole size where the pages written should: on 32-bit
/// targets, a region's cells are nearly a third of the address space; where the kernel
/// accounts memory strictly (`vm.overcommit_memory` = 2, which ignores `MAP_NORESERVE`), each
/// region would take 1.22 GiB of the system's commit limit.
pub(crate) fn reservations_are_charged() -> bool {
    cfg!(target_pointer_width = "32") || strict_overcommit()
}

/// Whether `/proc/sys/vm/overcommit_memory` reads 2.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn strict_overcommit() -> bool {
    first_byte_of(c"/proc/sys/vm/overcommit_memory") == Some(b'2')
}

/// The first byte of the file at `path`, read with the C library's calls: this runs inside
/// the allocator, when tracing starts, where nothing may allocate.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn first_byte_of(path: &core::ffi::CStr) -> Option<u8> {
    let mut byte = 0u8;
    // SAFETY: `open` takes a NUL-terminated path; `read` writes at most one byte into `byte`,
    // a local; the descriptor is ours and closed once.
    let read = unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return None;
        }
        let read = libc::read(fd, (&raw mut byte).cast(), 1);
        libc::close(fd);
        read
    };
    (read == 1).then_some(byte)
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn strict_overcommit() -> bool {
    false
}

/// Reserves `len` bytes of zeros that take memory only where written, between two
/// inaccessible pages: the reservation is then a mapping of its own, never merged with
/// neighbouring anonymous memory (such as thread stacks), so `/proc/<pid>/smaps` shows what it
/// holds.
#[cfg(unix)]
fn reserve(len: usize) -> Option<usize> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    const NORESERVE: libc::c_int = libc::MAP_NORESERVE;
    // Elsewhere anonymous memory is committed lazily anyway.
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    const NORESERVE: libc::c_int = 0;
    // SAFETY: a new anonymous private mapping at an address of the kernel's choosing; it
    // touches no existing memory. The C library's `mmap` does not allocate.
    let ptr = unsafe {
        libc::mmap(
            core::ptr::null_mut(),
            len + 2 * PAGE,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | NORESERVE,
            -1,
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return None;
    }
    let start = ptr as usize + PAGE;
    // SAFETY: `start..start + len` lies inside the mapping just made.
    let usable = unsafe {
        libc::mprotect(
            start as *mut libc::c_void,
            len,
            libc::PROT_READ | libc::PROT_WRITE,
        )
    };
    if usable != 0 {
        // SAFETY: the whole mapping just made, which nothing else knows of.
        unsafe { libc::munmap(ptr, len + 2 * PAGE) };
        return None;
    }
    name(start, len);
    no_huge_pages(start, len);
    Some(start)
}

/// Names the reservation in `/proc/<pid>/maps` (`[anon:tracemalloc shadow]`), so that its
/// memory can be told apart, and kept apart: a named mapping does not merge with neighbouring
/// anonymous memory such as thread stacks. Kernels without the feature (before 5.17, or built
/// without it) refuse, which changes nothing else.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn name(start: usize, len: usize) {
    const NAME: &core::ffi::CStr = c"tracemalloc shadow";
    // SAFETY: `prctl(PR_SET_VMA, PR_SET_VMA_ANON_NAME, ..)` only labels our own mapping; the
    // kernel copies the name, a NUL-terminated string that outlives the call anyway.
    unsafe {
        libc::prctl(
            libc::PR_SET_VMA,
            libc::PR_SET_VMA_ANON_NAME,
            start,
            len,
            NAME.as_ptr(),
        )
    };
}

#[cfg(all(unix, not(any(target_os = "linux", target_os = "android"))))]
fn name(_start: usize, _len: usize) {}

/// Keeps transparent huge pages out of the reservation: where THP is `always`, one cell written
/// would take 2 MiB, which the bitmap (4 KiB pages) would not count.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn no_huge_pages(start: usize, len: usize) {
    // SAFETY: advice about our own mapping; it changes no content.
    unsafe { libc::madvise(start as *mut libc::c_void, len, libc::MADV_NOHUGEPAGE) };
}

#[cfg(all(unix, not(any(target_os = "linux", target_os = "android"))))]
fn no_huge_pages(_start: usize, _len: usize) {}

#[cfg(not(unix))]
fn reserve(_len: usize) -> Option<usize> {
    None // every block goes to the tables
}

/// The base of every reserved region.
fn reserved() -> impl Iterator<Item = (usize, usize)> {
    let len = RESERVED_LEN.load(Acquire);
    RESERVED[..len].iter().filter_map(|r| {
        let region = r.load(Relaxed);
        match DIRECTORY[region].load(Acquire) {
            0 | UNRESERVABLE => None, // cannot happen: published before the region is listed
            base => Some((region, base)),
        }
    })
}

/// Calls `f` with the address and content of every cell that holds a trace, in pages written
/// since they were last cleared.
pub(crate) fn scan(mut f: impl FnMut(usize, Packed)) {
    for (region, base) in reserved() {
        for word in 0..BITMAP_WORDS {
            // SAFETY: `base` comes from `reserved()`, and `word < BITMAP_WORDS`.
            let mut bits = unsafe { bitmap_word(base, word) }.load(Relaxed);
            while bits != 0 {
                let page = word * 64 + bits.trailing_zeros() as usize;
                bits &= bits - 1;
                for i in page * CELLS_PER_PAGE..(page + 1) * CELLS_PER_PAGE {
                    // SAFETY: `base` comes from `reserved()`; `i` is a cell of a page below
                    // `PAGES`, so below `REGION_CELLS`.
                    let held = Packed(unsafe { cell(base, i) }.load(Relaxed));
                    if held != Packed::EMPTY {
                        // A cell of another plane than the first holds its offset too.
                        let stretch = match Grid::of_cell(i) {
                            Grid::Coarse(shift) => (i - coarse_base(shift)) << shift,
                            Grid::Span => (i % PLANE_CELLS) << SPAN_SHIFT,
                        };
                        f(region << REGION_BITS | stretch | held.offset(), held);
                    }
                }
            }
        }
    }
}

/// Empties every cell and gives the pages back. Cells written meanwhile by a thread still
/// recording under the old generation may survive; their generation tells them apart.
pub(crate) fn clear() {
    for (_, base) in reserved() {
        for index in 0..BITMAP_WORDS {
            // Taken before the pages are given back: a page written after this is marked again.
            // Read first, so that bitmap pages never written stay untouched.
            // SAFETY: `base` comes from `reserved()`, and `index < BITMAP_WORDS`.
            let word = unsafe { bitmap_word(base, index) };
            // Sequentially consistent: see `Place::mark`.
            let mut bits = if word.load(SeqCst) == 0 {
                0
            } else {
                word.swap(0, SeqCst)
            };
            while bits != 0 {
                let first = bits.trailing_zeros() as usize;
                let run = (bits >> first).trailing_ones() as usize;
                bits &= !(u64::MAX >> (64 - run) << first);
                let start = base + (index * 64 + first) * PAGE;
                give_back(start, run * PAGE);
            }
        }
    }
}

#[cfg(unix)]
fn give_back(start: usize, len: usize) {
    // SAFETY: `start..start + len` lies in a reservation of ours (page-aligned: reservations
    // are). Its cells are only ever accessed atomically, and a page given back reads as zeros.
    unsafe { libc::madvise(start as *mut libc::c_void, len, libc::MADV_DONTNEED) };
}

#[cfg(not(unix))]
fn give_back(_start: usize, _len: usize) {}

/// Gives back the bitmaps too, once tracing is off and [`clear`] ran: only writers racing
/// with the stop, whose cells are of an old generation, can set bits meanwhile.
pub(crate) fn release() {
    for (_, base) in reserved() {
        give_back(base + CELLS_BYTES, BITMAP_WORDS * size_of::<u64>());
    }
}

/// Bytes of memory the cells take: the pages of cells written since the last [`clear`], and
/// the pages of bitmap marking them (a bitmap page cleared but not given back by [`release`]
/// is not counted).
pub(crate) fn memory_bytes() -> usize {
    const WORDS_PER_PAGE: usize = PAGE / size_of::<u64>();
    reserved()
        .map(|(_, base)| {
            let mut pages = 0;
            for first in (0..BITMAP_WORDS).step_by(WORDS_PER_PAGE) {
                let marked: usize = (first..(first + WORDS_PER_PAGE).min(BITMAP_WORDS))
                    // SAFETY: `base` comes from `reserved()`, and `w < BITMAP_WORDS`.
                    .map(|w| unsafe { bitmap_word(base, w) }.load(Relaxed).count_ones() as usize)
                    .sum();
                pages += marked + usize::from(marked != 0);
            }
            pages * PAGE
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    // The shadow is process-wide; one test, so that nothing else writes it meanwhile (no other
    // test of this crate traces), and it may switch between planes and one cell per span.
    #[test]
    fn cells_record_take_scan_and_clear() {
        for planed in [true, false] {
            PLANED.store(planed, Relaxed);
            cells_record_take_scan_and_clear_with(planed);
        }
    }

    fn cells_record_take_scan_and_clear_with(planed: bool) {
        let id = TracebackId::from_index(0xAB_CDEF);
        // Addresses no allocator of this test process hands out: the top of the user half.
        // b and c lie 16 and 24 bytes into a span, in pages of their own: b, of 256 bytes or
        // more, on the coarsest grid, c in the fourth plane, if planed.
        let a = (1 << ADDRESS_BITS) - (1 << REGION_BITS);
        let b = a + 4096 * 40 + 16;
        let c = a + 4096 * 80 + 24;
        assert!(fits(a, 1) && fits(b, LARGE - 1) && fits(c, 8));
        assert!(!fits(a + 4, 8) && !fits(a, 0) && !fits(a, LARGE));
        assert!(!fits(1 << ADDRESS_BITS, 16));

        let memory_before = memory_bytes();
        assert_eq!(record(a, 24, 7, id), Ok(0));
        assert_eq!(record(b, MAX_SIZE, 7, id), Ok(0));
        assert_eq!(record(c, 8, 7, id), Ok(0));
        assert_eq!(get(c).of_generation(7), Some((8, id)));
        assert_eq!(take(c, 8, 7).of_generation(7), Some((8, id)));
        assert_eq!(get(a).of_generation(7), Some((24, id)));
        assert_eq!(get(a).of_generation(8), None, "another generation's id");
        assert_eq!(
            get(a).of_generation(7 + 2048),
            Some((24, id)),
            "11 bits of generation"
        );
        // Three pages of cells written, and the bitmap's pages that mark them: each plane's
        // pages, and the coarsest grid's (b's, a block of 256 bytes or more), are marked in
        // pages of the bitmap of their own.
        let bitmap_pages = if planed { 3 } else { 2 };
        assert_eq!(memory_bytes() - memory_before, (3 + bitmap_pages) * PAGE);
        #[cfg(target_os = "linux")]
        assert_eq!(
            resident(a),
            (3 + bitmap_pages) * PAGE,
            "what the kernel says the region holds"
        );
        assert_eq!(record(c, 8, 7, id), Ok(0));

        let mut seen = Vec::new();
        scan(|addr, held| {
            if addr >> REGION_BITS == a >> REGION_BITS {
                seen.push((addr, held.of_generation(7)));
            }
        });
        let expected = [(a, 24), (b, MAX_SIZE), (c, 8)].map(|(at, size)| (at, Some((size, id))));
        seen.sort_unstable(); // in the order of the cells: planes, then the coarse grids
        assert_eq!(seen, expected, "addresses rebuilt from the cells");

        // The coarsest grid holds one trace per 256 bytes: another block of that size starting
        // in b's stretch goes to the tables (a smaller one to its own grid). Taken without its
        // size, b's trace is found there, and goes back there.
        assert_eq!(record(b + 64, 256, 7, id), Err(()));
        let medium = take_any(b, 7);
        assert_eq!(medium.of_generation(7), Some((MAX_SIZE, id)));
        assert_eq!(get(b), Packed::EMPTY);
        assert!(put_back(b, medium));
        assert_eq!(get(b), medium);
        // Where smaller blocks wrote the page of its span's cell (a's page), a block of that
        // size takes the span's cell, and no page of a coarse grid.
        let m = a + 64;
        let pages = memory_bytes();
        assert_eq!(record(m, MEDIUM as u64, 7, id), Ok(0));
        assert_eq!(memory_bytes(), pages, "no page more");
        assert_eq!(get(m).of_generation(7), Some((MEDIUM as u64, id)));
        let in_span = take(m, MEDIUM, 7);
        assert_eq!(in_span.of_generation(7), Some((MEDIUM as u64, id)));
        assert_eq!(get(m), Packed::EMPTY);
        assert!(put_back(m, in_span));
        assert_eq!(take(m, MEDIUM, 7), in_span);

        // A second record at the same address reports the trace it replaces.
        assert_eq!(
            record(a, 32, 7, id),
            Ok(24),
            "a's trace replaced: a starts its span"
        );
        let held = take(a, 32, 7);
        assert_eq!(held.of_generation(7), Some((32, id)));
        assert_eq!(take(a, 32, 7), Packed::EMPTY);
        assert!(put_back(a, held));
        assert_eq!(get(a), held);

        // No block starts off the grain: a's trace is not an address 4 bytes further's.
        assert_eq!(get(a + 4), Packed::EMPTY);
        assert_eq!(take_any(a + 4, 7), Packed::EMPTY);
        assert_eq!(get(a), held);

        let n = a + GRAIN;
        assert!(fits(n, 16));
        // Read from the kernel's count of resident pages, on Linux only.
        #[cfg_attr(not(target_os = "linux"), allow(unused_variables))]
        let bitmap_pages = if planed {
            neighbour_in_its_own_plane(a, n, held, id, memory_before);
            4
        } else {
            neighbour_in_a_taken_cell(a, n, held, id, [b, c]);
            2
        };

        blocks_side_by_side_on_their_grids(a + 4096 * 300, id);
        a_block_across_grids(a + 4096 * 200, id);
        #[cfg_attr(not(target_os = "linux"), allow(unused_variables))]
        let bitmap_pages = bitmap_pages + 1; // marking the 64-byte grid's pages

        clear();
        assert_eq!(get(a), Packed::EMPTY);
        assert_eq!(get(b), Packed::EMPTY);
        assert_eq!(get(c), Packed::EMPTY);
        assert_eq!(get(n), Packed::EMPTY);
        assert_eq!(memory_bytes(), memory_before);
        #[cfg(target_os = "linux")]
        assert_eq!(
            resident(a),
            bitmap_pages * PAGE,
            "the cells were given back, the bitmap's pages stay"
        );
        let mut any = false;
        scan(|addr, _| any |= addr >> REGION_BITS == a >> REGION_BITS);
        assert!(!any, "nothing left to scan after clear");
        // A region never reserved holds nothing, and taking from it reserves nothing.
        assert_eq!(take_any(a - (1 << REGION_BITS), 7), Packed::EMPTY);
        assert!(cells_of(a - (1 << REGION_BITS), false).is_none());
        release();
        #[cfg(target_os = "linux")]
        assert_eq!(resident(a), 0);
    }

    /// A block of `MEDIUM` bytes or more at `page + 0x40` (whose span's page is not written)
    /// takes the coarse grid; from a failed realloc, its trace goes back to its span's cell,
    /// which a neighbour's record wrote meanwhile, at its offset there, and is found again. A
    /// stale trace in the span's cell does not hide the current one on the coarse grid.
    fn a_block_across_grids(page: usize, id: TracebackId) {
        let (m, neighbour) = (page + 0x40, page + 0x20);
        assert_eq!(record(m, 300, 7, id), Ok(0));
        assert_eq!(record(neighbour, 16, 7, id), Ok(0));
        let held = take(m, 300, 7);
        assert_eq!(held.of_generation(7), Some((300, id)));
        assert!(put_back(m, held));
        assert_eq!(
            get(m).of_generation(7),
            Some((300, id)),
            "found in its span's cell"
        );
        assert_eq!(take(m, 300, 7).of_generation(7), Some((300, id)));
        assert_eq!(get(m), Packed::EMPTY);

        assert_eq!(take(neighbour, 16, 7).of_generation(7), Some((16, id)));
        let other = page + 0x8040; // a page of its own
        assert_eq!(record(other, 300, 7, id), Ok(0));
        assert_eq!(record(other, 16, 6, id), Ok(0), "a stale small trace");
        assert_eq!(current(other, 7), Some((300, id)), "the coarse grid's");
        assert_eq!(
            take_any(other, 7).of_generation(7),
            Some((300, id)),
            "the coarse grid's"
        );
        assert_eq!(take_any(other, 7), Packed::EMPTY);

        // A block whose free was missed left its trace on its size's grid; a block of another
        // size recorded at its address takes it out and reports it, whichever grid it lands in.
        let x = page + 0x10040; // a page of its own
        assert_eq!(record(x, 100, 7, id), Ok(0));
        assert_eq!(
            record(x, 200, 7, id),
            Ok(100),
            "the missed 100-byte block's"
        );
        assert_eq!(record(x - 0x40, 16, 7, id), Ok(0), "x's span page written");
        assert_eq!(record(x, 300, 7, id), Ok(200), "from the span's cell");
        let mut at_x = Vec::new();
        scan(|at, held| {
            if at == x {
                at_x.push(held.size());
            }
        });
        assert_eq!(at_x, [300], "one trace at x");
        assert_eq!(take(x, 300, 7).of_generation(7), Some((300, id)));
        assert_eq!(take(x - 0x40, 16, 7).of_generation(7), Some((16, id)));

        // Two missed traces at one address, a 100-byte block's on its grid (its span's page
        // not written then) and a 16-byte block's in the span: a 200-byte block replaces both.
        let y = page + 0x20040;
        assert_eq!(record(y, 100, 7, id), Ok(0));
        assert_eq!(record(y - 0x40, 16, 7, id), Ok(0), "y's span page written");
        assert_eq!(
            record(y, 16, 7, id),
            Ok(0),
            "the 100-byte trace is on its grid"
        );
        assert_eq!(
            record(y, 200, 7, id),
            Ok(16 + 100),
            "both replaced, both counted"
        );
        assert_eq!(current(y, 7), Some((200, id)));
        assert_eq!(take(y, 200, 7).of_generation(7), Some((200, id)));
        assert_eq!(current(y, 7), None, "nothing left at y");
        assert_eq!(take(y - 0x40, 16, 7).of_generation(7), Some((16, id)));
    }

    /// Blocks of 64 to 255 bytes lying as glibc lays them out (in chunks of their size and an
    /// 8-byte header, rounded up to 16 bytes), in a
    /// page whose spans' cells are not written: each size's blocks all take cells on their
    /// grid (a cell per 64 bytes below 128, per 128 below 256), one page of cells each, and are
    /// found, scanned and taken at their own addresses.
    fn blocks_side_by_side_on_their_grids(page: usize, id: TracebackId) {
        let memory_before = memory_bytes();
        let runs: [(usize, usize); 4] = [
            (page, 64),
            (page + 0x1000, 100),
            (page + 0x2000, 128),
            (page + 0x3000, 200),
        ];
        let blocks: Vec<(usize, usize)> = runs
            .iter()
            .flat_map(|&(start, size)| {
                let chunk = (size + 8).next_multiple_of(16);
                (0..16).map(move |k| (start + k * chunk, size))
            })
            .collect();
        for &(addr, size) in &blocks {
            assert_eq!(record(addr, size as u64, 7, id), Ok(0), "{size} B");
        }
        // A page of the 64-byte grid, one of the 128-byte grid (each run lies in a page of
        // cells of its own grid: 4 KiB of heap are a 64th of a page's reach, or a 32nd), none
        // in the planes, and the page of the bitmap marking the 64-byte grid's pages (the
        // 128-byte grid's shares b's, on the 256-byte grid).
        assert_eq!(memory_bytes() - memory_before, 3 * PAGE);
        for &(addr, size) in &blocks {
            assert_eq!(
                get(addr).of_generation(7),
                Some((size as u64, id)),
                "{size} B"
            );
            assert_eq!(current(addr, 7), Some((size as u64, id)));
        }
        let mut seen = Vec::new();
        scan(|addr, held| {
            if (page..page + 0x4000).contains(&addr) {
                seen.push((addr, held.size()));
            }
        });
        seen.sort_unstable();
        assert_eq!(seen, blocks, "addresses rebuilt from the grids' cells");
        for (i, &(addr, size)) in blocks.iter().enumerate() {
            let held = if i % 2 == 0 {
                take(addr, size, 7)
            } else {
                take_any(addr, 7)
            };
            assert_eq!(held.of_generation(7), Some((size as u64, id)), "{size} B");
            assert_eq!(get(addr), Packed::EMPTY);
        }
    }

    /// In planes, the block 8 bytes after `a` (whose trace is `held`) has a cell of its own, in
    /// the second plane: both are recorded, found, scanned and taken apart.
    fn neighbour_in_its_own_plane(
        a: usize,
        n: usize,
        held: Packed,
        id: TracebackId,
        memory_before: usize,
    ) {
        assert_eq!(record(n, 8, 7, id), Ok(0));
        assert_eq!(get(n).of_generation(7), Some((8, id)));
        assert_eq!(get(a), held);
        // A fourth page of cells, in the second plane, and its page of the bitmap.
        assert_eq!(memory_bytes() - memory_before, 8 * PAGE);
        let mut found = Vec::new();
        scan(|addr, held| {
            if addr == a || addr == n {
                found.push((addr, held.of_generation(7)));
            }
        });
        assert_eq!(found, [(a, Some((32, id))), (n, Some((8, id)))]);
        assert_eq!(take(a, 32, 7), held);
        assert_eq!(get(n).of_generation(7), Some((8, id)), "n keeps its trace");
        assert!(put_back(a, held));
        assert_eq!(take(n, 8, 7).of_generation(7), Some((8, id)));
        assert_eq!(get(a), held, "a keeps its trace");
    }

    /// With one cell per span, the block 8 bytes after `a` (whose trace is `held`) shares a's
    /// cell: it goes to the tables while a lives, and takes the cell once a is freed.
    fn neighbour_in_a_taken_cell(
        a: usize,
        n: usize,
        held: Packed,
        id: TracebackId,
        [b, c]: [usize; 2],
    ) {
        assert_eq!(
            take(n, 16, 7),
            Packed::EMPTY,
            "the cell holds a's trace, not n's"
        );
        assert_eq!(get(n), Packed::EMPTY);
        assert_eq!(get(a), held);
        assert_eq!(record(n, 16, 7, id), Err(()), "n goes to the tables");
        assert_eq!(get(a), held);
        // Once a is freed, n can take the cell, and a's failed realloc cannot put it back.
        assert_eq!(take(a, 32, 7), held);
        assert_eq!(record(n, 16, 7, id), Ok(0));
        assert!(!put_back(a, held));
        assert_eq!(get(a), Packed::EMPTY);
        assert_eq!(get(n).of_generation(7), Some((16, id)));
        let mut found = Vec::new();
        scan(|addr, held| {
            if addr >> REGION_BITS == a >> REGION_BITS {
                found.push((addr, held.of_generation(7)));
            }
        });
        let expected = [(n, 16), (b, MAX_SIZE), (c, 8)].map(|(at, size)| (at, Some((size, id))));
        found.sort_unstable();
        assert_eq!(found, expected);
        // A stale trace of n's (another generation) still keeps a out of the cell.
        assert_eq!(record(a, 8, 8, id), Err(()));
        assert_eq!(take(n, 16, 7).of_generation(7), Some((16, id)));
        assert_eq!(record(a, 8, 8, id), Ok(0));
        assert_eq!(get(a).of_generation(8), Some((8, id)));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn strict_overcommit_is_read_from_the_kernels_setting() {
        let dir = std::env::temp_dir().join(format!("tm-overcommit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("mode");
        let path = |p: &std::path::Path| std::ffi::CString::new(p.as_os_str().as_encoded_bytes());
        std::fs::write(&file, "2\n").unwrap();
        assert_eq!(first_byte_of(&path(&file).unwrap()), Some(b'2'));
        std::fs::write(&file, "").unwrap();
        assert_eq!(first_byte_of(&path(&file).unwrap()), None, "empty");
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(first_byte_of(&path(&file).unwrap()), None, "missing");
        let mode = std::fs::read_to_string("/proc/sys/vm/overcommit_memory").unwrap();
        assert_eq!(strict_overcommit(), mode.trim() == "2", "{mode:?}");
        assert_eq!(reservations_are_charged(), mode.trim() == "2");
    }

    #[test]
    fn the_span_follows_how_close_small_blocks_lie() {
        assert_eq!(spacing(&mut [0x1040, 0, 0x1000, 0x1020]), 0x20);
        assert_eq!(spacing(&mut [0x1000, 0x1010, 0x2000]), 0x10);
        assert_eq!(
            spacing(&mut [0, 0x1000]),
            usize::MAX,
            "one block: no spacing"
        );
        // glibc's smallest chunk is 32 bytes, header included.
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        assert!(least_spacing(&std::alloc::System) >= 32);
        assert!(least_spacing(&SideBySide::default()) < 32);
    }

    /// Hands out 16-byte slots side by side, as allocators with small size classes do (and
    /// never takes them back: the test needs a few).
    #[derive(Default)]
    struct SideBySide {
        next: core::cell::Cell<usize>,
        slots: [core::cell::UnsafeCell<[u64; 2]>; 32],
    }

    // SAFETY: every block is a distinct 16-byte slot of `slots`, which outlives the test's
    // use; layouts of more than 16 bytes or alignment get null. Not shared between threads.
    unsafe impl GlobalAlloc for SideBySide {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            let i = self.next.get();
            if layout.size() > 16 || layout.align() > 8 || i == self.slots.len() {
                return core::ptr::null_mut();
            }
            self.next.set(i + 1);
            self.slots[i].get().cast()
        }
        unsafe fn dealloc(&self, _ptr: *mut u8, _layout: Layout) {}
    }

    /// Bytes of the reservation holding `addr`'s cells that are in memory (`/proc/self/smaps`).
    #[cfg(target_os = "linux")]
    fn resident(addr: usize) -> usize {
        let base = cells_of(addr, false).expect("reserved");
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut lines = smaps.lines();
        let start = format!("{base:x}-{:x} ", base + RESERVATION);
        lines
            .find(|l| l.starts_with(&start))
            .expect("the reservation is a mapping of its own");
        let rss = lines.find(|l| l.starts_with("Rss:")).expect("Rss line");
        let kib: usize = rss.split_whitespace().nth(1).unwrap().parse().unwrap();
        kib * 1024
    }
}
