//! The traced size and its peak (Python's `get_traced_memory()`), kept per thread and
//! published in batches.
//!
//! Two atomic updates per block (the current size, and the peak when it grows) were a sixth of
//! what full tracing cost, and with several threads each moved a cache line between cores. Each
//! thread now sums its changes, with the highest point of that sum, and publishes them to the
//! global figures once they reach [`PUBLISH_BYTES`] either way, when it asks for the figures,
//! and when it exits.

use core::cell::Cell;
use core::sync::atomic::{AtomicI64, Ordering::Relaxed};

use tracemalloc_core::sampling::scaled_size;

use crate::interner;
use crate::state::{self, OwnLine};

/// Traced bytes every thread has published. Signed: one thread may publish the frees of
/// blocks before another publishes their allocation.
static CURRENT: OwnLine<AtomicI64> = OwnLine(AtomicI64::new(0));
static PEAK: OwnLine<AtomicI64> = OwnLine(AtomicI64::new(0));

/// Adds a traced block of `added` bytes and removes one of `removed` bytes (either may be 0)
/// from the current size and peak. While sampling, sizes count for the bytes they stand for,
/// so `traced_memory()` is an estimate of the real total. Called under a shard (or the
/// foreign) lock, which orders it with `clear()`; the caller passes the sample interval and
/// the store generation it read there. The change goes to this thread's [`Pending`] sum.
#[inline(always)]
pub(crate) fn account(added: u64, removed: u64, interval: u64, generation: u32) {
    // Sizes and intervals are bounded (`sampler::MAX_INTERVAL`), so scaled sizes fit an i64.
    let change = scaled_size(added, interval) as i64 - scaled_size(removed, interval) as i64;
    add_change(change, generation, false);
}

/// [`account`] for callers that hold no shard lock (shadow memory, where full tracing needs
/// none): `clear()` may have started a new generation since `generation` was read, so the
/// change is published under the lock that fixes the generation, and dropped there if it is
/// an old one. Unsampled sizes: shadow memory serves full tracing only.
#[inline(always)]
pub(crate) fn account_unlocked(added: u64, removed: u64, generation: u32) {
    add_change(added as i64 - removed as i64, generation, true);
}

/// Adds `change` to this thread's [`Pending`] sum, or publishes it at once when the thread's
/// locals are gone; `checked`: under the generation lock (see [`account_unlocked`]).
#[inline(always)]
fn add_change(change: i64, generation: u32, checked: bool) {
    let pending = PENDING.try_with(|pending| pending.add(change, generation, checked));
    if pending.is_err() {
        if checked {
            publish_checked(change, change.max(0), generation);
        } else {
            publish(change, change.max(0));
        }
    }
}

/// Published changes never lag a thread's own by more than this.
const PUBLISH_BYTES: i64 = 64 * 1024;

/// A thread's traced-size change not yet published to [`CURRENT`], and the highest that
/// running sum reached since: the peak the thread's blocks may have set, given the total the
/// other threads had published. With one thread, the peak is exact; with several, each one's
/// unpublished change (under [`PUBLISH_BYTES`]) is missing from the others' view.
///
/// No destructor: a thread-local with one registers it on first use, which may allocate
/// through the global allocator (std aborts when that happens inside it). The thread's last
/// change is published at exit by a pthread key's destructor instead ([`exit_flush`]).
struct Pending {
    change: Cell<i64>,
    high: Cell<i64>,
    /// The store generation the change belongs to: `clear()` voids changes made before it.
    generation: Cell<u32>,
    /// Whether this thread asked for [`exit_flush`] yet.
    registered: Cell<bool>,
}

