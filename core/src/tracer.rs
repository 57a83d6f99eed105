//! The tracer: a trace table, a traceback store and the counters, behind the three events an
//! allocator reports (alloc, free, realloc).
//!
//! It is `&mut self` and knows nothing of threads: each adapter wraps it in the lock that fits its
//! platform. Every entry point is O(1) expected, allocates nothing and never panics; a block that
//! cannot be recorded (table full, size beyond 1 TiB) is counted in [`Counters::untraced_blocks`]
//! and [`Counters::untraced_bytes`] so its loss is visible in every snapshot.

use crate::table::{InsertError, Inserted, Placement, Slot, TraceTable};
use crate::traceback::{
    TracebackEntry, TracebackId, TracebackRef, TracebackStorage, TracebackStore,
};

/// The default heap's domain. Other numbers name other heaps (arenas, pools, device memory).
pub const DEFAULT_DOMAIN: u32 = 0;

/// Python's bounds for the traceback limit: `tracemalloc.start(nframe)` accepts 1..=65535.
pub const MAX_NFRAME: usize = u16::MAX as usize;

/// The tracer's counters, as Python's `get_traced_memory()` and friends report them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Bytes in live traced blocks.
    pub current: u64,
    /// Highest `current` since start or the last [`Tracer::reset_peak`].
    pub peak: u64,
    /// Live traced blocks.
    pub traces: u64,
    /// Blocks that could not be recorded (table full or unrepresentable), since start.
    pub untraced_blocks: u64,
    /// Bytes of those blocks.
    pub untraced_bytes: u64,
}

impl Counters {
    /// Adds another tracer's counters (for adapters that shard the tracer). Peaks add up to an
    /// upper bound of the true peak; adapters that need the exact one keep it themselves.
    /// Saturating, as the untraced counts are: a block tracked with an absurd size saturates
    /// its tracer's, and a snapshot adds up every tracer's.
    pub fn merge(&mut self, other: &Counters) {
        self.current = self.current.saturating_add(other.current);
        self.peak = self.peak.saturating_add(other.peak);
        self.traces = self.traces.saturating_add(other.traces);
        self.untraced_blocks = self.untraced_blocks.saturating_add(other.untraced_blocks);
        self.untraced_bytes = self.untraced_bytes.saturating_add(other.untraced_bytes);
    }
}

/// What happened to a recorded allocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recorded {
    /// The block is traced.
    Traced,
    /// The block is counted as untraced: no room, or not representable.
    Untraced,
}

/// All storage a tracer works in, provided by the adapter.
pub struct TracerStorage<'a> {
    /// Trace table slots.
    pub slots: &'a mut [Slot],
    /// Traceback store arrays.
    pub tracebacks: TracebackStorage<'a>,
}

/// A tracer's arrays with their sizes in the type, zero-initialised so that a `static` costs
/// only bss: the storage a microcontroller gives its tracer (and tests theirs).
///
/// `SLOTS` trace slots (at most 3/4 hold live blocks), `TRACEBACKS` distinct call stacks (with
/// twice as many index cells, so the index stays at most half full) and `FRAMES` frames in the
/// pool the call stacks share.
pub struct TracerArrays<const SLOTS: usize, const TRACEBACKS: usize, const FRAMES: usize> {
    slots: [Slot; SLOTS],
    entries: [TracebackEntry; TRACEBACKS],
    index: [[u64; 2]; TRACEBACKS],
    frames: [usize; FRAMES],
}

impl<const SLOTS: usize, const TRACEBACKS: usize, const FRAMES: usize>
    TracerArrays<SLOTS, TRACEBACKS, FRAMES>
{
    /// Empty arrays.
    pub const fn new() -> Self {
        TracerArrays {
            slots: [Slot::EMPTY; SLOTS],
            entries: [TracebackEntry::EMPTY; TRACEBACKS],
            index: [[0; 2]; TRACEBACKS],
            frames: [0; FRAMES],
        }
    }

    /// The arrays as a tracer's storage.
    pub fn storage(&mut self) -> TracerStorage<'_> {
        TracerStorage {
            slots: &mut self.slots,
            tracebacks: TracebackStorage {
                entries: &mut self.entries,
                index: self.index.as_flattened_mut(),
                frames: &mut self.frames,
            },
        }
    }
}

