//! Traceback interning: identical call stacks share one id.
//!
//! A traceback is a list of raw code addresses, most recent call first, captured in one domain.
//! The store keeps each distinct `(domain, frames)` once, in three arrays the caller provides:
//! entries (12 bytes each), an open-addressed index of entry ids keyed by the stack's 64-bit
//! [`stack_key`], and a pool the frames are appended to. Nothing is freed until
//! [`TracebackStore::clear`], as in CPython: the set of call sites of a program is small and
//! stable, the set of blocks is not.
//!
//! When any array is full, new stacks map to [`TracebackId::OVERFLOW`], which snapshots report
//! as a single `<traceback store full>` frame, so their bytes still show up.

/// Names one interned traceback. Ids fit in 24 bits, so a trace slot can pack one beside a size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct TracebackId(u32);

impl TracebackId {
    /// Bits an id uses.
    pub const MASK: u32 = (1 << 24) - 1;
    /// The id of every stack that arrived after the store filled up (domain 0, no frames).
    pub const OVERFLOW: TracebackId = TracebackId(0);

    /// The id with this index (masked to 24 bits).
    #[inline]
    pub const fn from_index(index: u32) -> TracebackId {
        TracebackId(index & Self::MASK)
    }

    /// The id's index into the store's entries (see [`TracebackStore::raw_parts`]).
    #[inline]
    pub const fn index(self) -> u32 {
        self.0
    }
}

/// Bookkeeping for one interned traceback.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct TracebackEntry {
    start: u32,
    len: u16,
    total_nframe: u16,
    domain: u32,
}

impl TracebackEntry {
    /// An unused entry, for initialising storage.
    pub const EMPTY: TracebackEntry = TracebackEntry {
        start: 0,
        len: 0,
        total_nframe: 0,
        domain: 0,
    };

    /// The domain the stack was captured in.
    #[inline]
    pub fn domain(&self) -> u32 {
        self.domain
    }

    /// How deep the stack was when captured, before the traceback limit cut it (saturating).
    #[inline]
    pub fn total_nframe(&self) -> u16 {
        self.total_nframe
    }

    /// Where the frames start in the frame pool.
    #[inline]
    pub fn start(&self) -> usize {
        self.start as usize
    }

    /// Number of frames kept.
    #[inline]
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// Whether no frame was kept.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// The store has no room for another traceback.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreFull;

/// What a store held when [`TracebackStore::take_storage`] took its storage out.
#[derive(Debug)]
#[must_use = "the store is empty until its storage is put back"]
pub struct Held {
    entry_count: usize,
    frame_count: usize,
    overflowed: usize,
    /// The index taken out, by address and length: [`Index::Kept`] with another one rebuilds.
    index: (usize, usize),
}

/// The index of storage given back to a store ([`TracebackStore::put_back`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Index {
    /// The index taken out, unchanged: growth failed and the arrays are as they were.
    Kept,
    /// A new index, whatever it holds: the store indexes every entry again.
    Rebuild,
}

/// A borrowed view of one interned traceback.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TracebackRef<'s> {
    /// The domain the stack was captured in.
    pub domain: u32,
    /// Code addresses, most recent call first.
    pub frames: &'s [usize],
    /// Depth of the stack before the limit cut it.
    pub total_nframe: u16,
}

/// The storage a [`TracebackStore`] works in.
#[derive(Debug)]
pub struct TracebackStorage<'a> {
    /// One entry per distinct traceback; entry 0 is reserved for [`TracebackId::OVERFLOW`].
    pub entries: &'a mut [TracebackEntry],
    /// The hash index; its usable length is the largest power of two that fits.
    pub index: &'a mut [u64],
    /// The frame pool.
    pub frames: &'a mut [usize],
}

/// Where a store's index lies, for an owner that prefetches a stack's first index cell before
/// it takes the store's lock: in a store of millions of stacks that cell is a cache miss, and
/// taken under the lock it made every other thread wait for it too. A stale hint only names
/// the wrong line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IndexHint {
    /// Address of the index's first cell (0: no index).
    pub base: usize,
    /// The index's length minus one (a power of two minus one).
    pub mask: usize,
}

impl IndexHint {
    /// The address of the first cell a lookup of `probe` reads.
    #[inline]
    pub fn first_cell(&self, probe: &StackProbe) -> usize {
        let i = probe.group_cells(self.mask).next().unwrap_or(0);
        self.base
            .wrapping_add(i.wrapping_mul(core::mem::size_of::<u64>()))
    }
}

