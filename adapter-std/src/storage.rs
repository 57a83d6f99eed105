//! Arrays for the tracer's tables, taken from the inner allocator directly (never through the
//! traced path) and given back to it when a table moves to bigger storage or tracing stops.
//!
//! All of the tracer's storage comes from one allocator, its [source](set_source): the inner
//! allocator of the wrapper that armed the tracer. A second wrapper instance that records a
//! block does not grow the tables from its own allocator, so storage is never freed through an
//! allocator that did not hand it out.

use core::alloc::{GlobalAlloc, Layout};
use core::ptr::NonNull;
use core::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use tracemalloc_core::table::Slot;
use tracemalloc_core::traceback::{TracebackEntry, TracebackStorage};
use tracemalloc_core::TracerStorage;

use crate::allocator::inner_address;

/// The source's [`inner_address`]; 0 until the first arming.
static SOURCE: AtomicUsize = AtomicUsize::new(0);

/// Makes `inner` the allocator the tracer's storage comes from. Called by an arming that finds
/// no storage, before it allocates any.
pub(crate) fn set_source(inner: &dyn GlobalAlloc) {
    SOURCE.store(inner_address(inner), Relaxed);
}

/// Whether the tracer's storage comes from `inner`, so that `inner` may grow it.
pub(crate) fn is_source(inner: &dyn GlobalAlloc) -> bool {
    SOURCE.load(Relaxed) == inner_address(inner)
}

/// The [`inner_address`] of the allocator the storage comes from.
pub(crate) fn source() -> usize {
    SOURCE.load(Relaxed)
}

/// A zeroed array of `len` values from `inner`, or `None` when it has no memory.
///
/// Only for types whose all-zero bit pattern is a valid (empty) value: trace slots, traceback
/// entries and integers.
pub(crate) fn allocate_array<T>(inner: &dyn GlobalAlloc, len: usize) -> Option<&'static mut [T]> {
    let len = len.max(1);
    let layout = Layout::array::<T>(len).ok()?;
    // SAFETY: the layout has a non-zero size. The memory is zeroed, and every `T` used here is
    // valid when all-zero. The block is owned by the returned slice alone until `free_array`
    // gives it back, so the `'static` borrow is unique.
    unsafe {
        let ptr = inner.alloc_zeroed(layout).cast::<T>();
        if ptr.is_null() {
            return None;
        }
        Some(core::slice::from_raw_parts_mut(ptr, len))
    }
}

/// Trace tables of at least this many bytes start on a 2 MiB boundary and are advised onto
/// transparent huge pages (Linux). A free looks up a random slot of a table of millions, and
/// with 4 KiB pages nearly every such lookup (and the prefetch that starts it) also missed the
/// TLB: json ran 5 % faster on huge pages. The traceback store stays on small pages: it is
/// touched only as it fills, and zeroing it eagerly cost `tree` 10 %.
const HUGE_TABLE_BYTES: usize = 4 << 20;
const HUGE_PAGE_BYTES: usize = 2 << 20;

/// How a table's pages were taken, which its free must repeat.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum TablePages {
    /// Plain pages ([`allocate_array`]'s layout).
    #[default]
    Small,
    /// 2 MiB-aligned and advised onto huge pages.
    Huge,
}

/// The layout of a table of `len` slots (at least one) on `pages`.
fn table_layout(len: usize, pages: TablePages) -> Option<Layout> {
    let layout = Layout::array::<Slot>(len.max(1)).ok()?;
    match pages {
        TablePages::Small => Some(layout),
        TablePages::Huge => layout.align_to(HUGE_PAGE_BYTES).ok(),
    }
}

/// A table of `len` empty slots from `inner`, on huge pages when it is large and `inner` gives
/// it the alignment (else on plain pages); give it back with [`free_table`] and the same
/// [`TablePages`].
pub(crate) fn allocate_table(
    inner: &dyn GlobalAlloc,
    len: usize,
) -> Option<(&'static mut [Slot], TablePages)> {
    let huge = table_layout(len, TablePages::Huge).filter(|l| l.size() >= HUGE_TABLE_BYTES);
    if let Some(layout) = huge {
        // SAFETY: the layout has a non-zero size. The advice only changes how the pages are
        // backed, and covers whole 2 MiB pages of this block alone (its start is aligned and
        // its size a multiple of 2 MiB: at least 4 MiB of a power-of-two number of slots of
        // 16 bytes, or of 12 on 32-bit targets, 3 times a power of two). The block is zeroed
        // after the advice, so its pages are first touched as huge pages, and an all-zero
        // `Slot` is an empty one. The slice is the block's only reference until `free_table`.
        unsafe {
            let ptr = inner.alloc(layout);
            if !ptr.is_null() {
                #[cfg(target_os = "linux")]
                libc::madvise(ptr.cast(), layout.size(), libc::MADV_HUGEPAGE);
                core::ptr::write_bytes(ptr, 0, layout.size());
                let table = core::slice::from_raw_parts_mut(ptr.cast::<Slot>(), len.max(1));
                return Some((table, TablePages::Huge));
            }
        }
    }
    // Small, or an allocator that cannot align it to 2 MiB: plain pages.
    Some((allocate_array(inner, len)?, TablePages::Small))
}

