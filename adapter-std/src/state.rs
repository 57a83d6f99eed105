//! The process-wide tracer behind the allocator and the API.
//!
//! The core's [`Tracer`] is `&mut self`; here it is sharded so that threads allocating at once
//! rarely meet: a block's address picks one of [`SHARDS`] tracers, each behind its own spin lock
//! (a lock inside an allocator must never allocate, and the critical sections are tens of
//! nanoseconds). Each shard interns its own tracebacks, so a record takes exactly one lock.
//! The global current size and peak are kept in two atomics, so `traced_memory()` is exact.
//!
//! Tracing memory comes from the inner allocator directly. `start()` only arms the tracer; the
//! next allocation through the wrapper, which has the inner allocator at hand, obtains the
//! storage and switches tracing on. `start()` makes that allocation itself, so when it returns
//! tracing is on, or the wrapper is not the global allocator and it says so.

use core::alloc::{GlobalAlloc, Layout};
use core::mem::MaybeUninit;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering::*};

use tracemalloc_core::table::Slot;
use tracemalloc_core::traceback::{TracebackEntry, TracebackStorage};
use tracemalloc_core::{Counters, RawSnapshot, Tracer, TracerStorage};

use crate::capture::{capture, Capture};
use crate::guard::Guard;
use crate::Config;

/// Number of trace-table shards (a power of two).
pub(crate) const SHARDS: usize = 16;

/// Frames captured into a buffer on the stack; deeper limits use a per-thread buffer.
const STACK_FRAMES: usize = 96;

const OFF: u8 = 0;
const ON: u8 = 1;
const ARMED: u8 = 2;
const ENV_PENDING: u8 = 3;

/// The tracing state: one relaxed load of it is all the allocator pays while tracing is off.
static STATE: AtomicU8 = AtomicU8::new(ENV_PENDING);
/// Frames to capture: the traceback limit plus the allowance for hidden plumbing frames.
static CAPTURE_DEPTH: AtomicUsize = AtomicUsize::new(1);
/// The traceback limit users asked for (frames kept after hiding plumbing).
static NFRAME: AtomicUsize = AtomicUsize::new(1);
/// 0: frame pointers, 1: unwinder.
static METHOD: AtomicU8 = AtomicU8::new(0);
static CURRENT: AtomicU64 = AtomicU64::new(0);
static PEAK: AtomicU64 = AtomicU64::new(0);
/// Set when arming failed because the inner allocator had no memory for the tables.
static ARM_FAILED: AtomicBool = AtomicBool::new(false);
static CONFIG: spin::Mutex<Option<Config>> = spin::Mutex::new(None);
static ARMING: spin::Mutex<()> = spin::Mutex::new(());

struct Shard {
    tracer: Option<Tracer<'static>>,
    grow: bool,
}

#[allow(clippy::declare_interior_mutable_const)]
const EMPTY_SHARD: spin::Mutex<Shard> = spin::Mutex::new(Shard {
    tracer: None,
    grow: true,
});
static SHARD_TABLE: [spin::Mutex<Shard>; SHARDS] = [EMPTY_SHARD; SHARDS];

#[inline(always)]
fn shard_of(addr: usize) -> &'static spin::Mutex<Shard> {
    // Blocks are at least 8-byte aligned and neighbours come from one thread: mix before
    // picking so consecutive blocks spread over shards.
    // A multiplier unlike the trace table's: with the same one, a shard's blocks would all hash
    // into one sixteenth of its table (same top bits), one long probe chain.
    let h = (addr as u64).wrapping_mul(0xD6E8_FEB8_6659_FD93) >> (64 - SHARDS.trailing_zeros());
    &SHARD_TABLE[h as usize]
}

/// Whether the allocator should record: the one load on every allocation.
#[inline(always)]
pub(crate) fn is_on() -> bool {
    STATE.load(Relaxed) == ON
}

