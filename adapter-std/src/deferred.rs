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
//! What it changes: up to [`BATCH`] blocks of at most [`MAX_SIZE`] bytes per thread (64 KiB)
//! reach the inner allocator late, and until then still count in other threads' snapshots and
//! `traced_memory()`, as the accounting's 64 KiB batches do. A thread applies its own queue
//! before it takes a snapshot, reads or resets the traced memory, stops or clears, and when it
//! exits (the accounting's pthread key). Without that exit hook (not Unix), and while sampling
//! (a sampled block's free is rare), frees are applied at once.

use core::alloc::{GlobalAlloc, Layout};
use core::cell::Cell;

use crate::guard::Guard;
use crate::{accounting, sampler, state};

/// Frees applied together.
pub(crate) const BATCH: usize = 16;
/// Larger blocks are freed at once: holding them back would hold back real memory.
pub(crate) const MAX_SIZE: usize = 4096;

struct Queue {
    blocks: [Cell<(usize, Layout)>; BATCH],
    len: Cell<usize>,
    /// Frees held before applying them: [`BATCH`], or 1 once the thread's exit flush ran.
    limit: Cell<usize>,
}

// The queue is touched from inside the allocator, where registering a thread-local destructor
// may allocate (std aborts then); the exit flush is a pthread key's instead.
const _: () = assert!(!core::mem::needs_drop::<Queue>());

thread_local! {
    static QUEUE: Queue = const {
        Queue {
            blocks: [const { Cell::new((0, Layout::new::<u8>())) }; BATCH],
            len: Cell::new(0),
            limit: Cell::new(BATCH),
        }
    };
}

/// Queues the free of the traced block at `addr`, applying the queue when it is full. Returns
/// false when the caller must free the block itself. Called with the thread's guard held.
#[inline(always)]
pub(crate) fn queue(inner: &dyn GlobalAlloc, addr: usize, layout: Layout) -> bool {
    if !cfg!(unix) || layout.size() > MAX_SIZE || sampler::interval() != 0 {
        return false;
    }
    QUEUE
        .try_with(|queue| {
            let n = queue.len.get();
            // A thread's first queued free arms its exit flush, or nothing is queued.
            let Some(cell) = queue.blocks.get(n) else {
                return false;
            };
            if n == 0 && !accounting::watch_exit() {
                return false;
            }
            cell.set((addr, layout));
            state::prefetch_trace(addr);
            if n + 1 >= queue.limit.get() {
                queue.len.set(0);
                // SAFETY: every queued block came to this wrapper's `dealloc` with its layout
                // (the caller's contract) and was not freed since; its trace is gone first.
                apply(&queue.blocks[..=n], |ptr, layout| unsafe {
                    inner.dealloc(ptr, layout)
                });
            } else {
                queue.len.set(n + 1);
            }
            true
        })
        .unwrap_or(false)
}

/// Applies the calling thread's queue, so that what it asks about next includes its own frees.
pub(crate) fn flush_own() {
    let Some(_guard) = Guard::enter() else {
        return; // inside the tracer (a signal handler): the next free or flush applies it
    };
    let _ = QUEUE.try_with(|queue| {
        let n = queue.len.replace(0);
        // SAFETY: the blocks came to the wrapper's `dealloc`, and the wrapper is the global
        // allocator (as its documentation requires, and `start()` checks). With this thread's
        // guard held, the global allocator's `dealloc` hands them straight to the inner one.
        apply(&queue.blocks[..n], |ptr, layout| unsafe {
            std::alloc::dealloc(ptr, layout)
        });
    });
}

/// Applies the queue at thread exit; frees made after that (by later destructors) are applied
/// one by one.
pub(crate) fn flush_at_exit() {
    let _ = QUEUE.try_with(|queue| queue.limit.set(1));
    flush_own();
}

/// Forgets the blocks' traces, then frees them with `free`.
fn apply(blocks: &[Cell<(usize, Layout)>], free: impl Fn(*mut u8, Layout)) {
    state::forget_traces(blocks.iter().map(|block| block.get().0));
    for block in blocks {
        let (addr, layout) = block.get();
        free(addr as *mut u8, layout);
    }
}