impl<const SLOTS: usize, const TRACEBACKS: usize, const FRAMES: usize> Default
    for TracerArrays<SLOTS, TRACEBACKS, FRAMES>
{
    fn default() -> Self {
        Self::new()
    }
}

/// Records allocations into a trace table and a traceback store.
pub struct Tracer<'a> {
    table: TraceTable<'a>,
    tracebacks: TracebackStore<'a>,
    counters: Counters,
}

impl<'a> Tracer<'a> {
    /// A tracer over `storage`, which it clears, its table [`Placement::Packed`].
    pub fn new(storage: TracerStorage<'a>) -> Tracer<'a> {
        Tracer::with_placement(storage, Placement::Packed)
    }

    /// A tracer over `storage`, as [`Tracer::new`], its table placed by `placement`.
    pub fn with_placement(storage: TracerStorage<'a>, placement: Placement) -> Tracer<'a> {
        Tracer {
            table: TraceTable::with_placement(storage.slots, placement),
            tracebacks: TracebackStore::new(storage.tracebacks),
            counters: Counters::default(),
        }
    }

    /// Records a new block of `size` bytes at `addr` in `domain`, allocated from the call stack
    /// `frames` (most recent call first, already cut to the traceback limit; `total_nframe` is
    /// its depth before the cut). A block already traced at the same key is replaced, as
    /// CPython does, even when the new one cannot be recorded.
    pub fn record_alloc(
        &mut self,
        domain: u32,
        addr: usize,
        size: usize,
        frames: &[usize],
        total_nframe: u16,
    ) -> Recorded {
        let traceback = self.tracebacks.intern(domain, frames, total_nframe);
        self.insert(domain, addr, size as u64, traceback)
    }

    /// Records a block under a traceback interned before (by this tracer, or, for adapters that
    /// shard the table and share one traceback store, by that store), replacing a trace at its
    /// key as [`Tracer::record_alloc`] does. A tracer whose own store is empty reads every such
    /// id as the default domain, so sharing tracers serve domain 0.
    #[inline]
    pub fn record_alloc_with(
        &mut self,
        domain: u32,
        addr: usize,
        size: usize,
        traceback: TracebackId,
    ) -> Recorded {
        self.insert(domain, addr, size as u64, traceback)
    }

    /// [`Tracer::record_alloc_with`] for a trace that [`Tracer::take`] took out while its
    /// block stayed live (a reallocation in place or one that failed): past the table's load
    /// limit if need be, since other blocks may have taken the table to it meanwhile.
    #[inline]
    pub fn restore(
        &mut self,
        domain: u32,
        addr: usize,
        size: usize,
        traceback: TracebackId,
    ) -> Recorded {
        self.insert_as(domain, addr, size as u64, traceback, true)
    }

    #[inline]
    fn insert(&mut self, domain: u32, addr: usize, size: u64, traceback: TracebackId) -> Recorded {
        self.insert_as(domain, addr, size, traceback, false)
    }

    #[inline(always)]
    fn insert_as(
        &mut self,
        domain: u32,
        addr: usize,
        size: u64,
        traceback: TracebackId,
        restored: bool,
    ) -> Recorded {
        if traceback == TracebackId::OVERFLOW && domain != DEFAULT_DOMAIN {
            // The overflow traceback belongs to the default domain; recording the block under it
            // would move it to another domain, so it is counted as untraced instead.
            return self.replace_with_untraced(domain, addr, size);
        }
        let tracebacks = &self.tracebacks;
        let is_key = |id: TracebackId| tracebacks.domain_of(id) == domain;
        let inserted = if restored {
            self.table.restore(addr, size, traceback, is_key)
        } else {
            self.table.insert(addr, size, traceback, is_key)
        };
        match inserted {
            Ok(Inserted::New) => {
                self.counters.traces += 1;
                self.add_current(size);
                Recorded::Traced
            }
            Ok(Inserted::Replaced { old_size }) => {
                self.counters.current -= old_size;
                self.add_current(size);
                Recorded::Traced
            }
            // A full table has no trace at the key: `insert` would have replaced it.
            Err(InsertError::Full) => self.count_untraced(size),
            Err(InsertError::Unrepresentable) => self.replace_with_untraced(domain, addr, size),
        }
    }

    /// Counts a block that could not be recorded at a key that may hold a trace (a missed free,
    /// a block tracked again, a resize in place): that trace goes, as CPython replaces it, or
    /// the block would count twice, traced at a stale size and untraced.
    fn replace_with_untraced(&mut self, domain: u32, addr: usize, size: u64) -> Recorded {
        self.take(domain, addr);
        self.count_untraced(size)
    }

    /// Counts `blocks` blocks of `bytes` bytes in all that their adapter could not record (its
    /// traces were busy) as untraced, as blocks the table had no room for are.
    pub fn record_untraced(&mut self, blocks: u64, bytes: u64) {
        self.counters.untraced_blocks = self.counters.untraced_blocks.saturating_add(blocks);
        self.counters.untraced_bytes = self.counters.untraced_bytes.saturating_add(bytes);
    }

    fn count_untraced(&mut self, size: u64) -> Recorded {
        // Saturating: blocks beyond 1 TiB land here, and a few of them must not overflow.
        self.record_untraced(1, size);
        Recorded::Untraced
    }

    #[inline]
    fn add_current(&mut self, size: u64) {
        self.counters.current += size;
        if self.counters.current > self.counters.peak {
            self.counters.peak = self.counters.current;
        }
    }

    /// Forgets the block at `addr` in `domain`. Returns its size if it was traced; freeing an
    /// untraced block (allocated before tracing started, or dropped when the table was full) is
    /// not an error.
    #[inline]
    pub fn record_free(&mut self, domain: u32, addr: usize) -> Option<u64> {
        self.take(domain, addr).map(|(size, _)| size)
    }

    /// [`Tracer::record_free`], returning the whole trace: its size and traceback id, which
    /// [`Tracer::restore`] takes back should the block stay after all (a failed reallocation
    /// whose trace left before the allocator was called).
    #[inline]
    pub fn take(&mut self, domain: u32, addr: usize) -> Option<(u64, TracebackId)> {
        let tracebacks = &self.tracebacks;
        let slot = self
            .table
            .remove(addr, |id| tracebacks.domain_of(id) == domain)?;
        self.counters.traces -= 1;
        self.counters.current -= slot.size();
        Some((slot.size(), slot.traceback()))
    }

    /// Records a reallocation from `old` to `new` of `size` bytes. As in CPython the block takes
    /// the traceback of the realloc call, whether or not it moved.
    pub fn record_realloc(
        &mut self,
        domain: u32,
        old: usize,
        new: usize,
        size: usize,
        frames: &[usize],
        total_nframe: u16,
    ) -> Recorded {
        if old != new {
            self.record_free(domain, old);
        }
        // A block resized in place but untraced at its new size loses its trace at the old one
        // there, as any block recorded over a trace does.
        self.record_alloc(domain, new, size, frames, total_nframe)
    }

    /// The trace of the block at `addr`, if traced: its size and traceback.
    pub fn trace(&self, domain: u32, addr: usize) -> Option<(u64, TracebackRef<'_>)> {
        let tracebacks = &self.tracebacks;
        let slot = self
            .table
            .get(addr, |id| tracebacks.domain_of(id) == domain)?;
        Some((slot.size(), self.tracebacks.get(slot.traceback())))
    }

    /// Forgets every trace and traceback and zeroes the counters (Python's `clear_traces()`).
    pub fn clear(&mut self) {
        self.table.clear();
        self.tracebacks.clear();
        self.counters = Counters::default();
    }

    /// Sets the peak to the current size (Python's `reset_peak()`).
    pub fn reset_peak(&mut self) {
        self.counters.peak = self.counters.current;
    }

    /// The counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The trace table (read-only), for snapshots.
    pub fn table(&self) -> &TraceTable<'a> {
        &self.table
    }

    /// The traceback store (read-only), for snapshots.
    pub fn tracebacks(&self) -> &TracebackStore<'a> {
        &self.tracebacks
    }

