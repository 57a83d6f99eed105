//! Frees of small blocks, queued per thread and applied [`BATCH`] at a time.
//!
//! A free must find its block's slot in the trace table. Frees come in no particular order, so
//! that slot is usually cold, and a free of a block another thread allocated also takes a shard
//! lock whose cache line that thread's core holds. A thread therefore queues its frees of small
//! blocks, prefetching each slot as it queues it, and applies them together: the slot misses
//! overlap, and a run of frees in one shard takes its lock once. The blocks go back to the inner
//! allocator only after their traces are gone, so no thread can be handed an address whose old
//! trace is still in the table.
//!
//! Only blocks of the wrapper serving the global allocator are queued: it is a `static`, so the
//! tracer may keep a reference to its inner allocator and free through it later, outside the
//! allocator (`start()` names it, [`note_global`]; tracing started from the environment does
//! not queue frees). The queues live in a static table, a slot per thread that frees, so that a
//! snapshot can read them all and leave out the blocks still queued ([`queued_frees`]): snapshots
//! stay exact. What still lags: up to [`BATCH`] - 1 blocks of at most [`MAX_SIZE`] bytes per
//! thread reach the inner allocator late, and count in `traced_memory()` until then, as the
//! accounting's 64 KiB batches do. A thread applies its own queue before it takes a snapshot,
//! reads or resets the traced memory, stops or clears, and when it exits (the accounting's
//! pthread key), then gives its slot back. Without that exit hook (not Unix), while sampling (a
//! sampled block's free is rare), and in a thread that found all [`QUEUES`] slots taken (for
//! the rest of its life), frees are applied at once.

use core::alloc::{GlobalAlloc, Layout};
use core::cell::Cell;
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering::*};

use crate::allocator::inner_address;
use crate::guard::Guard;
use crate::{accounting, sampler, state};

/// Frees applied together.
pub(crate) const BATCH: usize = 16;
/// Larger blocks are freed at once: holding them back would hold back real memory.
pub(crate) const MAX_SIZE: usize = 4096;
/// Threads that may hold a queue at once.
const QUEUES: usize = 1024;

/// One thread's queue, in [`SLOTS`]. Its owner alone writes it (a fork child applies the
/// queues of threads that do not exist there); snapshots read `addrs` holding every shard lock.
#[repr(align(128))]
struct Queue {
    /// Queued blocks; 0 once forgotten. A block's trace is forgotten and its address zeroed
    /// under its shard's lock, so a snapshot holding every shard lock finds an address here
    /// exactly when the block is freed by the program but still traced (and not yet handed back
    /// to the inner allocator, which happens after).
    addrs: [AtomicUsize; BATCH],
    /// The blocks' layouts, as size and alignment.
    sizes: [AtomicUsize; BATCH],
    aligns: [AtomicUsize; BATCH],
    /// Blocks queued.
    len: AtomicUsize,
    /// Owned by a thread.
    claimed: AtomicBool,
}

#[allow(clippy::declare_interior_mutable_const)] // a template for the array below
const EMPTY_QUEUE: Queue = Queue {
    addrs: [const { AtomicUsize::new(0) }; BATCH],
    sizes: [const { AtomicUsize::new(0) }; BATCH],
    aligns: [const { AtomicUsize::new(1) }; BATCH],
    len: AtomicUsize::new(0),
    claimed: AtomicBool::new(false),
};

/// Every queue. Static, so that a snapshot or a fork child may read any of them, whatever
/// became of its thread: a thread that exits without its exit flush (see the README) leaves its
/// slot claimed and its blocks unfreed, never a dangling pointer.
static SLOTS: [Queue; QUEUES] = [EMPTY_QUEUE; QUEUES];
/// One past the highest slot ever claimed: snapshots read no further.
static SLOTS_END: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread's slot plus one (0: none), and whether it holds none for good: its exit
    /// flush ran, or it found every slot taken.
    static OWN: Cell<(usize, bool)> = const { Cell::new((0, false)) };
}

/// The inner allocator of the wrapper that serves the program's global allocator, seen by
/// [`note_global`]: the only one whose blocks are queued. `GLOBAL_ADDR` is its
/// [`inner_address`] (0 until seen); `GLOBAL_INNER` holds the reference itself, written before
/// the address is published.
static GLOBAL_ADDR: AtomicUsize = AtomicUsize::new(0);
static GLOBAL_INNER: [AtomicUsize; 2] = [AtomicUsize::new(0), AtomicUsize::new(0)];

thread_local! {
    /// Set while [`note_global`] frees its probe block through the global allocator.
    static PROBING: Cell<bool> = const { Cell::new(false) };
}

/// Frees a block through the global allocator while tracing is on, so that the wrapper serving
/// it names its inner allocator. Called by `start()`, outside the allocator.
pub(crate) fn note_global() {
    let probe = std::hint::black_box(Box::new(0u64));
    // While sampling, the free of a block the filter calls unsampled skips the tracer inline:
    // the probe's page is marked for the time of its free.
    let addr = &*probe as *const u64 as usize;
    let marked = (sampler::interval() != 0)
        .then(|| state::mark_probe(addr))
        .flatten();
    let _ = PROBING.try_with(|p| p.set(true));
    drop(probe);
    let _ = PROBING.try_with(|p| p.set(false));
    if let Some(generation) = marked {
        state::unmark_probe(addr, generation);
    }
}

