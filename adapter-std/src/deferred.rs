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
//! Snapshots stay exact: every queue is listed in a registry, and a snapshot leaves out the
//! blocks queued when it copied the tables ([`queued_frees`]). What still lags: up to
//! [`BATCH`] - 1 blocks of at most [`MAX_SIZE`] bytes per thread reach the inner allocator late,
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

/// The head of the list of every thread's queue.
struct Registry(*const Queue);

// SAFETY: the pointers are followed only under the registry's lock, and each points at the
// queue of a thread that is still running: a thread takes its queue out at exit, before its
// thread-locals are freed, and a fork child keeps only its own.
unsafe impl Send for Registry {}

static REGISTRY: spin::Mutex<Registry> = spin::Mutex::new(Registry(ptr::null()));

/// Queues the free of the traced block at `addr`, applying the queue when it is full. Returns
/// false when the caller must free the block itself. Called with the thread's guard held.
#[inline(always)]
pub(crate) fn queue(inner: &dyn GlobalAlloc, addr: usize, layout: Layout) -> bool {
    if !cfg!(unix) || layout.size() > MAX_SIZE || sampler::interval() != 0 {
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
        // SAFETY: only the lifetime changes. The wrapper must be the program's
        // `#[global_allocator]` (its documentation says so), a `static`, so its inner
        // allocator outlives every thread that queues blocks for it.
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
        for &(addr, layout) in &blocks[..n] {
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
    flush_own();
    let _ = QUEUE.try_with(|queue| {
        queue.exited.set(true);
        queue.inner.set(None); // the next free goes to `prepare`, which refuses it
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

/// In a fork child: only the forking thread exists, so only its queue stays listed (the other
/// threads' stacks may be reused for new threads). Their queued blocks stay allocated.
///
/// # Safety
/// The calling thread took the lock with [`lock_registry_for_fork`] before the fork.
#[cfg(unix)]
pub(crate) unsafe fn reset_registry_in_child() {
    // SAFETY: the caller took the lock before the fork and leaked its guard; only this thread
    // exists in the child.
    unsafe { REGISTRY.force_unlock() };
    let mut registry = REGISTRY.lock();
    registry.0 = ptr::null();
    let _ = QUEUE.try_with(|queue| {
        if queue.registered.get() {
            queue.next.store(ptr::null_mut(), Relaxed);
            registry.0 = queue;
        }
    });
}