/// Gives a table from [`allocate_table`] back to `inner`.
pub(crate) fn free_table(inner: &dyn GlobalAlloc, table: Raw<Slot>, pages: TablePages) {
    if table.is_empty() {
        return;
    }
    if let Some(layout) = table_layout(table.len(), pages) {
        // SAFETY: `table` came from `allocate_table` on this allocator with this length and
        // these pages (tables hand back exactly the storage they were given), so the layout
        // matches; the caller turned its only reference into this pointer and keeps no other.
        unsafe { inner.dealloc(table.cast().as_ptr(), layout) }
    }
}

/// Bytes [`allocate_tracebacks`] takes for `entries` tracebacks and `frames` frames.
pub(crate) fn tracebacks_bytes(entries: usize, frames: usize) -> usize {
    let index = entries
        .saturating_mul(2)
        .checked_next_power_of_two()
        .unwrap_or(usize::MAX);
    entries
        .saturating_mul(size_of::<TracebackEntry>())
        .saturating_add(index.saturating_mul(size_of::<u64>()))
        .saturating_add(frames.saturating_mul(size_of::<usize>()))
}

/// Storage for a traceback store of `entries` tracebacks and `frames` frames in all: all of it,
/// or nothing.
pub(crate) fn allocate_tracebacks(
    inner: &dyn GlobalAlloc,
    entries: usize,
    frames: usize,
) -> Option<TracebackStorage<'static>> {
    let index_len = entries.checked_mul(2)?.checked_next_power_of_two()?;
    let entries_array = allocate_array::<TracebackEntry>(inner, entries)?;
    let Some(index) = allocate_array::<u64>(inner, index_len) else {
        free_array(inner, Raw::from(entries_array));
        return None;
    };
    let Some(frames) = allocate_array::<usize>(inner, frames) else {
        free_array(inner, Raw::from(entries_array));
        free_array(inner, Raw::from(index));
        return None;
    };
    Some(TracebackStorage {
        entries: entries_array,
        index,
        frames,
    })
}

/// A traceback store's arrays as raw pointers ([`Raw`]), to free or grow them.
pub(crate) struct RawTracebacks {
    entries: Raw<TracebackEntry>,
    index: Raw<u64>,
    frames: Raw<usize>,
}

impl RawTracebacks {
    /// The arrays of `storage`, whose references the caller gives up.
    pub(crate) fn of(storage: TracebackStorage<'static>) -> RawTracebacks {
        RawTracebacks {
            entries: Raw::from(storage.entries),
            index: Raw::from(storage.index),
            frames: Raw::from(storage.frames),
        }
    }

    /// The arrays as a store's storage again.
    ///
    /// # Safety
    /// Each pointer is a live, initialised array that nothing else refers to, as
    /// [`RawTracebacks::of`] and [`reallocate_array`] leave them.
    unsafe fn into_storage(self) -> TracebackStorage<'static> {
        // SAFETY: the caller's contract: valid, initialised and unaliased arrays.
        unsafe {
            TracebackStorage {
                entries: &mut *self.entries.as_ptr(),
                index: &mut *self.index.as_ptr(),
                frames: &mut *self.frames.as_ptr(),
            }
        }
    }
}

/// A tracer's storage as raw pointers ([`Raw`]), to free it.
pub(crate) struct RawTracer {
    slots: Raw<Slot>,
    tracebacks: RawTracebacks,
}

impl RawTracer {
    /// The arrays of `storage`, whose references the caller gives up.
    pub(crate) fn of(storage: TracerStorage<'static>) -> RawTracer {
        RawTracer {
            slots: Raw::from(storage.slots),
            tracebacks: RawTracebacks::of(storage.tracebacks),
        }
    }
}

/// Gives a tracer's storage back to `inner`, its table taken on `pages`.
pub(crate) fn free_tracer(inner: &dyn GlobalAlloc, tracer: RawTracer, pages: TablePages) {
    free_table(inner, tracer.slots, pages);
    free_tracebacks(inner, tracer.tracebacks);
}