/// Where the store looks a stack up: its [`stack_key`] and its group of index cells (chosen
/// by its callers: a recursion's stacks that differ in their last calls share one), computed once for an owner that prefetches the first cell
/// ([`IndexHint::first_cell`]) and then interns ([`TracebackStore::try_intern_probed`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StackProbe {
    key: u64,
    home: u64,
}

impl StackProbe {
    /// The probe of `frames`, whose [`stack_key`] is `key`.
    #[inline]
    pub fn new(key: u64, frames: &[usize]) -> StackProbe {
        StackProbe {
            key,
            home: home_group(frames),
        }
    }

    /// The cells of the stack's group in an index of `mask + 1` cells, in the order a lookup
    /// reads them.
    #[inline]
    fn group_cells(self, mask: usize) -> impl Iterator<Item = usize> {
        let width = (mask + 1).min(GROUP);
        let group = self.home as usize & mask & !(width - 1);
        (0..width).map(move |k| group | (self.key as usize).wrapping_add(k) & (width - 1))
    }
}

/// Interns call stacks.
pub struct TracebackStore<'a> {
    entries: &'a mut [TracebackEntry],
    /// Cells of `id | tag`, `tag` being the top 40 bits of the stack's [`stack_key`] (0 = empty:
    /// id 0 is the overflow entry, never indexed). A lookup decides on the key alone and reads
    /// neither entries nor frames, each a cache miss in a big store (see [`stack_key`]).
    index: &'a mut [u64],
    index_mask: usize,
    frames: &'a mut [usize],
    entry_count: usize,
    frame_count: usize,
    overflowed: usize,
}

/// Where a stack's running hash starts (see [`fold_frame`]).
pub const HASH_SEED: u64 = 0x243F_6A88_85A3_08D3;

