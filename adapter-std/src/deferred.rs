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
//! Only blocks of the wrapper serving the global allocator are queued: it is a `static`, so a
//! queue may keep a reference to its inner allocator and free through it later, outside the
//! allocator (`start()` names it, [`note_global`]; tracing started from the environment does
//! not queue frees). Snapshots stay exact: every queue is listed in a registry, and a snapshot
//! leaves out the blocks queued when it copied the tables ([`queued_frees`]). What still lags:
//! up to [`BATCH`] - 1 blocks of at most [`MAX_SIZE`] bytes per thread reach the inner allocator late,
//! and count in `traced_memory()` until then, as the accounting's 64 KiB batches do. A thread
//! applies its own queue before it takes a snapshot, reads or resets the traced memory, stops
//! or clears, and when it exits (the accounting's pthread key). Without that exit hook (not
//! Unix), and while sampling (a sampled block's free is rare), frees are applied at once.

use core::alloc::{GlobalAlloc, Layout};
use core::cell::Cell;
use core::ptr;
use core::sync::atomic::{AtomicPtr, AtomicUsize, Ordering::Relaxed};

use crate::guard::Guard;
use crate::{accounting, sampler, state};

/// Frees applied together.
pub(crate) const BATCH: usize = 16;
/// Larger blocks are freed at once: holding them back would hold back real memory.
pub(crate) const MAX_SIZE: usize = 4096;

/// One thread's queue. The owner alone writes it; snapshot takers read `addrs` while they hold
/// every shard lock.
struct Queue {
    /// Queued blocks; 0 once forgotten. A block's trace is forgotten and its address zeroed
    /// under its shard's lock, so a snapshot holding every shard lock finds an address here
    /// exactly when the block is freed by the program but still traced (and not yet handed back
    /// to the inner allocator, which happens after).
    addrs: [AtomicUsize; BATCH],
    layouts: [Cell<Layout>; BATCH],
    len: Cell<usize>,
    /// The allocator the queued blocks go back to: the wrapper's inner allocator, which lives
    /// in a `static` (the `#[global_allocator]`).
    inner: Cell<Option<&'static dyn GlobalAlloc>>,
    /// Listed in [`REGISTRY`], with the exit flush armed.
    registered: Cell<bool>,
    /// The exit flush ran: frees are applied at once from then on.
    exited: Cell<bool>,
    /// The next queue in [`REGISTRY`]; read and written under its lock only.
    next: AtomicPtr<Queue>,
}

// The queue is touched from inside the allocator, where registering a thread-local destructor
// may allocate (std aborts then); the exit flush is a pthread key's instead.
const _: () = assert!(!core::mem::needs_drop::<Queue>());

thread_local! {
    static QUEUE: Queue = const {
        Queue {
            addrs: [const { AtomicUsize::new(0) }; BATCH],
            layouts: [const { Cell::new(Layout::new::<u8>()) }; BATCH],
            len: Cell::new(0),
            inner: Cell::new(None),
            registered: Cell::new(false),
            exited: Cell::new(false),
            next: AtomicPtr::new(ptr::null_mut()),
        }
    };
}

/// Names an inner allocator: its address and the address of its `dealloc`. Equal names mean
/// the same object, or zero-sized allocators whose `dealloc` is the same code (references to a
/// zero-sized value are valid at any address, and such an allocator has no state of its own).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct InnerId(usize, usize);

impl InnerId {
    #[inline(always)]
    pub(crate) fn of<A: GlobalAlloc>(inner: &A) -> InnerId {
        let dealloc = <A as GlobalAlloc>::dealloc as unsafe fn(&A, *mut u8, Layout);
        InnerId(inner as *const A as usize, dealloc as *const () as usize)
    }
}

/// The inner allocator of the wrapper that serves the program's global allocator, seen by
/// [`note_global`]: the only one whose blocks are queued, because it lives in a `static` and may
/// be kept for freeing them later (0 until seen).
static GLOBAL_ADDR: AtomicUsize = AtomicUsize::new(0);
static GLOBAL_DEALLOC: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// Set while [`note_global`] frees its probe block through the global allocator.
    static PROBING: Cell<bool> = const { Cell::new(false) };
}

/// Frees a block through the global allocator while tracing is on, so that the wrapper serving
/// it names its inner allocator ([`InnerId`]). Called by `start()`, outside the allocator.
pub(crate) fn note_global() {
    let probe = std::hint::black_box(Box::new(0u64));
    let _ = PROBING.try_with(|p| p.set(true));
    drop(probe);
    let _ = PROBING.try_with(|p| p.set(false));
}