/// Grows a store's storage to `entries` tracebacks and `frames` frames in place: its entries
/// and frames are reallocated, which keeps their contents (an allocator that remaps pages, as
/// glibc does for large blocks, copies nothing and never holds two copies of an array), and
/// its index is new and empty. On failure the storage comes back with its index, its
/// contents unchanged, perhaps in longer entries (still valid for the same store).
pub(crate) fn grow_tracebacks(
    inner: &dyn GlobalAlloc,
    storage: RawTracebacks,
    entries: usize,
    frames: usize,
) -> Result<TracebackStorage<'static>, TracebackStorage<'static>> {
    let index = entries
        .checked_mul(2)
        .and_then(usize::checked_next_power_of_two)
        .and_then(|len| allocate_array::<u64>(inner, len))
        .map(Raw::from);
    let grown = match index {
        None => Err(storage),
        Some(index) => match reallocate_array(inner, storage.entries, entries) {
            Err(entries) => {
                free_array(inner, index);
                Err(RawTracebacks { entries, ..storage })
            }
            Ok(entries) => match reallocate_array(inner, storage.frames, frames) {
                Err(frames) => {
                    free_array(inner, index);
                    Err(RawTracebacks {
                        entries,
                        index: storage.index,
                        frames,
                    })
                }
                Ok(frames) => {
                    free_array(inner, storage.index);
                    Ok(RawTracebacks {
                        entries,
                        index,
                        frames,
                    })
                }
            },
        },
    };
    match grown {
        // SAFETY: every array is live and initialised (allocated zeroed, or reallocated with
        // its tail zeroed), and only these pointers refer to it: the caller gave up its
        // references, and the arrays freed above are none of these.
        Ok(raw) => Ok(unsafe { raw.into_storage() }),
        // SAFETY: as above.
        Err(raw) => Err(unsafe { raw.into_storage() }),
    }
}

/// Gives storage from [`allocate_tracebacks`] back to `inner` (a shard tracer's empty arrays
/// are skipped).
pub(crate) fn free_tracebacks(inner: &dyn GlobalAlloc, storage: RawTracebacks) {
    free_array(inner, storage.entries);
    free_array(inner, storage.index);
    free_array(inner, storage.frames);
}

/// `array` (from [`allocate_array`] or this function) reallocated to `len` values, or as it
/// is when it has that many: its values kept and the new ones zeroed. `Err` hands it back
/// unchanged when `inner` has no memory. Same types as [`allocate_array`].
fn reallocate_array<T>(
    inner: &dyn GlobalAlloc,
    array: Raw<T>,
    len: usize,
) -> Result<Raw<T>, Raw<T>> {
    let old_len = array.len();
    let (Ok(old), Ok(new)) = (Layout::array::<T>(old_len), Layout::array::<T>(len)) else {
        return Err(array);
    };
    if old_len == 0 {
        return Err(array); // not from `allocate_array`
    }
    if len <= old_len {
        return Ok(array); // long enough already
    }
    // SAFETY: `array` came from `allocate_array` (or an earlier reallocation) on `inner` with
    // `old` as its layout (arrays are handed back with the length they were given), its size
    // is non-zero, and `new` has the same alignment and a size that does not overflow `isize`
    // (`Layout::array` checked). The caller holds no reference to it, only this pointer, so
    // the block may move. The new block's first `old_len` values are the old ones; the rest is
    // zeroed, and all-zero values of these types are valid.
    unsafe {
        let ptr = inner.realloc(array.cast().as_ptr(), old, new.size());
        let Some(ptr) = NonNull::new(ptr.cast::<T>()) else {
            return Err(array);
        };
        core::ptr::write_bytes(ptr.as_ptr().add(old_len), 0, len - old_len);
        Ok(NonNull::slice_from_raw_parts(ptr, len))
    }
}

/// An uninitialised array of `len` values from `inner` (not zeroed: a capture buffer is written
/// before it is read, and zeroing 65 535 frames on every allocation would cost microseconds).
pub(crate) fn allocate_uninit<T>(
    inner: &dyn GlobalAlloc,
    len: usize,
) -> Option<&'static mut [core::mem::MaybeUninit<T>]> {
    let len = len.max(1);
    let layout = Layout::array::<T>(len).ok()?;
    // SAFETY: the layout has a non-zero size. `MaybeUninit` needs no initialisation. The block
    // is owned by the returned slice alone until `free_array` gives it back.
    unsafe {
        let ptr = inner.alloc(layout).cast::<core::mem::MaybeUninit<T>>();
        if ptr.is_null() {
            return None;
        }
        Some(core::slice::from_raw_parts_mut(ptr, len))
    }
}