/// Called by the allocator when tracing is not on: handles the first allocation (which reads
/// `RUST_TRACEMALLOC`) and arming. Returns whether tracing is now on.
#[cold]
#[inline(never)]
pub(crate) fn on_state_change(inner: &dyn GlobalAlloc) -> bool {
    match STATE.load(Acquire) {
        ENV_PENDING => {
            let Some(_guard) = Guard::enter() else {
                return false;
            };
            let config = env_config();
            let _ = STATE.compare_exchange(ENV_PENDING, OFF, AcqRel, Acquire);
            if let Some(config) = config {
                request_start(config);
                return arm(inner);
            }
            false
        }
        ARMED => {
            let Some(_guard) = Guard::enter() else {
                return false;
            };
            arm(inner)
        }
        state => state == ON,
    }
}

/// `RUST_TRACEMALLOC=N` as `PYTHONTRACEMALLOC=N`: start with N frames (1 when not a number).
fn env_config() -> Option<Config> {
    let value = read_env("RUST_TRACEMALLOC")?;
    let value = value.trim();
    if value.is_empty() || value == "0" {
        return None;
    }
    let nframe = value
        .parse::<usize>()
        .unwrap_or(1)
        .clamp(1, tracemalloc_core::MAX_NFRAME);
    Some(Config {
        nframe,
        ..Config::default()
    })
}

#[cfg(unix)]
fn read_env(name: &str) -> Option<String> {
    // libc's getenv takes no lock, unlike std::env, which may be held by a thread that is
    // allocating inside `set_var` when the first allocation arrives.
    let mut key = [0u8; 32];
    key[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: `key` is NUL-terminated (name is shorter than the buffer); getenv returns null or
    // a pointer to a NUL-terminated string that lives as long as the environment entry.
    unsafe {
        let value = libc::getenv(key.as_ptr().cast());
        if value.is_null() {
            return None;
        }
        Some(
            std::ffi::CStr::from_ptr(value)
                .to_string_lossy()
                .into_owned(),
        )
    }
}

#[cfg(not(unix))]
fn read_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// Records the configuration and arms the tracer; the next allocation through the wrapper
/// switches tracing on.
pub(crate) fn request_start(config: Config) {
    let depth = config.nframe + config.hidden_frame_allowance;
    CAPTURE_DEPTH.store(depth.min(u16::MAX as usize), Relaxed);
    NFRAME.store(config.nframe, Relaxed);
    METHOD.store(
        u8::from(config.capture.resolved() == Capture::Unwinder),
        Relaxed,
    );
    ARM_FAILED.store(false, Relaxed);
    *CONFIG.lock() = Some(config);
    if STATE.load(Acquire) != ON {
        STATE.store(ARMED, Release);
    }
}

/// Whether the last arming failed for lack of memory.
pub(crate) fn arm_failed() -> bool {
    ARM_FAILED.load(Relaxed)
}

/// Gives every shard its storage from `inner`, then switches tracing on.
fn arm(inner: &dyn GlobalAlloc) -> bool {
    let _arming = ARMING.lock();
    if STATE.load(Acquire) != ARMED {
        return STATE.load(Acquire) == ON;
    }
    let Some(config) = CONFIG.lock().clone() else {
        return false;
    };
    for shard in &SHARD_TABLE {
        let mut shard = shard.lock();
        shard.grow = config.grow;
        if let Some(tracer) = shard.tracer.as_mut() {
            tracer.clear();
            continue;
        }
        match allocate_tracer(inner, &config) {
            Some(tracer) => shard.tracer = Some(tracer),
            None => {
                ARM_FAILED.store(true, Relaxed);
                STATE.store(OFF, Release);
                return false;
            }
        }
    }
    CURRENT.store(0, Relaxed);
    PEAK.store(0, Relaxed);
    STATE.store(ON, Release);
    true
}

/// A zeroed array of `len` values from `inner`, or `None` when it has no memory.
fn allocate_array<T>(inner: &dyn GlobalAlloc, len: usize) -> Option<&'static mut [T]> {
    let layout = Layout::array::<T>(len.max(1)).ok()?;
    // SAFETY: the layout has a non-zero size. The memory is zeroed, and every `T` used here
    // (slots, traceback entries, integers) is valid when all-zero. The block is owned by the
    // returned slice alone until `free_array` gives it back, so the `'static` borrow is unique.
    unsafe {
        let ptr = inner.alloc_zeroed(layout).cast::<T>();
        if ptr.is_null() {
            return None;
        }
        Some(core::slice::from_raw_parts_mut(ptr, len.max(1)))
    }
}

