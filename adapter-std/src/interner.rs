//! One traceback store for the whole process, and a per-thread cache in front of it.
//!
//! The trace tables are sharded by address, but call stacks are not: with a store per shard,
//! every stack was interned up to 16 times, and a program with many distinct stacks (deep
//! recursion) filled every shard's store. One shared store holds each stack once and grows from
//! the inner allocator. Its lock is taken only on a miss of the per-thread cache, which maps a
//! stack's key to its id, so threads rarely meet there and most allocations skip the store
//! altogether.
//!
//! Both tell stacks apart by their 64-bit key (`stack_key`, made from the hash the walk
//! computes): the cache compares all of it, the store 40 of its bits, and neither reads frames.

use core::alloc::GlobalAlloc;
use core::cell::Cell;
use core::sync::atomic::{AtomicU32, AtomicUsize, Ordering::*};

use tracemalloc_core::traceback::{
    stack_key, Index, IndexHint, StackProbe, StoreFull, TracebackId, TracebackStore,
};

use crate::capture::Stack;
use crate::state::prefetch;
use crate::storage::{
    self, allocate_tracebacks, free_tracebacks, grow_tracebacks, tracebacks_bytes, RawTracebacks,
};

/// The shared store; `None` until tracing first starts.
pub(crate) static STORE: spin::Mutex<Option<TracebackStore<'static>>> = spin::Mutex::new(None);

/// Where the store's index lies (`IndexHint`), readable without the store's lock; updated under
/// it whenever the index moves. A torn or stale pair only prefetches the wrong line.
static INDEX_BASE: AtomicUsize = AtomicUsize::new(0);
static INDEX_MASK: AtomicUsize = AtomicUsize::new(0);

fn publish_hint(hint: IndexHint) {
    INDEX_BASE.store(hint.base, Relaxed);
    INDEX_MASK.store(hint.mask, Relaxed);
}

/// Bytes the store may grow to (`Config::max_traceback_memory`).
static MAX_BYTES: AtomicUsize = AtomicUsize::new(usize::MAX);

/// Bumped whenever the store is cleared, which invalidates every id the caches hold.
static GENERATION: AtomicU32 = AtomicU32::new(1);

const CACHE_SLOTS: usize = 4096;

#[derive(Clone, Copy)]
struct CacheEntry {
    key: u64,
    generation: u32,
    id: u32,
}

/// Of generation 0, which `GENERATION` (from 1) reaches again only after 2^32 clears: an empty
/// entry matches no stack.
const EMPTY_ENTRY: CacheEntry = CacheEntry {
    key: 0,
    generation: 0,
    id: 0,
};

thread_local! {
    // 64 KiB a thread, const-initialised: no allocation, no destructor. Cells, not a RefCell:
    // entries are copied in and out whole, so no borrow flag is needed. 4096 slots, not 1024:
    // recursive code has thousands of distinct short stacks (`tree` at nframe 1 ran 12 % faster;
    // 8192 slots gained nothing more).
    static CACHE: [Cell<CacheEntry>; CACHE_SLOTS] =
        const { [const { Cell::new(EMPTY_ENTRY) }; CACHE_SLOTS] };
}

/// The current generation; a record compares it again under its shard lock, or after writing
/// its cell (sequentially consistent for that: see `state::void_in_cell`; on x86-64 and
/// AArch64 the same instruction as an acquiring load).
#[inline(always)]
pub(crate) fn generation() -> u32 {
    GENERATION.load(SeqCst)
}

/// The id of a default-domain stack, from this thread's cache or the shared store.
#[inline(always)]
pub(crate) fn intern(inner: &dyn GlobalAlloc, stack: &Stack<'_>) -> TracebackId {
    let key = stack_key(0, stack.hash, stack.frames.len(), stack.total);
    let slot = (key >> 32) as usize & (CACHE_SLOTS - 1);
    let generation = generation();
    let hit = CACHE.try_with(|cache| {
        let e = cache[slot].get();
        (e.key == key && e.generation == generation).then_some(e.id)
    });
    if let Ok(Some(id)) = hit {
        return TracebackId::from_index(id);
    }
    let (id, lasting) = intern_shared(inner, stack, key);
    if lasting {
        let _ = CACHE.try_with(|cache| {
            cache[slot].set(CacheEntry {
                key,
                generation,
                id: id.index(),
            });
        });
    }
    id
}

/// The id from the shared store, and whether it holds until the next generation: `OVERFLOW`
/// does once the store is at its limit (a program with that many stacks would otherwise take
/// the store's lock on every allocation), not when growing failed for want of memory or
/// before the store exists.
#[cold]
fn intern_shared(inner: &dyn GlobalAlloc, stack: &Stack<'_>, key: u64) -> (TracebackId, bool) {
    let Stack { frames, total, .. } = *stack;
    // The store's first cell, fetched while the lock is taken (or waited for): under the
    // lock, with a store of millions of stacks, it was a cache miss that every other thread
    // interning a new stack waited for too.
    let probe = StackProbe::new(key, frames);
    let hint = IndexHint {
        base: INDEX_BASE.load(Relaxed),
        mask: INDEX_MASK.load(Relaxed),
    };
    prefetch(hint.first_cell(&probe));
    let mut store = STORE.lock();
    let Some(store) = store.as_mut() else {
        return (TracebackId::OVERFLOW, false);
    };
    match store.try_intern_probed(0, frames, total, probe) {
        Ok(id) => (id, true),
        Err(StoreFull) => {
            let at_limit = grow(inner, store, frames.len());
            let id = store.intern_probed(0, frames, total, probe);
            (id, id != TracebackId::OVERFLOW || at_limit)
        }
    }
}