/// An array of the tracer's storage in the form it is freed or reallocated in. A reference
/// passed to the function that frees its memory would stay live for the whole call (Rust
/// treats a reference argument as valid until the function returns), so callers turn theirs
/// into this pointer first and keep no other.
pub(crate) type Raw<T> = NonNull<[T]>;

/// Gives an array from [`allocate_array`], [`allocate_uninit`] or [`reallocate_array`] back to
/// `inner`. An empty array came from none of them (they never return one), so it is not freed.
pub(crate) fn free_array<T>(inner: &dyn GlobalAlloc, array: Raw<T>) {
    if array.is_empty() {
        return;
    }
    if let Ok(layout) = Layout::array::<T>(array.len()) {
        // SAFETY: `array` came from one of those functions on this allocator with this length
        // (tables hand back exactly the storage they were given), so the layout matches; the
        // caller turned its only reference into this pointer and keeps no other.
        unsafe { inner.dealloc(array.cast().as_ptr(), layout) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::alloc::System;

    #[test]
    fn large_tables_start_on_a_huge_page_and_every_table_starts_empty() {
        for (len, aligned) in [(1, false), (4096, false), (1 << 18, true), (1 << 19, true)] {
            let (table, pages) = allocate_table(&System, len).expect("memory for a table");
            assert_eq!(table.len(), len);
            assert_eq!(pages == TablePages::Huge, aligned, "{len} slots");
            if aligned {
                assert_eq!(table.as_ptr() as usize % HUGE_PAGE_BYTES, 0, "{len} slots");
            }
            assert!(table.iter().all(|slot| !slot.is_occupied()), "{len} slots");
            free_table(&System, Raw::from(table), pages);
        }
    }

    /// `System`, counting its live bytes, failing every third reallocation.
    struct Flaky {
        live: AtomicUsize,
        reallocs: AtomicUsize,
    }

    // SAFETY: forwards to `System`, or fails a reallocation by returning null (the block stays
    // as it was), which `GlobalAlloc` allows.
    unsafe impl GlobalAlloc for Flaky {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            self.live.fetch_add(layout.size(), Relaxed);
            // SAFETY: the caller's contract is forwarded.
            unsafe { System.alloc(layout) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            self.live.fetch_sub(layout.size(), Relaxed);
            // SAFETY: the caller's contract is forwarded.
            unsafe { System.dealloc(ptr, layout) }
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            if self.reallocs.fetch_add(1, Relaxed) % 3 == 2 {
                return core::ptr::null_mut();
            }
            self.live.fetch_add(new_size, Relaxed);
            self.live.fetch_sub(layout.size(), Relaxed);
            // SAFETY: the caller's contract is forwarded.
            unsafe { System.realloc(ptr, layout, new_size) }
        }
    }

    /// Grows a store in place while reallocations fail now and then, as the interner does, and
    /// frees it. Also the test to run under Miri (`cargo +nightly miri test -p tracemalloc
    /// --lib storage::tests::a_store`): no page advice, so it runs there.
    #[test]
    fn a_store_grown_in_place_keeps_its_stacks_and_gives_every_byte_back() {
        use tracemalloc_core::traceback::{Index, StoreFull, TracebackStore};
        let inner = Flaky {
            live: AtomicUsize::new(0),
            reallocs: AtomicUsize::new(0),
        };
        let storage = allocate_tracebacks(&inner, 4, 8).expect("memory for a store");
        let mut store = TracebackStore::new(storage);
        let stacks: Vec<[usize; 3]> = (0..200).map(|i| [i, i + 1, i + 2]).collect();
        let mut ids = Vec::new();
        for frames in &stacks {
            let id = loop {
                match store.try_intern(0, frames, 3) {
                    Ok(id) => break id,
                    Err(StoreFull) => {
                        let entries = store.entry_capacity() * 2;
                        let pool = ((store.frame_count() + 3) * 2).max(store.frame_capacity());
                        let (storage, held) = store.take_storage();
                        match grow_tracebacks(&inner, RawTracebacks::of(storage), entries, pool) {
                            Ok(grown) => store.put_back(grown, held, Index::Rebuild),
                            Err(same) => store.put_back(same, held, Index::Kept),
                        }
                    }
                }
            };
            ids.push(id);
        }
        assert!(
            inner.reallocs.load(Relaxed) >= 6,
            "some growth failed and was retried"
        );
        for (frames, id) in stacks.iter().zip(&ids) {
            assert_eq!(store.get(*id).frames, frames);
        }
        free_tracebacks(&inner, RawTracebacks::of(store.into_storage()));
        assert_eq!(inner.live.load(Relaxed), 0);
    }
}