    /// Interns a traceback without recording a block (for adapters that cache ids).
    pub fn intern(&mut self, domain: u32, frames: &[usize], total_nframe: u16) -> TracebackId {
        self.tracebacks.intern(domain, frames, total_nframe)
    }

    /// Bytes of storage the tracer holds (Python's `get_tracemalloc_memory()`).
    pub fn memory_bytes(&self) -> usize {
        core::mem::size_of_val(self.table.slots()) + self.tracebacks.memory_bytes()
    }

    /// Whether the trace table is at its load limit, so that the next new block would be
    /// untraced. The std adapter grows the table before that happens.
    pub fn table_is_full(&self) -> bool {
        self.table.len() >= self.table.limit()
    }

    /// Gives the storage back, for its owner to free (see [`TraceTable::into_slots`] and
    /// [`TracebackStore::into_storage`]).
    pub fn into_storage(self) -> TracerStorage<'a> {
        TracerStorage {
            slots: self.table.into_slots(),
            tracebacks: self.tracebacks.into_storage(),
        }
    }

    /// Moves the traces into bigger storage; see [`TraceTable::migrate`].
    pub fn migrate_table(
        &mut self,
        storage: &'a mut [Slot],
    ) -> Result<&'a mut [Slot], &'a mut [Slot]> {
        self.table.migrate(storage)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 8 slots (6 live blocks), 8 tracebacks, 64 frames.
    type Arrays = TracerArrays<8, 8, 64>;

    #[test]
    fn into_storage_gives_back_every_array_it_was_made_from() {
        let mut a = Arrays::new();
        let storage = a.storage();
        let ptrs = (
            storage.slots.as_ptr(),
            storage.tracebacks.entries.as_ptr(),
            storage.tracebacks.index.as_ptr(),
            storage.tracebacks.frames.as_ptr(),
        );
        let mut t = Tracer::new(storage);
        t.record_alloc(0, 0x1000, 100, &[1, 2], 2);
        let back = t.into_storage();
        assert_eq!(
            (
                back.slots.as_ptr(),
                back.tracebacks.entries.as_ptr(),
                back.tracebacks.index.as_ptr(),
                back.tracebacks.frames.as_ptr(),
            ),
            ptrs
        );
        let lens = (
            back.slots.len(),
            back.tracebacks.entries.len(),
            back.tracebacks.index.len(),
            back.tracebacks.frames.len(),
        );
        assert_eq!(lens, (8, 8, 16, 64));
    }

    #[test]
    fn counters_follow_alloc_free_and_peak() {
        let mut a = Arrays::new();
        let mut t = Tracer::new(a.storage());
        t.record_alloc(0, 0x1000, 100, &[1, 2], 2);
        t.record_alloc(0, 0x2000, 50, &[1, 2], 2);
        assert_eq!(t.counters().current, 150);
        assert_eq!(t.record_free(0, 0x1000), Some(100));
        assert_eq!(t.record_free(0, 0x1000), None);
        let c = t.counters();
        assert_eq!((c.current, c.peak, c.traces), (50, 150, 1));
        t.reset_peak();
        assert_eq!(t.counters().peak, 50);
    }

    #[test]
    fn a_taken_trace_goes_back_as_it_was() {
        let mut a = Arrays::new();
        let mut t = Tracer::new(a.storage());
        t.record_alloc(0, 0x1000, 100, &[7, 8], 3);
        let before = *t.counters();
        let (size, id) = t.take(0, 0x1000).unwrap();
        assert_eq!(
            (size, t.counters().current, t.counters().traces),
            (100, 0, 0)
        );
        assert_eq!(t.take(0, 0x1000), None);
        assert_eq!(
            t.record_alloc_with(0, 0x1000, size as usize, id),
            Recorded::Traced
        );
        assert_eq!(*t.counters(), before);
        let (size, tb) = t.trace(0, 0x1000).unwrap();
        assert_eq!(
            (size, tb.frames, tb.total_nframe),
            (100, &[7usize, 8][..], 3)
        );
    }

    #[test]
    fn realloc_moves_the_trace_and_takes_the_new_traceback() {
        let mut a = Arrays::new();
        let mut t = Tracer::new(a.storage());
        t.record_alloc(0, 0x1000, 10, &[1], 1);
        t.record_realloc(0, 0x1000, 0x3000, 40, &[2], 1);
        assert!(t.trace(0, 0x1000).is_none());
        let (size, tb) = t.trace(0, 0x3000).unwrap();
        assert_eq!((size, tb.frames), (40, &[2usize][..]));
        t.record_realloc(0, 0x3000, 0x3000, 8, &[3], 1);
        assert_eq!(t.counters().current, 8);
        assert_eq!(t.counters().traces, 1);
    }

    #[test]
    fn a_block_resized_in_place_or_traced_again_past_what_a_slot_holds_loses_its_old_trace() {
        let huge = (crate::table::MAX_TRACED_SIZE + 1) as usize;
        for in_place in [true, false] {
            let mut a = Arrays::new();
            let mut t = Tracer::new(a.storage());
            let domain = if in_place { 0 } else { 1 };
            t.record_alloc(domain, 0x1000, 10, &[1], 1);
            let got = if in_place {
                t.record_realloc(domain, 0x1000, 0x1000, huge, &[2], 1)
            } else {
                t.record_alloc(domain, 0x1000, huge, &[2], 1)
            };
            assert_eq!(got, Recorded::Untraced);
            assert!(
                t.trace(domain, 0x1000).is_none(),
                "no trace at its old size"
            );
            let c = *t.counters();
            assert_eq!((c.traces, c.current), (0, 0));
            assert_eq!((c.untraced_blocks, c.untraced_bytes), (1, huge as u64));
        }
    }

    #[test]
    fn a_block_traced_again_once_the_store_is_full_replaces_the_old_trace() {
        let mut a = Arrays::new();
        let mut t = Tracer::new(a.storage());
        t.record_alloc(1, 0x1000, 10, &[1], 1);
        let mut frame = 2;
        while t.intern(1, &[frame], 1) != TracebackId::OVERFLOW {
            frame += 1;
        }
        // Outside the default domain, a stack past a full store leaves its block untraced.
        assert_eq!(
            t.record_alloc(1, 0x1000, 20, &[frame], 1),
            Recorded::Untraced
        );
        assert!(t.trace(1, 0x1000).is_none(), "no trace at its old size");
        let c = *t.counters();
        assert_eq!((c.traces, c.current), (0, 0));
        assert_eq!((c.untraced_blocks, c.untraced_bytes), (1, 20));
    }

    #[test]
    fn merged_counters_saturate_as_the_untraced_counts_do() {
        let mut a = Arrays::new();
        let mut t = Tracer::new(a.storage());
        t.record_untraced(1, u64::MAX); // as `track` of a block of absurd size counts it
        let mut sum = *t.counters();
        sum.merge(t.counters());
        assert_eq!((sum.untraced_blocks, sum.untraced_bytes), (2, u64::MAX));
    }

    #[test]
    fn full_table_counts_untraced_blocks_and_bytes() {
        let mut a = Arrays::new();
        let mut t = Tracer::new(a.storage());
        for i in 1..=10 {
            t.record_alloc(0, i * 16, 3, &[1], 1);
        }
        let c = *t.counters();
        assert_eq!(c.traces, 6);
        assert_eq!((c.untraced_blocks, c.untraced_bytes), (4, 12));
        assert!(t.table_is_full());
    }

    #[test]
    fn domains_separate_equal_addresses() {
        let mut a = Arrays::new();
        let mut t = Tracer::new(a.storage());
        t.record_alloc(0, 0x10, 1, &[1], 1);
        t.record_alloc(5, 0x10, 2, &[1], 1);
        assert_eq!(t.record_free(5, 0x10), Some(2));
        assert_eq!(t.trace(0, 0x10).map(|(s, _)| s), Some(1));
    }

    #[test]
    fn clear_forgets_everything() {
        let mut a = Arrays::new();
        let mut t = Tracer::new(a.storage());
        t.record_alloc(0, 0x10, 1, &[1], 1);
        t.clear();
        assert_eq!(*t.counters(), Counters::default());
        assert!(t.table().is_empty());
        assert!(t.tracebacks().is_empty());
    }
}