/// Gives an array from [`allocate_array`] back to `inner`.
fn free_array<T>(inner: &dyn GlobalAlloc, array: &'static mut [T]) {
    if let Ok(layout) = Layout::array::<T>(array.len()) {
        // SAFETY: `array` came from `allocate_array` on this allocator with this length, so the
        // layout matches, and the caller gave up its only reference.
        unsafe { inner.dealloc(array.as_mut_ptr().cast(), layout) }
    }
}

fn allocate_tracer(inner: &dyn GlobalAlloc, config: &Config) -> Option<Tracer<'static>> {
    let slots = config.initial_slots_per_shard.next_power_of_two();
    let entries = config.tracebacks_per_shard.max(2);
    let index = (entries * 2).next_power_of_two();
    // Room for every entry to hold a full capture (deeper limits share a bounded pool).
    let depth = config.nframe.saturating_add(config.hidden_frame_allowance);
    let frames = entries * depth.clamp(4, STACK_FRAMES);
    Some(Tracer::new(TracerStorage {
        slots: allocate_array::<Slot>(inner, slots)?,
        tracebacks: TracebackStorage {
            entries: allocate_array::<TracebackEntry>(inner, entries)?,
            index: allocate_array::<u32>(inner, index)?,
            frames: allocate_array::<usize>(inner, frames)?,
        },
    }))
}

thread_local! {
    static DEEP_FRAMES: core::cell::RefCell<Vec<MaybeUninit<usize>>> =
        const { core::cell::RefCell::new(Vec::new()) };
}

/// Captures the caller's stack and runs `f` with it.
#[inline(always)]
fn with_stack<R>(f: impl FnOnce(&[usize], u16) -> R) -> R {
    let depth = CAPTURE_DEPTH.load(Relaxed);
    let method = if METHOD.load(Relaxed) == 0 {
        Capture::FramePointers
    } else {
        Capture::Unwinder
    };
    if depth <= STACK_FRAMES {
        let mut buf = [MaybeUninit::<usize>::uninit(); STACK_FRAMES];
        let (n, total) = capture(method, 0, &mut buf[..depth]);
        // SAFETY: `capture` initialised the first `n` elements, and `MaybeUninit<usize>` has
        // the layout of `usize`.
        let frames = unsafe { core::slice::from_raw_parts(buf.as_ptr().cast::<usize>(), n) };
        f(frames, total)
    } else {
        // Limits beyond the stack buffer: a per-thread buffer, allocated under the guard.
        DEEP_FRAMES.with_borrow_mut(|buf| {
            buf.resize(depth, MaybeUninit::new(0));
            let (n, total) = capture(method, 0, buf);
            // SAFETY: as above; the buffer is initialised anyway.
            let frames = unsafe { core::slice::from_raw_parts(buf.as_ptr().cast::<usize>(), n) };
            f(frames, total)
        })
    }
}

/// Records a new block. Called by the allocator with tracing on and a non-null block.
#[inline(always)]
pub(crate) fn on_alloc(inner: &dyn GlobalAlloc, domain: u32, addr: usize, size: usize) {
    let Some(_guard) = Guard::enter() else {
        return;
    };
    with_stack(|frames, total| record(inner, domain, addr, size, frames, total));
}