/// Folds the next frame, most recent first, into a stack's running hash. Adapters that walk
/// the stack fold each frame as they read it: the multiply is off the dependency chain and the
/// add and rotate fit in the latency of the next frame load, so the hash costs nothing beyond
/// the walk, and the store reuses it through [`TracebackStore::try_intern_probed`] instead of
/// hashing the frames again. An add, not an xor: with an xor the fold was linear and its
/// rotation repeats every 64 frames, so a frame 64 places further on cancelled out.
#[inline(always)]
pub fn fold_frame(hash: u64, frame: usize) -> u64 {
    hash.wrapping_add((frame as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .rotate_left(29)
}

/// The running hash of `frames` (most recent first): [`fold_frame`] over them from
/// [`HASH_SEED`]. Adapters key per-thread caches of interned ids with it.
#[inline]
pub fn fold_stack(frames: &[usize]) -> u64 {
    frames.iter().fold(HASH_SEED, |h, &f| fold_frame(h, f))
}

/// A stack's key: its running hash ([`fold_frame`]) with the domain, the number of frames kept
/// and `total_nframe` mixed in, avalanched. The store's index compares its top 40 bits and
/// probes from its low bits (within the stack's group, then in the whole index), and adapters
/// key per-thread caches of ids with all 64.
///
/// Stacks are told apart by their keys alone, as caches of ids must be: comparing frames
/// would read an entry and the frame pool, two more cache misses per lookup in a store of
/// millions of stacks (deep recursion ran 1.13x longer with them, BENCHMARKS.md, section 2).
/// Two different stacks share an id only if a lookup meets a stack with the same 40 bits in
/// the cells it probes: about one chance in 10^11 per lookup that misses a per-thread cache.
#[inline]
pub fn stack_key(domain: u32, folded: u64, len: usize, total_nframe: u16) -> u64 {
    let shape = (u64::from(domain) << 32 | u64::from(total_nframe) << 16 | len as u64 & 0xFFFF)
        .wrapping_mul(0xA24B_AED4_963E_E407);
    let h = (folded ^ shape).wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    h ^ (h >> 29)
}

/// Index cells per group: a stack is looked up first in the group of cells its callers choose
/// ([`home_group`]), and in the whole index only once that group is full.
const GROUP: usize = 32;

/// Frames at the top of a stack that do not choose its group. 32 cells and 4 frames ran `tree`
/// in 0.93 of the time of 16 and 3 (9 rounds; 8 and 2 to 32 and 4 all measured within 0.60–0.67
/// s against 0.79 s for no groups): a recursion's stacks that differ in their last three calls
/// share a group. More distinct stacks with the same callers than a group holds spill to the
/// whole index, the cost of no groups plus the group's scan.
const GROUP_SKIP: usize = 4;

/// A stack's group of index cells, chosen by its frames past the first [`GROUP_SKIP`] (by its
/// outermost frame when it has no more: short limits would otherwise put every stack in one
/// group): stacks that differ only in their innermost frames share four lines of the index.
/// Programs allocate from one part of their call tree after another, so a lookup finds its
/// lines in the cache more often than random ones: deep recursion, whose stacks rarely repeat
/// soon enough for a per-thread cache, spent a third of its time on the index's cache misses
/// before, and ran in 0.79–0.87 of its time (BENCHMARKS.md, section 2).
#[inline]
fn home_group(frames: &[usize]) -> u64 {
    let skipped = GROUP_SKIP.min(frames.len().saturating_sub(1));
    stack_key(0, fold_stack(&frames[skipped..]), 0, 0)
}

/// The probe of `frames` captured in `domain`, hashing them ([`fold_stack`]): for stacks that
/// did not come from a walk that folded them on the way.
#[inline]
fn probe_of(domain: u32, frames: &[usize], total_nframe: u16) -> StackProbe {
    StackProbe::new(
        stack_key(domain, fold_stack(frames), frames.len(), total_nframe),
        frames,
    )
}

/// The bits of an index cell above the id: the key's top 40 (positions use its low bits).
#[inline]
fn index_tag(key: u64) -> u64 {
    key & !u64::from(TracebackId::MASK)
}

impl<'a> TracebackStore<'a> {
    /// A store over `storage`, which it clears. Entry capacity is bounded by the index (at most
    /// half of its power-of-two length, to keep probes short) and by 2^24 ids.
    pub fn new(storage: TracebackStorage<'a>) -> TracebackStore<'a> {
        let mut store = TracebackStore::over(storage);
        store.clear();
        store
    }

    /// A store over `storage` as it is, holding nothing yet (the caller clears or fills it).
    fn over(storage: TracebackStorage<'a>) -> TracebackStore<'a> {
        let TracebackStorage {
            entries,
            index,
            frames,
        } = storage;
        let usable = if index.is_empty() {
            0
        } else {
            1usize << (usize::BITS - 1 - index.len().leading_zeros())
        };
        let index = &mut index[..usable];
        TracebackStore {
            entries,
            index,
            index_mask: usable.saturating_sub(1),
            frames,
            entry_count: 0,
            frame_count: 0,
            overflowed: 0,
        }
    }

    /// Forgets every traceback (ids handed out before become invalid).
    pub fn clear(&mut self) {
        self.index.fill(0);
        self.entries.fill(TracebackEntry::EMPTY);
        // Entry 0 is the overflow traceback, present even in an empty store when there is room.
        self.entry_count = usize::from(!self.entries.is_empty());
        self.frame_count = 0;
        self.overflowed = 0;
    }

    /// Where the index lies now (see [`IndexHint`]).
    pub fn index_hint(&self) -> IndexHint {
        IndexHint {
            base: self.index.as_ptr() as usize,
            mask: self.index_mask,
        }
    }

    /// Most distinct tracebacks the store can hold, the overflow entry included.
    pub fn entry_capacity(&self) -> usize {
        self.entries
            .len()
            .min(self.index.len() / 2 + 1)
            .min(TracebackId::MASK as usize + 1)
    }

    /// Number of distinct tracebacks held, the overflow entry included.
    pub fn len(&self) -> usize {
        self.entry_count
    }

    /// Whether only the overflow entry (or nothing) is held.
    pub fn is_empty(&self) -> bool {
        self.entry_count <= 1
    }

    /// Frames stored in the pool.
    pub fn frame_count(&self) -> usize {
        self.frame_count
    }

    /// Frames the pool has room for.
    pub fn frame_capacity(&self) -> usize {
        self.frames.len()
    }

    /// How many interns were answered with [`TracebackId::OVERFLOW`] since the last clear.
    pub fn overflowed(&self) -> usize {
        self.overflowed
    }

    /// The raw parts (entries in use and frames in use), for a fast copy into a snapshot.
    pub fn raw_parts(&self) -> (&[TracebackEntry], &[usize]) {
        (
            &self.entries[..self.entry_count],
            &self.frames[..self.frame_count],
        )
    }

    /// The id of `frames` captured in `domain`, interning it if new; when the store is full,
    /// [`TracebackId::OVERFLOW`] (counted in [`TracebackStore::overflowed`]).
    pub fn intern(&mut self, domain: u32, frames: &[usize], total_nframe: u16) -> TracebackId {
        let probe = probe_of(domain, frames, total_nframe);
        self.intern_probed(domain, frames, total_nframe, probe)
    }

    /// [`TracebackStore::intern`] for a caller that made the stack's probe already (see
    /// [`TracebackStore::try_intern_probed`]).
    pub fn intern_probed(
        &mut self,
        domain: u32,
        frames: &[usize],
        total_nframe: u16,
        probe: StackProbe,
    ) -> TracebackId {
        match self.try_intern_probed(domain, frames, total_nframe, probe) {
            Ok(id) => id,
            Err(StoreFull) => self.overflow(),
        }
    }

    /// Like [`TracebackStore::intern`], but a new stack that does not fit is an error, so that
    /// the owner can grow the storage ([`TracebackStore::take_storage`]) and try again.
    pub fn try_intern(
        &mut self,
        domain: u32,
        frames: &[usize],
        total_nframe: u16,
    ) -> Result<TracebackId, StoreFull> {
        let probe = probe_of(domain, frames, total_nframe);
        self.try_intern_probed(domain, frames, total_nframe, probe)
    }

    /// [`TracebackStore::try_intern`] for a caller that made the stack's probe already:
    /// `probe` must be `StackProbe::new(stack_key(domain, fold_stack(frames), frames.len(),
    /// total_nframe), frames)`. A frame-pointer walk folds the frames on the way, and an owner
    /// that prefetches the probe's first cell before taking its lock makes the probe once.
    pub fn try_intern_probed(
        &mut self,
        domain: u32,
        frames: &[usize],
        total_nframe: u16,
        probe: StackProbe,
    ) -> Result<TracebackId, StoreFull> {
        let len = frames.len().min(u16::MAX as usize);
        let (frames, probe) = if len < frames.len() {
            let kept = &frames[..len];
            (kept, probe_of(domain, kept, total_nframe))
        } else {
            (frames, probe)
        };
        if self.index.is_empty() {
            return Err(StoreFull);
        }
        let i = match self.find(probe) {
            Ok(id) => return Ok(id),
            Err(Some(empty)) => empty,
            Err(None) => return Err(StoreFull),
        };
        if self.entry_count >= self.entry_capacity()
            || self.frames.len() - self.frame_count < len
            || self.frame_count + len > u32::MAX as usize
        {
            return Err(StoreFull);
        }
        let id = self.entry_count;
        let start = self.frame_count;
        self.frames[start..start + len].copy_from_slice(frames);
        self.frame_count += len;
        self.entries[id] = TracebackEntry {
            start: start as u32,
            len: len as u16,
            total_nframe,
            domain,
        };
        self.entry_count += 1;
        self.index[i] = id as u64 | index_tag(probe.key);
        Ok(TracebackId(id as u32))
    }

    /// The id indexed under `probe`'s key, or the empty cell where it would go: in its group
    /// ([`home_group`]) while that has room, else anywhere, by linear probing from the key's
    /// own cell. Cells are never emptied but by a clear, so a group once full stays full, and a
    /// lookup follows the path its insertion took. `Err(None)`, no empty cell, does not happen:
    /// at most half of the index holds ids (see [`TracebackStore::entry_capacity`]).
    #[inline]
    fn find(&self, probe: StackProbe) -> Result<TracebackId, Option<usize>> {
        let key = probe.key as usize;
        let anywhere = (0..self.index.len()).map(|k| key.wrapping_add(k) & self.index_mask);
        for i in probe.group_cells(self.index_mask).chain(anywhere) {
            match self.index[i] {
                0 => return Err(Some(i)),
                cell if index_tag(cell) == index_tag(probe.key) => {
                    return Ok(TracebackId(cell as u32 & TracebackId::MASK))
                }
                _ => {}
            }
        }
        Err(None)
    }

    /// Takes the storage out so that its owner can grow it in place (with `realloc`: entries and
    /// frames are only ever appended to, so their contents stay valid in longer arrays), and give
    /// it back with [`TracebackStore::put_back`]. Meanwhile the store holds nothing and has no
    /// room: every intern is refused.
    pub fn take_storage(&mut self) -> (TracebackStorage<'a>, Held) {
        let held = Held {
            entry_count: self.entry_count,
            frame_count: self.frame_count,
            overflowed: self.overflowed,
            index: (self.index.as_ptr() as usize, self.index.len()),
        };
        let storage = TracebackStorage {
            entries: core::mem::take(&mut self.entries),
            index: core::mem::take(&mut self.index),
            frames: core::mem::take(&mut self.frames),
        };
        *self = TracebackStore::over(TracebackStorage {
            entries: &mut [],
            index: &mut [],
            frames: &mut [],
        });
        (storage, held)
    }

    /// Gives back the storage [`TracebackStore::take_storage`] took, its entries and frames
    /// beginning with the ones taken (perhaps in longer arrays), and its index either as taken
    /// ([`Index::Kept`]) or new, of any contents ([`Index::Rebuild`]: the store indexes every
    /// entry again, as it does for [`Index::Kept`] with an index other than the one taken). Storage too small for what was taken is the caller's error: the store then
    /// starts again empty, as after [`TracebackStore::clear`], and ids handed out before are
    /// invalid.
    pub fn put_back(&mut self, storage: TracebackStorage<'a>, held: Held, index: Index) {
        let refused_meanwhile = self.overflowed;
        *self = TracebackStore::over(storage);
        if self.entries.len() < held.entry_count
            || self.frames.len() < held.frame_count
            || self.entry_capacity() < held.entry_count
        {
            self.clear();
            return;
        }
        // Entry 0 stays the overflow entry, also in a store that had no storage before.
        self.entry_count = held.entry_count.max(usize::from(!self.entries.is_empty()));
        self.frame_count = held.frame_count;
        self.overflowed = held.overflowed + refused_meanwhile;
        let same_index = (self.index.as_ptr() as usize, self.index.len()) == held.index;
        if index == Index::Rebuild || !same_index {
            self.index.fill(0);
            self.rebuild_index();
        }
    }

    /// Indexes every entry again, into an index that is all empty.
    fn rebuild_index(&mut self) {
        for id in 1..self.entry_count {
            let e = self.entries[id];
            let frames = &self.frames[e.start()..e.start() + e.len()];
            let probe = probe_of(e.domain, frames, e.total_nframe);
            // A key met twice (two stacks that collide) keeps the first id, as a lookup would.
            if let Err(Some(i)) = self.find(probe) {
                self.index[i] = id as u64 | index_tag(probe.key);
            }
        }
    }

    /// Gives the storage back, for its owner to free: the arrays it was made from, the index cut
    /// to its largest power-of-two prefix (all of it when its length is a power of two).
    pub fn into_storage(self) -> TracebackStorage<'a> {
        TracebackStorage {
            entries: self.entries,
            index: self.index,
            frames: self.frames,
        }
    }

    fn overflow(&mut self) -> TracebackId {
        self.overflowed += 1;
        TracebackId::OVERFLOW
    }

    /// The traceback with this id. An id the store never handed out reads as the overflow one.
    pub fn get(&self, id: TracebackId) -> TracebackRef<'_> {
        match self.entries.get(id.0 as usize) {
            Some(e) if (id.0 as usize) < self.entry_count => TracebackRef {
                domain: e.domain,
                frames: &self.frames[e.start()..e.start() + e.len()],
                total_nframe: e.total_nframe,
            },
            _ => TracebackRef {
                domain: 0,
                frames: &[],
                total_nframe: 0,
            },
        }
    }

    /// The domain of a traceback, for the trace table's key predicate.
    #[inline]
    pub fn domain_of(&self, id: TracebackId) -> u32 {
        self.entries.get(id.0 as usize).map_or(0, |e| e.domain)
    }

    /// Bytes of storage the store holds (all of it, used or not).
    pub fn memory_bytes(&self) -> usize {
        core::mem::size_of_val(&*self.entries)
            + core::mem::size_of_val(&*self.index)
            + core::mem::size_of_val(&*self.frames)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 8 tracebacks (16 index cells), 16 frames.
    type Arrays = crate::TracerArrays<1, 8, 16>;

    fn store(a: &mut Arrays) -> TracebackStore<'_> {
        TracebackStore::new(a.storage().tracebacks)
    }

    #[test]
    fn the_index_hint_names_the_cell_a_lookup_reads_first() {
        let mut a = Arrays::new();
        let mut s = store(&mut a);
        let frames = [0x10, 0x20];
        let id = s.intern(0, &frames, 2);
        let hint = s.index_hint();
        let probe = StackProbe::new(stack_key(0, fold_stack(&frames), 2, 2), &frames);
        let cell = hint.first_cell(&probe);
        let base = s.index.as_ptr() as usize;
        assert!(cell >= base && cell < base + s.index.len() * 8);
        // The stack was the first in an empty index: it sits in the cell its probe starts at.
        let value = s.index[(cell - base) / 8];
        assert_eq!(value as u32 & TracebackId::MASK, id.index());
    }

    #[test]
    fn frames_64_places_apart_do_not_cancel_in_the_hash() {
        // Two recursions of period 2, 128 frames each: with a linear fold both hashed to the
        // seed's rotation.
        let a: [usize; 128] = core::array::from_fn(|i| [0x5555_1000, 0x5555_2000][i % 2]);
        let b: [usize; 128] = core::array::from_fn(|i| [0x5555_3000, 0x5555_4000][i % 2]);
        assert_ne!(fold_stack(&a), fold_stack(&b));
        // Swapping two frames 64 places apart changes the hash.
        let c: [usize; 130] = core::array::from_fn(|i| 0x7000_0000 + 16 * i);
        let mut d = c;
        d.swap(3, 67);
        assert_ne!(fold_stack(&c), fold_stack(&d));
    }

    #[test]
    fn a_probed_intern_finds_what_a_plain_one_stored() {
        let mut a = Arrays::new();
        let mut s = store(&mut a);
        let frames = [0x10, 0x20, 0x30];
        let x = s.intern(0, &frames, 3);
        let probe = StackProbe::new(stack_key(0, fold_stack(&frames), 3, 3), &frames);
        assert_eq!(s.intern_probed(0, &frames, 3, probe), x);
        assert_eq!(s.try_intern_probed(0, &frames, 3, probe), Ok(x));
        assert_eq!(s.len(), 2, "the overflow entry and one stack");
    }

    #[test]
    fn identical_stacks_share_one_id() {
        let mut a = Arrays::new();
        let mut s = store(&mut a);
        let x = s.intern(0, &[1, 2, 3], 3);
        let y = s.intern(0, &[1, 2, 4], 3);
        assert_ne!(x, y);
        assert_eq!(s.intern(0, &[1, 2, 3], 3), x);
        assert_eq!(s.frame_count(), 6);
        assert_eq!(s.get(x).frames, &[1, 2, 3]);
    }

    #[test]
    fn domain_and_total_depth_are_part_of_the_key() {
        let mut a = Arrays::new();
        let mut s = store(&mut a);
        let x = s.intern(0, &[1], 1);
        assert_ne!(s.intern(7, &[1], 1), x);
        assert_ne!(s.intern(0, &[1], 9), x);
        let z = s.intern(7, &[1], 1);
        assert_eq!(s.domain_of(z), 7);
    }

    #[test]
    fn full_store_answers_overflow_and_counts_it() {
        let mut a = Arrays::new();
        let mut s = store(&mut a);
        // 16 frames of pool: two 8-frame stacks fill it.
        let big = [9usize; 8];
        assert_ne!(s.intern(0, &big, 8), TracebackId::OVERFLOW);
        assert_ne!(s.intern(1, &big, 8), TracebackId::OVERFLOW);
        assert_eq!(s.intern(2, &big, 8), TracebackId::OVERFLOW);
        assert_eq!(s.overflowed(), 1);
        // Entries run out too: capacity is min(8 entries, 16/2 + 1).
        let mut n = 0;
        while s.intern(100 + n, &[], 0) != TracebackId::OVERFLOW {
            n += 1;
        }
        assert_eq!(s.len(), s.entry_capacity());
    }

    #[test]
    fn empty_storage_never_panics() {
        let mut s = TracebackStore::new(TracebackStorage {
            entries: &mut [],
            index: &mut [],
            frames: &mut [],
        });
        assert_eq!(s.intern(0, &[1], 1), TracebackId::OVERFLOW);
        assert!(s.get(TracebackId::from_index(5)).frames.is_empty());
    }
}

#[cfg(test)]
mod growth_tests {
    extern crate std;
    use super::*;
    use std::vec;
    use std::vec::Vec;

    fn storage(entries: usize, frames: usize) -> TracebackStorage<'static> {
        TracebackStorage {
            entries: vec![TracebackEntry::EMPTY; entries].leak(),
            index: vec![0u64; (entries * 2).next_power_of_two()].leak(),
            frames: vec![0usize; frames].leak(),
        }
    }

    /// What `realloc` does: the same contents at the front of longer arrays; a new index.
    fn extended(
        old: TracebackStorage<'static>,
        entries: usize,
        frames: usize,
    ) -> TracebackStorage<'static> {
        let bigger = storage(entries, frames);
        bigger.entries[..old.entries.len()].copy_from_slice(old.entries);
        bigger.frames[..old.frames.len()].copy_from_slice(old.frames);
        bigger.index.fill(u64::MAX); // garbage: the store must rebuild it
        bigger
    }

    fn grow(store: &mut TracebackStore<'static>, entries: usize, frames: usize) {
        let (old, held) = store.take_storage();
        store.put_back(extended(old, entries, frames), held, Index::Rebuild);
    }

    /// The group a stack's lookup starts in, as an index of the first of its cells.
    fn group_of(s: &TracebackStore<'_>, frames: &[usize]) -> usize {
        // With key 0 a lookup starts at the group's first cell.
        let first = StackProbe::new(0, frames).group_cells(s.index_mask).next();
        first.expect("a group has cells")
    }

    /// Where `id` sits in the index.
    fn cell_of(s: &TracebackStore<'_>, id: TracebackId) -> usize {
        let cells = s.index.iter().enumerate();
        let mut at = cells.filter(|(_, &c)| c != 0 && c as u32 & TracebackId::MASK == id.index());
        at.next().expect("every id is indexed").0
    }

    #[test]
    fn stacks_that_share_their_callers_share_a_group_of_the_index() {
        let mut s = TracebackStore::new(storage(64, 512));
        let callers = [0x500, 0x600, 0x700];
        for top in 0..GROUP_SKIP {
            let mut frames = [0x100, 0x200, 0x300, callers[0], callers[1], callers[2]];
            frames[top] += 8;
            let id = s.intern(0, &frames, 6);
            let group = group_of(&s, &frames);
            assert_eq!(group, group_of(&s, &[1, 2, 3, 0x500, 0x600, 0x700]));
            assert!((group..group + GROUP).contains(&cell_of(&s, id)));
        }
    }

    #[test]
    fn short_stacks_are_grouped_by_their_outermost_frame() {
        let mut s = TracebackStore::new(storage(64, 512));
        let groups: Vec<_> = (0..8)
            .map(|i| {
                let frames = [0x100, 0x9000 + 16 * i];
                s.intern(0, &frames, 2);
                group_of(&s, &frames)
            })
            .collect();
        assert!(
            groups.iter().any(|&g| g != groups[0]),
            "one group for all: {groups:?}"
        );
        assert_eq!(group_of(&s, &[0x200, 0x9000]), groups[0]);
    }

    #[test]
    fn a_full_group_sends_stacks_elsewhere_and_finds_them_again() {
        // 3 groups' worth of stacks with the same callers: the first fill their group, the
        // rest probe the whole index; after growth every one is indexed again.
        let n = 3 * GROUP;
        let mut s = TracebackStore::new(storage(n + 1, 4 * n));
        let stack = |i: usize| [0x1000 + 16 * i, 0x500, 0x600, 0x700];
        let ids: Vec<_> = (0..n).map(|i| s.intern(0, &stack(i), 4)).collect();
        let group = group_of(&s, &stack(0));
        let cells: Vec<_> = ids.iter().map(|&id| cell_of(&s, id)).collect();
        let home = cells
            .iter()
            .filter(|c| (group..group + GROUP).contains(c))
            .count();
        assert_eq!(home, GROUP, "the group fills first");
        let mut distinct = ids.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), n);
        assert!(!ids.contains(&TracebackId::OVERFLOW));
        for (i, &id) in ids.iter().enumerate() {
            assert_eq!(s.intern(0, &stack(i), 4), id);
        }
        grow(&mut s, 4 * n, 8 * n);
        for (i, &id) in ids.iter().enumerate() {
            assert_eq!(s.intern(0, &stack(i), 4), id);
        }
        assert_eq!(s.len(), n + 1);
    }

    #[test]
    fn growing_in_place_keeps_ids_and_makes_room() {
        let mut store = TracebackStore::new(storage(3, 8)); // the overflow entry and two more
        let x = store.intern(0, &[1, 2, 3], 3);
        let y = store.intern(5, &[4, 5], 2);
        assert_eq!(store.try_intern(0, &[6, 7, 8], 3), Err(StoreFull));
        grow(&mut store, 16, 64);
        assert_eq!(store.len(), 3);
        assert_eq!(store.frame_count(), 5);
        assert_eq!(store.get(x).frames, &[1, 2, 3]);
        assert_eq!(store.get(y).domain, 5);
        assert_eq!(
            store.intern(0, &[1, 2, 3], 3),
            x,
            "lookups find the old entries"
        );
        assert!(store.try_intern(0, &[6, 7, 8], 3).is_ok());
    }

    #[test]
    fn a_taken_store_refuses_every_stack() {
        let mut store = TracebackStore::new(storage(8, 16));
        let x = store.intern(0, &[1, 2, 3], 3);
        let (old, held) = store.take_storage();
        assert_eq!(store.try_intern(0, &[1, 2, 3], 3), Err(StoreFull));
        assert_eq!(store.intern(0, &[4], 1), TracebackId::OVERFLOW);
        store.put_back(old, held, Index::Kept);
        assert_eq!(store.intern(0, &[1, 2, 3], 3), x);
        assert_eq!(store.overflowed(), 1, "the refused stack was counted");
    }

    #[test]
    fn growth_that_fails_leaves_the_store_as_it_was() {
        let mut store = TracebackStore::new(storage(4, 8));
        let x = store.intern(0, &[1, 2, 3], 3);
        let (old, held) = store.take_storage();
        store.put_back(old, held, Index::Kept);
        assert_eq!(store.intern(0, &[1, 2, 3], 3), x);
        assert_eq!(store.len(), 2);
    }

    #[test]
    fn a_store_without_storage_grown_in_place_keeps_id_0_for_the_overflow() {
        let mut store = TracebackStore::new(storage(0, 0));
        let (old, held) = store.take_storage();
        store.put_back(extended(old, 8, 16), held, Index::Rebuild);
        let id = store.intern(0, &[1, 2], 2);
        assert_ne!(
            id,
            TracebackId::OVERFLOW,
            "a real stack got the overflow id"
        );
        assert_eq!(store.get(id).frames, &[1, 2]);
    }

    #[test]
    fn kept_with_another_index_indexes_again() {
        let mut store = TracebackStore::new(storage(8, 16));
        let x = store.intern(0, &[1, 2, 3], 3);
        let (old, held) = store.take_storage();
        store.put_back(extended(old, 8, 16), held, Index::Kept);
        assert_eq!(store.intern(0, &[1, 2, 3], 3), x);
        assert_eq!(store.len(), 2);
    }

    #[test]
    fn storage_too_small_for_what_was_taken_starts_again_empty() {
        let mut store = TracebackStore::new(storage(8, 16));
        store.intern(0, &[1, 2, 3], 3);
        store.intern(0, &[4, 5, 6], 3);
        let (_, held) = store.take_storage();
        store.put_back(storage(2, 2), held, Index::Rebuild);
        assert!(store.is_empty());
        assert_eq!(store.frame_count(), 0);
        assert!(store.get(TracebackId::from_index(2)).frames.is_empty());
        assert_ne!(store.intern(0, &[7], 1), TracebackId::OVERFLOW);
    }

    #[test]
    fn interning_again_after_growth_in_place_finds_every_stack() {
        let mut store = TracebackStore::new(storage(16, 64));
        let stacks: Vec<Vec<usize>> = (0..5000usize)
            .map(|i| (0..1 + i % 20).map(|j| 0x1000 + (i >> j) * 8).collect())
            .collect();
        let mut ids = Vec::new();
        for s in &stacks {
            let id = loop {
                match store.try_intern(0, s, s.len() as u16) {
                    Ok(id) => break id,
                    Err(StoreFull) => {
                        let cap = store.entry_capacity() * 2;
                        let frames =
                            ((store.frame_count() + s.len()) * 2).max(store.frame_capacity());
                        grow(&mut store, cap, frames);
                    }
                }
            };
            ids.push(id);
        }
        let len = store.len();
        for (s, id) in stacks.iter().zip(&ids) {
            assert_eq!(store.try_intern(0, s, s.len() as u16), Ok(*id));
        }
        assert_eq!(store.len(), len);
    }
}