impl Pending {
    /// Adds a change of `generation`; `checked` publishes under the generation lock (see
    /// [`account_unlocked`]).
    #[inline(always)]
    fn add(&self, change: i64, generation: u32, checked: bool) {
        let held = self.generation.get();
        if held != generation {
            if (generation.wrapping_sub(held) as i32) < 0 {
                return; // older than changes this thread made since a clear: void
            }
            self.take();
            self.generation.set(generation);
        }
        if !self.registered.get() {
            self.registered.set(exit_flush::register());
        }
        let sum = self.change.get().saturating_add(change);
        self.change.set(sum);
        if sum > self.high.get() {
            self.high.set(sum);
        }
        if sum.unsigned_abs() >= PUBLISH_BYTES as u64 {
            if checked {
                self.publish_now();
            } else {
                let (change, high) = self.take();
                publish(change, high);
            }
        }
    }

    fn take(&self) -> (i64, i64) {
        (self.change.replace(0), self.high.replace(0))
    }

    /// Publishes this thread's change, if it belongs to the current generation. Takes a shard
    /// lock, which `clear()` holds while it starts a new generation.
    fn publish_now(&self) {
        let (change, high) = self.take();
        publish_checked(change, high, self.generation.get());
    }
}

// A destructor here would be registered from inside the allocator (see `Pending`).
const _: () = assert!(!core::mem::needs_drop::<Pending>());

thread_local! {
    static PENDING: Pending = const {
        Pending {
            change: Cell::new(0),
            high: Cell::new(0),
            generation: Cell::new(0),
            registered: Cell::new(false),
        }
    };
}

/// Publishes a thread's pending change when it exits, from the destructor of a pthread key the
/// thread sets on its first change. glibc runs key destructors after the thread's Rust
/// thread-local destructors, so frees made by those are included; elsewhere, or for frees
/// made by other keys' destructors, the thread sets the key again and is flushed again.
#[cfg(unix)]
mod exit_flush {
    use core::sync::atomic::{AtomicUsize, Ordering::*};

    /// The key plus one; 0 until created.
    static KEY: AtomicUsize = AtomicUsize::new(0);

    /// Creates the key; called when tracing arms (not on the allocation path).
    pub(super) fn create() {
        if KEY.load(Acquire) != 0 {
            return;
        }
        let mut key: libc::pthread_key_t = 0;
        // SAFETY: `key` is a valid out-parameter; `flush` neither unwinds nor allocates.
        if unsafe { libc::pthread_key_create(&mut key, Some(flush)) } == 0 {
            KEY.store(key as usize + 1, Release);
        }
    }

    /// Asks for this thread's exit flush; false when there is no key yet (creation failed),
    /// so the thread asks again with its next change.
    pub(super) fn register() -> bool {
        let Some(key) = KEY.load(Acquire).checked_sub(1) else {
            return false;
        };
        // SAFETY: `key` was created by `pthread_key_create`; any non-null value makes the
        // destructor run at thread exit, and it is never dereferenced. glibc may allocate key
        // storage with its own malloc, never through the Rust allocator.
        unsafe {
            libc::pthread_setspecific(
                key as libc::pthread_key_t,
                std::ptr::dangling::<libc::c_void>(),
            ) == 0
        }
    }

    /// Runs at thread exit. Frees made after it (by destructors of keys that run later) ask
    /// for the flush again, and the C library runs destructors again for keys set meanwhile.
    extern "C" fn flush(_: *mut libc::c_void) {
        crate::deferred::flush_at_exit();
        let _ = super::PENDING.try_with(|pending| {
            pending.publish_now();
            pending.registered.set(false);
        });
    }
}

#[cfg(not(unix))]
mod exit_flush {
    pub(super) fn create() {}
    pub(super) fn register() -> bool {
        true // no exit flush: a thread's last change (under 64 KiB) is lost when it exits
    }
}

/// [`publish`], under the generation lock, if `generation` is still the current one.
fn publish_checked(change: i64, high: i64, generation: u32) {
    state::with_generation_fixed(|| {
        if interner::generation() == generation {
            publish(change, high);
        }
    });
}

fn publish(change: i64, high: i64) {
    let before = CURRENT.fetch_add(change, Relaxed);
    let peak = before.saturating_add(high);
    if peak > PEAK.load(Relaxed) {
        PEAK.fetch_max(peak, Relaxed);
    }
}