/// Whether `id` is the global allocator's inner allocator; records it when the probe of
/// [`note_global`] is being freed.
#[inline(always)]
fn is_global(id: InnerId) -> bool {
    (id.0 == GLOBAL_ADDR.load(Relaxed) && id.1 == GLOBAL_DEALLOC.load(Relaxed)) || probed(id)
}

#[cold]
fn probed(id: InnerId) -> bool {
    let probing = PROBING.try_with(Cell::get).unwrap_or(false);
    if probing {
        GLOBAL_DEALLOC.store(id.1, Relaxed);
        GLOBAL_ADDR.store(id.0, Relaxed);
    }
    probing
}

/// The head of the list of every thread's queue.
struct Registry(*const Queue);

// SAFETY: the pointers are followed only under the registry's lock (or, in a fork child, by
// its only thread), and each points at the queue of a thread that is still running: a thread
// takes its queue out at exit, from the pthread key destructor that listing it armed, before
// its thread-locals are freed (the one gap: a thread whose first queued free comes in the C
// library's last round of key destructors, see the README), and a fork child applies and
// unlists the other threads' queues at once.
unsafe impl Send for Registry {}

static REGISTRY: spin::Mutex<Registry> = spin::Mutex::new(Registry(ptr::null()));

/// Queues the free of the traced block at `addr` (allocated by `inner`, named `id`), applying
/// the queue when it is full. Returns false when the caller must free the block itself: not the
/// global allocator's block, too large, sampling, or no exit hook. Called with the thread's
/// guard held.
#[inline(always)]
pub(crate) fn queue(inner: &dyn GlobalAlloc, id: InnerId, addr: usize, layout: Layout) -> bool {
    if !cfg!(unix) || layout.size() > MAX_SIZE || sampler::interval() != 0 || !is_global(id) {
        return false;
    }
    QUEUE
        .try_with(|queue| {
            let same_inner = queue
                .inner
                .get()
                .is_some_and(|queued| ptr::addr_eq(queued, inner));
            if !same_inner && !queue.prepare(inner) {
                return false;
            }
            let n = queue.len.get(); // after `prepare`, which may have emptied the queue
            let (Some(slot), Some(cell)) = (queue.addrs.get(n), queue.layouts.get(n)) else {
                return false;
            };
            slot.store(addr, Relaxed);
            cell.set(layout);
            state::prefetch_trace(addr);
            if n + 1 == BATCH {
                queue.apply(n + 1, inner);
            } else {
                queue.len.set(n + 1);
            }
            true
        })
        .unwrap_or(false)
}

impl Queue {
    /// Readies the queue for blocks of `inner` (the first free, or a second wrapper instance):
    /// registers it and arms the exit flush, and applies what another allocator queued.
    #[cold]
    fn prepare(&self, inner: &dyn GlobalAlloc) -> bool {
        if self.exited.get() {
            return false;
        }
        if !self.registered.get() {
            if !accounting::watch_exit() {
                return false; // no exit flush: nothing may be held back
            }
            let mut registry = REGISTRY.lock();
            self.next.store(registry.0.cast_mut(), Relaxed);
            registry.0 = self;
            self.registered.set(true);
        }
        if let Some(previous) = self.inner.get() {
            self.apply(self.len.get(), previous);
        }
        // SAFETY: only the lifetime changes. `queue` passed `is_global`: `inner` is the inner
        // allocator of the wrapper serving the global allocator, which is a `static`, or a
        // zero-sized allocator with the same code, which any reference reaches validly.
        let inner: &'static dyn GlobalAlloc = unsafe { core::mem::transmute(inner) };
        self.inner.set(Some(inner));
        true
    }

    /// Forgets the traces of the first `n` queued blocks, then frees them through `inner`, and
    /// empties the queue.
    fn apply(&self, n: usize, inner: &dyn GlobalAlloc) {
        let n = n.min(BATCH);
        let mut blocks = [(0usize, Layout::new::<u8>()); BATCH];
        for ((block, addr), layout) in blocks.iter_mut().zip(&self.addrs).zip(&self.layouts) {
            *block = (addr.load(Relaxed), layout.get());
        }
        state::forget_traces(&self.addrs[..n]);
        self.len.set(0);
        // An address is 0 only in a fork child applying another thread's queue, which the fork
        // caught inside `apply`: that block was forgotten and is that (gone) thread's to free.
        for &(addr, layout) in blocks[..n].iter().filter(|block| block.0 != 0) {
            // SAFETY: the block came to the wrapper's `dealloc` with this layout (the caller's
            // contract), was allocated by `inner`, and was not freed since; its trace is gone.
            unsafe { inner.dealloc(addr as *mut u8, layout) };
        }
    }
}