/// Doubles the store (and makes room for `more` frames). When the bigger store would pass the
/// limit, or on failure, the store stays as it was and the stack is reported as
/// `<traceback store full>`. Returns whether the store is at its limit (so it will not grow
/// until the next generation).
#[cold]
fn grow(inner: &dyn GlobalAlloc, store: &mut TracebackStore<'static>, more: usize) -> bool {
    if !storage::is_source(inner) {
        return false; // another wrapper's allocator: the store must not mix the two
    }
    let capacity = (store.entry_capacity() * 2).clamp(16, TracebackId::MASK as usize + 1);
    // Growth reallocates the frame pool, so it never shrinks.
    let frame_capacity = ((store.frame_count() + more) * 2).max(store.frame_capacity());
    if tracebacks_bytes(capacity, frame_capacity) > MAX_BYTES.load(Relaxed)
        || capacity <= store.entry_capacity()
    {
        return true;
    }
    let (storage, held) = store.take_storage();
    let raw = RawTracebacks::of(storage);
    match grow_tracebacks(inner, raw, capacity, frame_capacity) {
        Ok(grown) => store.put_back(grown, held, Index::Rebuild),
        Err(unchanged) => store.put_back(unchanged, held, Index::Kept),
    }
    publish_hint(store.index_hint());
    false
}

/// Creates the store at first start, or clears it (and invalidates every cached id); it may
/// grow to `max_bytes`.
pub(crate) fn reset(
    inner: &dyn GlobalAlloc,
    entries: usize,
    depth: usize,
    max_bytes: usize,
) -> bool {
    let mut store = STORE.lock();
    MAX_BYTES.store(max_bytes, Relaxed);
    GENERATION.fetch_add(1, SeqCst);
    match store.as_mut() {
        Some(store) => {
            store.clear();
            true
        }
        None => match first_size(entries, depth, max_bytes)
            .and_then(|(entries, frames)| allocate_tracebacks(inner, entries, frames))
        {
            Some(storage) => {
                let created = TracebackStore::new(storage);
                publish_hint(created.index_hint());
                *store = Some(created);
                true
            }
            None => false,
        },
    }
}

/// The first store's entries and frames: `entries` stacks of `depth` frames, halved (to 16 at
/// least) until they fit `max_bytes`, which growth respects too.
fn first_size(mut entries: usize, depth: usize, max_bytes: usize) -> Option<(usize, usize)> {
    loop {
        let frames = entries.checked_mul(depth)?;
        if entries <= 16 || tracebacks_bytes(entries, frames) <= max_bytes {
            return Some((entries, frames));
        }
        entries = (entries / 2).max(16);
    }
}

/// Clears the store, invalidating every cached id (Python's `clear_traces()`). The caller holds
/// every shard lock, so no record can use an old id against the new store.
pub(crate) fn clear() {
    let mut store = STORE.lock();
    GENERATION.fetch_add(1, SeqCst);
    if let Some(store) = store.as_mut() {
        store.clear();
    }
}

/// Gives the store's storage back to `inner`, which it came from; the next start creates a new
/// store. The caller holds every shard lock, so no record can use an id of this store.
pub(crate) fn release(inner: &dyn GlobalAlloc) {
    let mut store = STORE.lock();
    GENERATION.fetch_add(1, SeqCst);
    if let Some(store) = store.take() {
        publish_hint(IndexHint::default());
        free_tracebacks(inner, RawTracebacks::of(store.into_storage()));
    }
}

/// The frames of a traceback interned in `generation`, and its depth; `None` once the store
/// was cleared since (its ids then name other stacks, or none). `GENERATION` changes only under
/// the store's lock, so the check holds for the whole read.
pub(crate) fn frames_of(id: TracebackId, generation: u32) -> Option<(Vec<usize>, u16)> {
    let store = STORE.lock();
    if GENERATION.load(Relaxed) != generation {
        return None;
    }
    let tb = store.as_ref()?.get(id);
    Some((tb.frames.to_vec(), tb.total_nframe))
}

/// Tracebacks and frames the store holds now.
pub(crate) fn sizes() -> (usize, usize) {
    STORE
        .lock()
        .as_ref()
        .map_or((0, 0), |s| (s.len(), s.frame_count()))
}

/// Bytes the store holds.
pub(crate) fn memory_bytes() -> usize {
    STORE
        .lock()
        .as_ref()
        .map_or(0, TracebackStore::memory_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_store_fits_the_limit() {
        // 4096 stacks of 40 frames (16 and plumbing) take 1.4 MiB; a 256 KiB limit gets 512.
        let (entries, frames) = first_size(4096, 40, 256 << 10).unwrap();
        assert_eq!((entries, frames), (512, 512 * 40));
        assert!(tracebacks_bytes(entries, frames) <= 256 << 10);
        // Room for the default: as asked. Under any limit: 16 stacks at least.
        assert_eq!(first_size(4096, 40, usize::MAX), Some((4096, 4096 * 40)));
        assert_eq!(first_size(4096, 40, 0), Some((16, 16 * 40)));
        assert_eq!(first_size(24, 40, 0), Some((16, 16 * 40)));
        assert_eq!(first_size(usize::MAX, 2, usize::MAX), None);
    }
}