/// Names the global allocator's inner allocator if `inner`, freeing a block, is freeing the
/// probe of [`note_global`]: for frees that are never queued (shadow memory).
#[inline(always)]
pub(crate) fn notice_probe(inner: &dyn GlobalAlloc) {
    if GLOBAL_ADDR.load(Relaxed) == 0 {
        probed(inner);
    }
}

/// Whether `inner` is the global allocator's inner allocator; records it when the probe of
/// [`note_global`] is being freed.
#[inline(always)]
fn is_global(inner: &dyn GlobalAlloc) -> bool {
    inner_address(inner) == GLOBAL_ADDR.load(Acquire) || probed(inner)
}

#[cold]
fn probed(inner: &dyn GlobalAlloc) -> bool {
    let probing = PROBING.try_with(Cell::get).unwrap_or(false);
    if probing {
        // SAFETY: a reference to a trait object is two words; `global_inner` turns them back.
        let words: [usize; 2] = unsafe { core::mem::transmute(inner) };
        GLOBAL_INNER[0].store(words[0], Relaxed);
        GLOBAL_INNER[1].store(words[1], Relaxed);
        GLOBAL_ADDR.store(inner_address(inner), Release);
    }
    probing
}

/// The global allocator's inner allocator, if it is the one at `address` ([`inner_address`]).
pub(crate) fn global_inner_at(address: usize) -> Option<&'static dyn GlobalAlloc> {
    global_inner().filter(|global| inner_address(*global) == address)
}

/// The global allocator's inner allocator, once named.
fn global_inner() -> Option<&'static dyn GlobalAlloc> {
    if GLOBAL_ADDR.load(Acquire) == 0 {
        return None;
    }
    let words = [GLOBAL_INNER[0].load(Relaxed), GLOBAL_INNER[1].load(Relaxed)];
    // SAFETY: the words are those of a reference to the inner allocator of the wrapper that
    // serves the global allocator (`probed` wrote them before publishing the address this load
    // saw), which lives in a `static`: valid for the rest of the program. Every write stores
    // that allocator's address and one of its vtables, so even words from two writes make a
    // valid reference to it.
    Some(unsafe { core::mem::transmute::<[usize; 2], &'static dyn GlobalAlloc>(words) })
}

/// Queues the free of the traced block at `addr` (allocated by `inner`), applying
/// the queue when it is full. Returns false when the caller must free the block itself: not the
/// global allocator's block, too large, sampling, no exit hook or no free slot. Called with the
/// thread's guard held.
#[inline(always)]
pub(crate) fn queue(inner: &dyn GlobalAlloc, addr: usize, layout: Layout) -> bool {
    // `is_global` before the sampling test: it also notices the probe of `note_global`, which
    // must name the global allocator while sampling too.
    if !cfg!(unix) || layout.size() > MAX_SIZE || !is_global(inner) || sampler::interval() != 0 {
        return false;
    }
    OWN.try_with(|own| {
        let Some(queue) = own_queue(own) else {
            return false;
        };
        let n = queue.len.load(Relaxed);
        let (Some(slot), Some(size), Some(align)) =
            (queue.addrs.get(n), queue.sizes.get(n), queue.aligns.get(n))
        else {
            return false;
        };
        // The layout before the address: a fork caught between the two leaves the child an
        // entry past the count whose address, once there, has its layout too (see
        // `adopt_queues_in_child`).
        size.store(layout.size(), Relaxed);
        align.store(layout.align(), Relaxed);
        slot.store(addr, Release);
        state::prefetch_trace(addr);
        // The free held back here would have read the block's neighbour (an allocator checks
        // the next chunk's header to coalesce), which is often the next object the program
        // reads: a drop loop over blocks allocated in order ran 5 % slower without this.
        state::prefetch(addr.wrapping_add(layout.size()));
        queue.len.store(n + 1, Relaxed);
        if n + 1 == BATCH {
            queue.apply(inner);
        }
        true
    })
    .unwrap_or(false)
}

/// This thread's queue, claiming a slot on its first free.
#[inline(always)]
fn own_queue(own: &Cell<(usize, bool)>) -> Option<&'static Queue> {
    match own.get() {
        (0, false) => claim(own),
        (slot, _) => claimed(slot),
    }
}

/// The queue of a thread's `OWN` slot number (its index plus one; 0: none).
#[inline(always)]
fn claimed(slot: usize) -> Option<&'static Queue> {
    SLOTS.get(slot.checked_sub(1)?)
}