/// Publishes the calling thread's pending change, so that what it asks about includes its own
/// blocks exactly.
fn publish_own() {
    crate::deferred::flush_own();
    let _ = PENDING.try_with(Pending::publish_now);
}

/// Arms this thread's exit flush, if it is not armed yet; false when it cannot be (no pthread
/// key, or not Unix), so that nothing is held back for an exit that would not see it.
pub(crate) fn watch_exit() -> bool {
    PENDING
        .try_with(|pending| {
            if !pending.registered.get() {
                pending.registered.set(exit_flush::register());
            }
            pending.registered.get() && cfg!(unix)
        })
        .unwrap_or(false)
}

/// `(current, peak)` traced bytes: with every change of the calling thread, missing under
/// [`PUBLISH_BYTES`] of each other running thread's.
pub(crate) fn traced_memory() -> (u64, u64) {
    publish_own();
    let current = CURRENT.load(Relaxed).max(0);
    (current as u64, PEAK.load(Relaxed).max(current) as u64)
}

/// Raises the peak to `bytes`, the sum of a snapshot's traces: the true total was at least
/// that when the snapshot was taken, though other threads may not have published all of it.
/// Without this, a later snapshot could report a lower peak. Skipped when `clear()` started a
/// new generation after `generation` was read, so that a cleared peak stays cleared.
pub(crate) fn raise_peak(bytes: u64, generation: u32) {
    state::with_generation_fixed(|| {
        if interner::generation() == generation {
            PEAK.fetch_max(bytes.min(i64::MAX as u64) as i64, Relaxed);
        }
    });
}

/// Python's `reset_peak()`.
pub(crate) fn reset_peak() {
    publish_own();
    // Under the generation's lock, as `reset` and `raise_peak` are: a `clear()` between the
    // load and the store would leave the old session's size as the new one's peak.
    state::with_generation_fixed(|| PEAK.store(CURRENT.load(Relaxed).max(0), Relaxed));
}

/// Forgets the highest point of this thread's unpublished sum since it last published, keeping
/// the sum: `start()` calls it after its own probe blocks (allocated and freed to switch tracing
/// on), which would otherwise show as a peak of a session that traced nothing yet. Only this
/// thread's unpublished part: the other threads' peaks stay.
pub(crate) fn forget_own_high() {
    let _ = PENDING.try_with(|pending| pending.high.set(pending.change.get().max(0)));
}

/// Zeroes the figures (`start()`, `clear_traces()`), under the lock that fixes the generation
/// (`clear()` holds every shard lock, arming the first one).
pub(crate) fn reset() {
    CURRENT.store(0, Relaxed);
    PEAK.store(0, Relaxed);
}

/// Prepares the exit flush; called when tracing arms.
pub(crate) fn arm() {
    exit_flush::create();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(generation: u32) -> Pending {
        Pending {
            change: Cell::new(0),
            high: Cell::new(0),
            generation: Cell::new(generation),
            registered: Cell::new(true),
        }
    }

    #[test]
    fn a_change_of_an_older_generation_is_dropped_and_keeps_the_newer_ones() {
        let p = pending(7);
        p.add(100, 7, true);
        // Read before a clear that this thread has seen since: void, and the 100 stay.
        p.add(-40, 6, true);
        p.add(30, u32::MAX, true); // far behind, across the wrap
        assert_eq!((p.change.get(), p.generation.get()), (100, 7));
        // A newer generation voids the older changes and starts afresh.
        p.add(5, 8, true);
        assert_eq!(
            (p.change.get(), p.high.get(), p.generation.get()),
            (5, 5, 8)
        );
        // Across the wrap, 0 follows u32::MAX.
        let q = pending(u32::MAX);
        q.add(9, 0, true);
        assert_eq!((q.change.get(), q.generation.get()), (9, 0));
    }
}