/// Applies the calling thread's queue, so that what it asks about next includes its own frees.
pub(crate) fn flush_own() {
    let Some(_guard) = Guard::enter() else {
        return; // inside the tracer (a signal handler): the next free or flush applies it
    };
    let _ = QUEUE.try_with(|queue| {
        if let Some(inner) = queue.inner.get() {
            queue.apply(queue.len.get(), inner);
        }
    });
}

/// At thread exit: applies the queue and takes it out of the registry; frees made after that
/// (by later destructors) are applied at once.
pub(crate) fn flush_at_exit() {
    // One guard for all of it: a signal handler's free meanwhile passes untraced, rather than
    // queue a block after the last flush or wait for a lock this thread holds.
    let Some(_guard) = Guard::enter() else {
        return;
    };
    let _ = QUEUE.try_with(|queue| {
        queue.exited.set(true);
        if let Some(inner) = queue.inner.get() {
            queue.apply(queue.len.get(), inner);
        }
        // The next free goes to `prepare`, which refuses it. Only now: a fork child applies
        // what a queue still holds, through its inner allocator.
        queue.inner.set(None);
        if queue.registered.replace(false) {
            let mut registry = REGISTRY.lock();
            let own: *const Queue = queue;
            if registry.0 == own {
                registry.0 = queue.next.load(Relaxed);
            } else {
                let mut at = registry.0;
                // SAFETY: the registry's lock is held, and every queue in the list is alive.
                while let Some(q) = unsafe { at.as_ref() } {
                    let next = q.next.load(Relaxed);
                    if next.cast_const() == own {
                        q.next.store(queue.next.load(Relaxed), Relaxed);
                        break;
                    }
                    at = next;
                }
            }
        }
    });
}

/// Appends the address of every block queued in any thread and still traced to `out`. Called
/// by a snapshot holding every shard lock: none of them can be forgotten, freed and handed out
/// again meanwhile.
pub(crate) fn queued_frees(out: &mut Vec<usize>) {
    let registry = REGISTRY.lock();
    let mut at = registry.0;
    // SAFETY: the registry's lock is held, and every queue in the list is alive.
    while let Some(queue) = unsafe { at.as_ref() } {
        let queued = queue.addrs.iter().map(|a| a.load(Relaxed));
        out.extend(queued.filter(|&addr| addr != 0));
        at = queue.next.load(Relaxed);
    }
}

/// Fork support: the registry's lock, held across `fork()`.
#[cfg(unix)]
pub(crate) fn lock_registry_for_fork() {
    core::mem::forget(REGISTRY.lock());
}

/// Releases the lock after `fork()` in the parent.
///
/// # Safety
/// The calling thread took the lock with [`lock_registry_for_fork`].
#[cfg(unix)]
pub(crate) unsafe fn unlock_registry_after_fork() {
    // SAFETY: the caller took the lock and leaked its guard.
    unsafe { REGISTRY.force_unlock() };
}

/// In a fork child, after the tracer's locks are released: only the forking thread exists, so
/// the other threads' queues are applied here (their blocks were freed by the program before
/// the fork) and only the forking thread's queue stays listed (the other threads' stacks may
/// be reused for new threads).
///
/// # Safety
/// The calling thread took the lock with [`lock_registry_for_fork`] before the fork, and this
/// is the fork child.
#[cfg(unix)]
pub(crate) unsafe fn adopt_queues_in_child() {
    // SAFETY: the caller took the lock before the fork and leaked its guard; only this thread
    // exists in the child.
    unsafe { REGISTRY.force_unlock() };
    let own: *const Queue = QUEUE
        .try_with(|queue| queue as *const Queue)
        .unwrap_or(ptr::null());
    loop {
        let orphan = {
            let mut registry = REGISTRY.lock();
            // SAFETY: the list holds live queues: the other threads' thread-locals are still
            // mapped in the child, and nothing runs there to change them.
            match unsafe { registry.0.as_ref() } {
                Some(queue) if ptr::eq(queue, own) => {
                    // Keep our own queue at the head; the rest of the list is orphans.
                    let next = queue.next.load(Relaxed);
                    // SAFETY: as above.
                    match unsafe { next.as_ref() } {
                        Some(orphan) => {
                            queue.next.store(orphan.next.load(Relaxed), Relaxed);
                            orphan
                        }
                        None => break,
                    }
                }
                Some(orphan) => {
                    registry.0 = orphan.next.load(Relaxed);
                    orphan
                }
                None => break,
            }
        };
        // Applied without the registry's lock (snapshots take it after the shard locks).
        if let Some(inner) = orphan.inner.get() {
            orphan.apply(orphan.len.get(), inner);
        }
    }
}