/// Claims a free slot for this thread and arms its exit flush; `None` when there is no exit
/// flush (nothing may be held back) or no free slot (then never again).
#[cold]
fn claim(own: &Cell<(usize, bool)>) -> Option<&'static Queue> {
    if !accounting::watch_exit() {
        return None;
    }
    let Some(index) = SLOTS.iter().position(|queue| {
        queue
            .claimed
            .compare_exchange(false, true, Acquire, Relaxed)
            .is_ok()
    }) else {
        // Every slot taken: this thread frees at once from now on. Searching again on each
        // free cost 60 µs a free in a debug build, against 1 µs with a slot: a compare-and-swap
        // on every slot's line, which its owner writes on each of its own frees.
        own.set((0, true));
        return None;
    };
    SLOTS_END.fetch_max(index + 1, Release);
    own.set((index + 1, false));
    SLOTS.get(index)
}

impl Queue {
    /// Forgets the traces of the queued blocks, then frees them through `inner`, and empties
    /// the queue.
    fn apply(&self, inner: &dyn GlobalAlloc) {
        let n = self.len.load(Relaxed).min(BATCH);
        // Copied first: forgetting a trace zeroes its address.
        let addrs: [usize; BATCH] = core::array::from_fn(|i| self.addrs[i].load(Relaxed));
        state::forget_traces(&self.addrs[..n]);
        self.len.store(0, Relaxed);
        let layouts = self.sizes.iter().zip(&self.aligns);
        for (&addr, (size, align)) in addrs[..n].iter().zip(layouts) {
            // An address is 0 only in a fork child applying another thread's queue, which the
            // fork caught inside `apply`: that block was forgotten and is that (gone) thread's
            // to free.
            if addr == 0 {
                continue;
            }
            let (size, align) = (size.load(Relaxed), align.load(Relaxed));
            // SAFETY: the block came to the wrapper's `dealloc` with this layout (the caller's
            // contract; a valid `Layout`, stored as its size and alignment), was allocated by
            // `inner`, and was not freed since; its trace is gone.
            unsafe {
                let layout = Layout::from_size_align_unchecked(size, align);
                inner.dealloc(addr as *mut u8, layout);
            }
        }
    }
}

/// Applies the calling thread's queue, so that what it asks about next includes its own frees.
pub(crate) fn flush_own() {
    let Some(_guard) = Guard::enter() else {
        return; // inside the tracer (a signal handler): the next free or flush applies it
    };
    let _ = OWN.try_with(apply_own);
}

fn apply_own(own: &Cell<(usize, bool)>) {
    if let (Some(queue), Some(inner)) = (claimed(own.get().0), global_inner()) {
        queue.apply(inner);
    }
}

/// At thread exit: applies the queue and gives the slot back; frees made after that (by later
/// destructors) are applied at once.
#[cfg(unix)]
pub(crate) fn flush_at_exit() {
    // One guard for all of it: a signal handler's free meanwhile passes untraced, rather than
    // queue a block after the last flush or wait for a lock this thread holds.
    let Some(_guard) = Guard::enter() else {
        return;
    };
    let _ = OWN.try_with(|own| {
        apply_own(own);
        if let Some(queue) = claimed(own.get().0) {
            queue.claimed.store(false, Release);
        }
        own.set((0, true));
    });
}

/// Appends the address of every block queued in any thread and still traced to `out`. Called
/// by a snapshot holding every shard lock: none of them can be forgotten, freed and handed out
/// again meanwhile.
pub(crate) fn queued_frees(out: &mut Vec<usize>) {
    out.extend(queued());
}

/// The addresses every thread's queue holds (entries past a queue's count included: they are
/// 0 but in a fork child, see [`adopt_queues_in_child`]).
fn queued() -> impl Iterator<Item = usize> {
    let end = SLOTS_END.load(Acquire).min(QUEUES);
    SLOTS[..end]
        .iter()
        .flat_map(|queue| queue.addrs.iter().map(|a| a.load(Relaxed)))
        .filter(|&addr| addr != 0)
}

/// In a fork child, after the tracer's locks are released: only the forking thread exists, so
/// the other threads' queues are applied here (their blocks were freed by the program before
/// the fork) and their slots given back.
#[cfg(unix)]
pub(crate) fn adopt_queues_in_child() {
    let own = OWN.try_with(|own| own.get().0).unwrap_or(0);
    let Some(inner) = global_inner() else {
        return;
    };
    let end = SLOTS_END.load(Acquire).min(QUEUES);
    for (index, queue) in SLOTS[..end].iter().enumerate() {
        if index + 1 != own && queue.claimed.load(Acquire) {
            // A fork that caught the thread in `queue` after it wrote an entry and before it
            // counted it: the entry is queued too (entries past the count are otherwise 0), or
            // its block would keep its trace and never be freed.
            let written = queue
                .addrs
                .iter()
                .rposition(|a| a.load(Acquire) != 0)
                .map_or(0, |last| last + 1);
            queue.len.fetch_max(written, Relaxed);
            queue.apply(inner);
            queue.claimed.store(false, Release);
        }
    }
}

/// Whether a thread holds `addr` in its queue: freed by the program, its trace not yet gone.
/// Called holding the shard lock of `addr` (queued addresses are zeroed under it).
pub(crate) fn is_queued(addr: usize) -> bool {
    queued().any(|queued| queued == addr)
}