/// Forgets a block. Called by the allocator with tracing on.
#[inline(always)]
pub(crate) fn on_free(domain: u32, addr: usize) {
    let Some(_guard) = Guard::enter() else {
        return;
    };
    forget(domain, addr);
}

/// Reallocates through `inner` and moves the trace. The old block's shard stays locked across
/// the inner call: once `inner` frees the old address another thread may be handed it, and its
/// new trace must not be the one this realloc removes.
///
/// # Safety
/// The caller's `GlobalAlloc::realloc` contract for `ptr`, `layout` and `new_size`.
#[inline(always)]
pub(crate) unsafe fn realloc(
    inner: &dyn GlobalAlloc,
    ptr: *mut u8,
    layout: Layout,
    new_size: usize,
) -> *mut u8 {
    let Some(_guard) = Guard::enter() else {
        // SAFETY: forwarded unchanged under the caller's contract.
        return unsafe { inner.realloc(ptr, layout, new_size) };
    };
    with_stack(|frames, total| {
        let old = ptr as usize;
        let mut old_shard = shard_of(old).lock();
        // SAFETY: forwarded unchanged under the caller's contract.
        let new = unsafe { inner.realloc(ptr, layout, new_size) };
        if new.is_null() {
            return new; // the old block is untouched, and so is its trace
        }
        if new as usize == old {
            record_locked(inner, &mut old_shard, 0, old, new_size, frames, total);
        } else {
            forget_locked(&mut old_shard, 0, old);
            drop(old_shard);
            record(inner, 0, new as usize, new_size, frames, total);
        }
        new
    })
}

fn record(
    inner: &dyn GlobalAlloc,
    domain: u32,
    addr: usize,
    size: usize,
    frames: &[usize],
    total: u16,
) {
    record_locked(
        inner,
        &mut shard_of(addr).lock(),
        domain,
        addr,
        size,
        frames,
        total,
    );
}

fn record_locked(
    inner: &dyn GlobalAlloc,
    shard: &mut Shard,
    domain: u32,
    addr: usize,
    size: usize,
    frames: &[usize],
    total: u16,
) {
    // Re-checked under the lock: `stop()` switches off before clearing each shard, so a
    // record that raced with it does not leave a trace behind.
    if !is_on() {
        return;
    }
    let grow = shard.grow;
    let Some(tracer) = shard.tracer.as_mut() else {
        return;
    };
    if grow && tracer.table_is_full() {
        grow_table(inner, tracer);
    }
    let before = tracer.counters().current;
    tracer.record_alloc(domain, addr, size, frames, total);
    let after = tracer.counters().current;
    account(before, after);
}

fn forget(domain: u32, addr: usize) -> bool {
    forget_locked(&mut shard_of(addr).lock(), domain, addr)
}

fn forget_locked(shard: &mut Shard, domain: u32, addr: usize) -> bool {
    let Some(tracer) = shard.tracer.as_mut() else {
        return false;
    };
    match tracer.record_free(domain, addr) {
        Some(size) => {
            CURRENT.fetch_sub(size, Relaxed);
            true
        }
        None => false,
    }
}

#[inline(always)]
fn account(before: u64, after: u64) {
    if after >= before {
        let now = CURRENT.fetch_add(after - before, Relaxed) + (after - before);
        if now > PEAK.load(Relaxed) {
            PEAK.fetch_max(now, Relaxed);
        }
    } else {
        CURRENT.fetch_sub(before - after, Relaxed);
    }
}

/// Doubles a shard's table. On failure the table stays as it was and the block that triggered
/// the growth is counted as untraced by the core.
#[cold]
fn grow_table(inner: &dyn GlobalAlloc, tracer: &mut Tracer<'static>) {
    let len = tracer.table().slot_count().max(1) * 2;
    let Some(bigger) = allocate_array::<Slot>(inner, len) else {
        return;
    };
    match tracer.migrate_table(bigger) {
        Ok(old) => free_array(inner, old),
        Err(unused) => free_array(inner, unused),
    }
}

/// Python's `stop()`: switches tracing off and forgets every trace. The tables' storage is kept
/// for the next `start()`.
pub(crate) fn stop() {
    STATE.store(OFF, SeqCst);
    clear();
}

/// Python's `clear_traces()`.
pub(crate) fn clear() {
    let _guard = Guard::enter();
    for shard in &SHARD_TABLE {
        if let Some(tracer) = shard.lock().tracer.as_mut() {
            tracer.clear();
        }
    }
    CURRENT.store(0, Relaxed);
    PEAK.store(0, Relaxed);
}

/// Whether tracing is on (Python's `is_tracing()`).
pub(crate) fn is_tracing() -> bool {
    is_on()
}

/// The traceback limit (Python's `get_traceback_limit()`).
pub(crate) fn traceback_limit() -> usize {
    NFRAME.load(Relaxed)
}

/// `(current, peak)` traced bytes.
pub(crate) fn traced_memory() -> (u64, u64) {
    let current = CURRENT.load(Relaxed);
    (current, PEAK.load(Relaxed).max(current))
}

/// Python's `reset_peak()`.
pub(crate) fn reset_peak() {
    PEAK.store(CURRENT.load(Relaxed), Relaxed);
}

/// Bytes the tracer holds (Python's `get_tracemalloc_memory()`).
pub(crate) fn tracer_memory() -> u64 {
    SHARD_TABLE
        .iter()
        .filter_map(|s| s.lock().tracer.as_ref().map(|t| t.memory_bytes() as u64))
        .sum()
}

/// Copies every shard into a raw snapshot, holding all shard locks at once so the copy is
/// consistent. The caller holds the guard, so the copy's own allocations are not traced.
pub(crate) fn copy_raw() -> RawSnapshot {
    let limit = traceback_limit().min(u16::MAX as usize) as u16;
    let mut raw = RawSnapshot::new(limit);
    let locked: [spin::MutexGuard<'_, Shard>; SHARDS] =
        core::array::from_fn(|i| SHARD_TABLE[i].lock());
    for shard in &locked {
        if let Some(tracer) = shard.tracer.as_ref() {
            raw.add(tracer);
        }
    }
    let mut counters = Counters::default();
    for shard in &locked {
        if let Some(tracer) = shard.tracer.as_ref() {
            counters.merge(tracer.counters());
        }
    }
    drop(locked);
    let (current, peak) = traced_memory();
    counters.current = current;
    counters.peak = peak;
    raw.set_counters(counters);
    raw
}

/// The trace of one block: size and raw frames.
pub(crate) fn trace_of(domain: u32, addr: usize) -> Option<(u64, Vec<usize>, u16)> {
    let shard = shard_of(addr).lock();
    let (size, tb) = shard.tracer.as_ref()?.trace(domain, addr)?;
    let frames = tb.frames.to_vec();
    Some((size, frames, tb.total_nframe))
}

/// Records memory that did not come from the global allocator (`track`).
pub(crate) fn track(domain: u32, addr: usize, size: usize) -> bool {
    if !is_on() {
        return false;
    }
    let Some(_guard) = Guard::enter() else {
        return false;
    };
    // No inner allocator at hand: the table cannot grow here, a full one counts as untraced.
    with_stack(|frames, total| {
        let mut shard = shard_of(addr).lock();
        let Some(tracer) = shard.tracer.as_mut() else {
            return false;
        };
        let before = tracer.counters().current;
        let recorded = tracer.record_alloc(domain, addr, size, frames, total);
        account(before, tracer.counters().current);
        recorded == tracemalloc_core::Recorded::Traced
    })
}

/// Forgets memory recorded by `track`.
pub(crate) fn untrack(domain: u32, addr: usize) -> bool {
    let Some(_guard) = Guard::enter() else {
        return false;
    };
    forget(domain, addr)
}
