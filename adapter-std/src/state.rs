//! The process-wide tracer behind the allocator and the API.
//!
//! Full tracing records default-domain blocks in shadow memory ([`crate::shadow`]), without a
//! lock; with `Storage::Table`, while sampling, and for blocks that fit no cell, they go to
//! trace tables. The core's [`Tracer`] is `&mut self`; here its trace table is sharded so
//! that threads allocating at once rarely meet: a block's 1 MiB chunk of address space picks one of
//! [`SHARDS`] tracers, each behind its own spin lock (a lock inside an allocator must never
//! allocate, and the critical sections are tens of nanoseconds). Call stacks are interned once
//! for the whole process, in the [`crate::interner`], and the shards record the ids
//! it hands out. Blocks of other domains (`track`) live in one more tracer with its own store.
//! The traced size and peak are kept by [`crate::accounting`].
//!
//! Tracing memory comes from the inner allocator directly, except shadow memory
//! ([`crate::shadow`]), which the tracer maps itself. `start()` only arms the tracer; the
//! next allocation through the wrapper, which has the inner allocator at hand, obtains the
//! storage and switches tracing on. `start()` makes that allocation itself, so when it returns
//! tracing is on, or the wrapper is not the global allocator and it says so.

use core::alloc::{GlobalAlloc, Layout};
use core::mem::MaybeUninit;
use core::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering::*};

use tracemalloc_core::table::{Placement, Slot};
use tracemalloc_core::traceback::TracebackStorage;
use tracemalloc_core::{RawSnapshot, Recorded, TracebackId, Tracer, TracerStorage, DEFAULT_DOMAIN};

use crate::accounting;
use crate::capture::{capture, Capture, Stack};
use crate::deferred;
use crate::guard::Guard;
use crate::headroom::{self, Resource};
use crate::interner;
use crate::sampler;
use crate::shadow;
use crate::storage::{
    self, allocate_table, allocate_tracebacks, allocate_uninit, free_array, free_table,
    free_tracer, Raw, RawTracer, TablePages,
};
use crate::{Config, Storage};

/// Number of trace-table shards (a power of two).
pub(crate) const SHARDS: usize = 16;

/// Frames captured into a buffer on the stack; deeper limits borrow one from the inner
/// allocator for each capture.
const STACK_FRAMES: usize = 96;

const OFF: u8 = 0;
const ON: u8 = 1;
const ARMED: u8 = 2;
const ENV_PENDING: u8 = 3;
/// On, sampling: the allocator tests the countdown and the free filter inline. Every value
/// from here up means sampling: the value names the configuration (`sampler::state`), so that
/// a thread whose countdown was drawn for another one draws again.
pub(crate) const SAMPLING: u8 = 4;

/// The tracing state: one relaxed load of it is all the allocator pays while tracing is off.
static STATE: OwnLine<AtomicU8> = OwnLine(AtomicU8::new(ENV_PENDING));
/// Frames to capture: the traceback limit plus the allowance for hidden plumbing frames.
static CAPTURE_DEPTH: AtomicUsize = AtomicUsize::new(1);
/// The traceback limit users asked for (frames kept after hiding plumbing).
static NFRAME: AtomicUsize = AtomicUsize::new(1);
/// 0: frame pointers, 1: unwinder.
static METHOD: AtomicU8 = AtomicU8::new(0);

/// Keeps what it holds on cache lines of its own. The current size and peak change on every
/// traced allocation, from every thread; sharing a line with the state flag that every
/// allocation reads, or with a shard lock, would make each core miss on the other's writes.
#[repr(align(128))]
pub(crate) struct OwnLine<T>(pub(crate) T);

impl<T> core::ops::Deref for OwnLine<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// Whether the default domain's traces go to shadow memory ([`Storage::Shadow`]); the shard
/// tables then hold only the blocks that do not fit a cell. Set while tracing is off.
static SHADOWED: AtomicBool = AtomicBool::new(false);
/// Traces of blocks under [`shadow::LARGE`] in the shard tables while shadowed: a free of such
/// a block that has no cell looks in the tables only when this is not 0 (changed under the
/// shard locks). Larger blocks are always in the tables, and their frees go there by their
/// size: counted here, they would keep this above 0 in nearly every program.
static SPILLED: AtomicUsize = AtomicUsize::new(0);

/// Whether a trace of `size` bytes in the tables counts in [`SPILLED`].
#[inline(always)]
fn spills(size: u64) -> bool {
    size < shadow::LARGE as u64
}

/// Whether a default-domain block of `size` bytes (`None`: not known) whose cell holds no
/// trace of it, while shadowed, may have one in the tables: a large block always, a smaller one
/// while the tables hold [`SPILLED`] traces.
#[inline(always)]
fn may_be_spilled(size: Option<usize>) -> bool {
    size.is_none_or(|size| size >= shadow::LARGE) || SPILLED.load(Relaxed) != 0
}

#[inline(always)]
fn is_shadowed() -> bool {
    // `STATE` was read (relaxed) before this on every path here; the fence makes the value
    // stored before it was switched on visible with it (free on x86-64).
    core::sync::atomic::fence(Acquire);
    SHADOWED.load(Relaxed)
}

/// Set when arming failed because the inner allocator had no memory for the tables.
static ARM_FAILED: AtomicBool = AtomicBool::new(false);
static CONFIG: spin::Mutex<Option<Config>> = spin::Mutex::new(None);
static ARMING: spin::Mutex<()> = spin::Mutex::new(());

/// One shard, on cache lines of its own: threads working in different shards must not slow each
/// other through a shared line.
#[repr(align(128))]
struct Shard {
    tracer: Option<Tracer<'static>>,
    grow: bool,
    /// How the table's pages were taken (its free repeats it).
    pages: TablePages,
}

#[allow(clippy::declare_interior_mutable_const)]
const EMPTY_SHARD: spin::Mutex<Shard> = spin::Mutex::new(Shard {
    tracer: None,
    grow: true,
    pages: TablePages::Small,
});
static SHARD_TABLE: [spin::Mutex<Shard>; SHARDS] = [EMPTY_SHARD; SHARDS];

/// Runs `f` under a lock that `clear()` and arming hold while they start a new generation (a
/// shard's).
pub(crate) fn with_generation_fixed<R>(f: impl FnOnce() -> R) -> R {
    // Inside the tracer while the lock is held: a signal handler's free on this thread must
    // pass untraced rather than wait for the lock forever.
    let _guard = Guard::enter();
    let _locked = SHARD_TABLE[0].lock();
    f()
}

/// Marks the sampling filter's page of `addr` for the free of `start()`'s probe block
/// (`deferred::note_global`), under the shard lock its traces' marks take; returns the
/// generation to give [`unmark_probe`]. `None`, marking nothing, inside the tracer (a signal
/// handler's `start()`), where that lock may be this thread's already.
pub(crate) fn mark_probe(addr: usize) -> Option<u32> {
    let _guard = Guard::enter()?;
    let _locked = shard_of(addr).lock();
    sampler::mark(addr);
    Some(interner::generation())
}

/// Takes [`mark_probe`]'s mark back, unless a `clear()` zeroed every mark since (it starts a
/// new generation under the same locks): taken after that, it would be a mark of a block
/// traced since, whose free would then skip the tracer and leave its trace for good.
pub(crate) fn unmark_probe(addr: usize, generation: u32) {
    let Some(_guard) = Guard::enter() else {
        return; // a mark left too many only sends some unsampled frees to the tables
    };
    let _locked = shard_of(addr).lock();
    if interner::generation() == generation {
        sampler::unmark(addr);
    }
}

/// Blocks of domains other than the default one: rare (`track`), so one fixed-size tracer.
static FOREIGN: spin::Mutex<Option<Tracer<'static>>> = spin::Mutex::new(None);
const FOREIGN_SLOTS: usize = 4096;
const FOREIGN_TRACEBACKS: usize = 1024;

/// Where each shard's table lies, readable without its lock, so that the slot a block will use
/// can be prefetched while the stack is walked (or the inner allocator frees): a table of a
/// million traces misses the cache on most accesses. Stale values only prefetch the wrong line.
struct TableHint {
    base: AtomicUsize,
    log2_slots: AtomicU8,
    /// The table's [`Placement`], as [`Placement::to_byte`] gives it.
    placement: AtomicU8,
}

#[allow(clippy::declare_interior_mutable_const)]
const NO_HINT: TableHint = TableHint {
    base: AtomicUsize::new(0),
    log2_slots: AtomicU8::new(0),
    placement: AtomicU8::new(0),
};
static HINTS: [TableHint; SHARDS] = [NO_HINT; SHARDS];

fn publish_hint(shard: usize, tracer: &Tracer<'_>) {
    let hint = &HINTS[shard];
    hint.base
        .store(tracer.table().slots_ptr() as usize, Relaxed);
    hint.log2_slots
        .store(tracer.table().slot_count().trailing_zeros() as u8, Relaxed);
    hint.placement
        .store(tracer.table().placement().to_byte(), Relaxed);
}

/// Asks the CPU to fetch the table slot of `addr` (in `shard`) into the cache.
#[inline(always)]
fn prefetch_slot(addr: usize, shard: usize) {
    let hint = &HINTS[shard];
    let base = hint.base.load(Relaxed);
    if base == 0 {
        return;
    }
    let placement = Placement::from_byte(hint.placement.load(Relaxed));
    let log2_slots = u32::from(hint.log2_slots.load(Relaxed));
    let home = tracemalloc_core::table::home_index(addr, log2_slots, placement);
    prefetch(base.wrapping_add(home.wrapping_mul(core::mem::size_of::<Slot>())));
}

/// Asks the CPU to fetch the cache line holding `line` (any address: a prefetch never faults).
#[inline(always)]
pub(crate) fn prefetch(line: usize) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint: it never faults and has no architectural effect, whatever
    // the address.
    unsafe {
        core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(line as *const i8);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = line;
}

#[inline(always)]
fn shard_index(addr: usize) -> usize {
    // By 1 MiB chunk, fully mixed. Each shard then receives whole runs of consecutive regions,
    // which the table's Fibonacci hashing spreads evenly over its slots (a shard fed a sparse
    // subset of pages clustered: mean probe length 30), and neighbouring blocks share a shard,
    // so the table's locality survives sharding. Threads allocate from their own arenas, so
    // they still spread over shards.
    let mut chunk = (addr >> 20) as u64;
    chunk ^= chunk >> 33;
    chunk = chunk.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
    chunk ^= chunk >> 33;
    (chunk >> (64 - SHARDS.trailing_zeros())) as usize
}

/// Every shard locked, in index order: the one order every whole-tracer operation (snapshot,
/// clear, fork) takes them in, so they cannot deadlock against each other.
fn lock_all_shards() -> [spin::MutexGuard<'static, Shard>; SHARDS] {
    core::array::from_fn(|i| SHARD_TABLE[i].lock())
}

#[inline(always)]
fn shard_of(addr: usize) -> &'static spin::Mutex<Shard> {
    &SHARD_TABLE[shard_index(addr)]
}

/// Whether an allocation of `size` bytes needs nothing from the tracer: tracing is off, or
/// sampling and these bytes reach no sample point (then they are counted off the countdown).
#[inline(always)]
pub(crate) fn passes_alloc(size: usize) -> bool {
    match STATE.load(Relaxed) {
        OFF => true,
        state if is_sampling_state(state) => sampler::skip(size, state),
        _ => false,
    }
}

/// Whether freeing the block at `addr` needs nothing from the tracer: tracing is off, or
/// sampling and the block is certainly not sampled.
#[inline(always)]
pub(crate) fn passes_free(addr: usize) -> bool {
    match STATE.load(Relaxed) {
        OFF => true,
        state if is_sampling_state(state) => !sampler::maybe_sampled(addr),
        _ => false,
    }
}

/// Whether reallocating the block at `addr` to `new_size` bytes needs nothing from the
/// tracer: neither the old block nor the new one is traced.
#[inline(always)]
pub(crate) fn passes_realloc(addr: usize, new_size: usize) -> bool {
    match STATE.load(Relaxed) {
        OFF => true,
        // The filter first: `skip` consumes the countdown only when the tracer is skipped.
        state if is_sampling_state(state) => {
            !sampler::maybe_sampled(addr) && sampler::skip(new_size, state)
        }
        _ => false,
    }
}

/// Whether tracing waits for its first allocation through the wrapper.
pub(crate) fn is_armed() -> bool {
    STATE.load(Acquire) == ARMED
}

/// The storage full tracing records into, while tracing is on (`Auto` resolved).
pub(crate) fn storage_in_use() -> Option<Storage> {
    is_on().then(|| {
        if is_shadowed() {
            Storage::Shadow
        } else {
            Storage::Table
        }
    })
}

/// The capture method of the session, `Capture::Auto` resolved when it was armed, while tracing
/// is on.
pub(crate) fn capture_in_use() -> Option<Capture> {
    is_on().then(capture_method)
}

/// The capture method the tracer was last armed with (`METHOD` decoded).
#[inline(always)]
fn capture_method() -> Capture {
    if METHOD.load(Relaxed) == 0 {
        Capture::FramePointers
    } else {
        Capture::Unwinder
    }
}

/// Whether tracing is on.
#[inline(always)]
pub(crate) fn is_on() -> bool {
    is_on_state(STATE.load(Relaxed))
}

#[inline(always)]
fn is_on_state(state: u8) -> bool {
    state == ON || is_sampling_state(state)
}

/// Whether `state` is one of the sampling states (each names a configuration).
#[inline(always)]
fn is_sampling_state(state: u8) -> bool {
    state >= SAMPLING
}

/// Whether the allocator should record this allocation; the first allocation and arming take
/// the slow path here.
#[inline(always)]
pub(crate) fn should_record(inner: &dyn GlobalAlloc) -> bool {
    match STATE.load(Relaxed) {
        OFF => false,
        state if is_on_state(state) => true,
        _ => on_state_change(inner),
    }
}

/// Called by the allocator when tracing is not on: handles the first allocation (which reads
/// `RUST_TRACEMALLOC`) and arming. Returns whether tracing is now on.
#[cold]
#[inline(never)]
fn on_state_change(inner: &dyn GlobalAlloc) -> bool {
    match STATE.load(Acquire) {
        ENV_PENDING => {
            let Some(_guard) = Guard::enter() else {
                return false;
            };
            let config = env_config();
            let _ = STATE.compare_exchange(ENV_PENDING, OFF, AcqRel, Acquire);
            if let Some(config) = config {
                // Tracing is off here: the request is always taken.
                let _ = request_start(config);
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
        state => is_on_state(state),
    }
}

/// `RUST_TRACEMALLOC=N` as `PYTHONTRACEMALLOC=N`: start with N frames (with a warning on Unix,
/// 1 when not a number and 65535 when more; 0 and empty leave tracing off).
/// `RUST_TRACEMALLOC_SAMPLE=BYTES` beside it samples one block per BYTES on average (0: every
/// block), for always-on tracing without a code change; `RUST_TRACEMALLOC_STORAGE=table`
/// (or `shadow`, `auto`) picks the storage.
fn env_config() -> Option<Config> {
    let value = read_env("RUST_TRACEMALLOC")?;
    let value = value.trim();
    if value.is_empty() {
        return None;
    }
    // The warnings name the limit.
    const _: () = assert!(tracemalloc_core::MAX_NFRAME == 65535);
    // Digits too many for a `usize` are more than 65535 too.
    let parsed = value.parse::<usize>().or_else(|e| match e.kind() {
        core::num::IntErrorKind::PosOverflow => Ok(usize::MAX),
        _ => Err(e),
    });
    let nframe = match parsed {
        Ok(0) => return None, // "0", "00": off
        Ok(n) if n <= tracemalloc_core::MAX_NFRAME => n,
        Ok(_) => {
            warn(b"tracemalloc: RUST_TRACEMALLOC is more than 65535 frames; using 65535\n");
            tracemalloc_core::MAX_NFRAME
        }
        Err(_) => {
            warn(b"tracemalloc: RUST_TRACEMALLOC is not a number of frames; using 1\n");
            1
        }
    };
    let sample = read_env("RUST_TRACEMALLOC_SAMPLE");
    let sample_interval = match sample.as_deref().map(str::trim) {
        None | Some("") => 0,
        Some(bytes) => bytes.parse::<u64>().unwrap_or_else(|_| {
            warn(b"tracemalloc: RUST_TRACEMALLOC_SAMPLE is not a number of bytes; using the default interval\n");
            crate::DEFAULT_SAMPLE_INTERVAL
        }),
    };
    let storage = match read_env("RUST_TRACEMALLOC_STORAGE")
        .as_deref()
        .map(str::trim)
    {
        None | Some("") | Some("auto") => Storage::Auto,
        Some("table") => Storage::Table,
        Some("shadow") => Storage::Shadow,
        Some(_) => {
            warn(
                b"tracemalloc: RUST_TRACEMALLOC_STORAGE is not auto, table or shadow; using auto\n",
            );
            Storage::Auto
        }
    };
    Some(Config {
        nframe,
        sample_interval,
        storage,
        ..Config::default()
    })
}

/// Writes a line to stderr without allocating or taking std's stderr lock (this runs inside
/// the first allocation).
fn warn(line: &[u8]) {
    #[cfg(unix)]
    // SAFETY: writes `line.len()` bytes from a valid buffer to file descriptor 2; a failed or
    // short write only loses the warning.
    unsafe {
        libc::write(2, line.as_ptr().cast(), line.len());
    }
    #[cfg(not(unix))]
    let _ = line;
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

/// Records the configuration and arms the tracer, so that the next allocation through the
/// wrapper switches tracing on; returns whether it did. While tracing it changes nothing, as
/// Python's `start()` does not (CPython returns at "hook already installed").
pub(crate) fn request_start(config: Config) -> bool {
    // An allocation first: an allocator that registers its own fork handlers on its first use
    // (jemalloc does) then registers them before the tracer's, whose `child` handler frees
    // other threads' queued blocks through it and so must run after the allocator's own (a
    // cdylib's first allocation may be this one). Untraced unless tracing is on already.
    drop(std::hint::black_box(Box::new(0u8)));
    // Before `CONFIG` is taken below: a fork while it is held must find the handlers that take
    // it (arming registers them too, for tracing started by `RUST_TRACEMALLOC`).
    #[cfg(unix)]
    fork::register();
    if is_on() {
        return false;
    }
    CAPTURE_DEPTH.store(capture_depth(&config), Relaxed);
    NFRAME.store(config.nframe, Relaxed);
    METHOD.store(
        u8::from(config.capture.resolved() == Capture::Unwinder),
        Relaxed,
    );
    ARM_FAILED.store(false, Relaxed);
    let sample_interval = config.sample_interval;
    *CONFIG.lock() = Some(config);
    if !is_on_state(STATE.load(Acquire)) {
        // Only while off: the filter must keep marking the blocks already traced.
        sampler::configure(sample_interval);
        STATE.store(ARMED, Release);
    }
    true
}

/// Whether the last arming failed for lack of memory.
pub(crate) fn arm_failed() -> bool {
    ARM_FAILED.load(Relaxed)
}

/// Gives every shard its storage from `inner`, then switches tracing on.
fn arm(inner: &dyn GlobalAlloc) -> bool {
    // Before `ARMING` is taken: a fork while it is held must find the handlers that take it.
    #[cfg(unix)]
    fork::register();
    let _arming = ARMING.lock();
    if STATE.load(Acquire) != ARMED {
        return is_on_state(STATE.load(Acquire));
    }
    let Some(config) = CONFIG.lock().clone() else {
        return false;
    };
    // Storage is all or nothing (a failed arming gives back what it took): with none, this
    // arming allocates it all from `inner`; with some, it only clears it.
    if SHARD_TABLE[0].lock().tracer.is_none() {
        storage::set_source(inner);
    }
    // The storage is chosen before `interner::reset` starts the new generation: a thread that
    // reads the new generation (acquire) then sees the storage of its session. Cells left by
    // writers racing with the last stop are given back; their generation is an old one.
    let shadowed = shadow_chosen(&config);
    // How closely `inner` packs small blocks, measured once for both uses: the cells' planes
    // and the tables' placement.
    let placement = Placement::for_spacing(shadow::least_spacing(inner));
    if shadowed {
        shadow::choose_planes(placement);
    }
    SHADOWED.store(shadowed, Relaxed);
    shadow::clear();
    let ready = allocate_shards(inner, &config, placement)
        && allocate_foreign(inner, capture_depth(&config))
        // The new generation and the zeroed figures together, under the generation lock: a
        // change published under the old generation lands before both, or is dropped.
        && with_generation_fixed(|| {
            let reset = interner::reset(
                inner,
                config.initial_tracebacks.max(16),
                capture_depth(&config).clamp(4, STACK_FRAMES),
                config.max_traceback_memory,
            );
            if reset {
                accounting::reset();
            }
            reset
        });
    if !ready {
        ARM_FAILED.store(true, Relaxed);
        STATE.store(OFF, Release);
        if storage::is_source(inner) {
            free_storage(inner); // all or nothing: the next arming starts afresh
        }
        return false;
    }
    accounting::arm();
    let on = if sampler::interval() == 0 {
        ON
    } else {
        sampler::state()
    };
    // Not over a `stop()` that came while this arming allocated: that stop stays.
    match STATE.compare_exchange(ARMED, on, AcqRel, Acquire) {
        Ok(_) => true,
        Err(state) => is_on_state(state),
    }
}

/// Keeps `fork()` from copying a lock that another thread holds into the child, where nobody
/// would ever release it and the child's first allocation would spin forever: the forking
/// thread takes every tracer lock before the fork and releases them after, on both sides.
#[cfg(unix)]
mod fork {
    use core::cell::Cell;

    use super::{
        deferred, interner, lock_all_shards, shadow, AtomicBool, Guard, Relaxed, ARMING, CONFIG,
        FOREIGN, SHARD_TABLE,
    };

    static REGISTERED: AtomicBool = AtomicBool::new(false);

    pub(super) fn register() {
        if !REGISTERED.swap(true, Relaxed) {
            // SAFETY: the handlers only take and release locks (the tracer's spin locks and the
            // symbolizer's mutex): they never allocate and never unwind, as fork handlers must
            // not.
            unsafe { libc::pthread_atfork(Some(prepare), Some(parent), Some(child)) };
        }
    }

    /// The symbolizer's lock while a fork is in progress.
    static RESOLVER_HELD: spin::Mutex<Option<crate::symbolize::ForkHold>> = spin::Mutex::new(None);
    thread_local! {
        /// Whether `prepare` entered this thread's guard, which it keeps while the thread holds
        /// the tracer's locks: a signal handler's free meanwhile passes untraced rather than
        /// wait for a lock its own thread holds. Per thread: two threads may fork at once.
        static GUARD_HELD: Cell<bool> = const { Cell::new(false) };
    }

    fn leave_guard() {
        if GUARD_HELD.try_with(|held| held.replace(false)) == Ok(true) {
            Guard::leave_held();
        }
    }

    /// Takes every lock and keeps them past the fork: the symbolizer's first (a thread that
    /// symbolizes holds it while it allocates, so while it takes tracer locks), then arming's
    /// (held while the tables are set up, which takes the shard locks) and the configuration's,
    /// then the tracer's in the order snapshots take them.
    extern "C" fn prepare() {
        let _ = GUARD_HELD.try_with(|held| held.set(Guard::enter_held()));
        let resolver = crate::symbolize::hold_for_fork();
        *RESOLVER_HELD.lock() = Some(resolver);
        core::mem::forget(ARMING.lock());
        core::mem::forget(CONFIG.lock());
        core::mem::forget(lock_all_shards());
        core::mem::forget(interner::STORE.lock());
        core::mem::forget(FOREIGN.lock());
        core::mem::forget(shadow::RESERVING.lock());
    }

    extern "C" fn parent() {
        release();
        leave_guard();
    }

    extern "C" fn child() {
        release();
        deferred::adopt_queues_in_child();
        crate::plumbing::after_fork_in_child();
        leave_guard();
    }

    fn release() {
        // SAFETY: `prepare` took each of these locks on this very thread just before the fork
        // and leaked its guard, so this thread (in the parent, or its copy in the child) is
        // their holder and nothing else can hold them.
        unsafe {
            shadow::RESERVING.force_unlock();
            FOREIGN.force_unlock();
            interner::STORE.force_unlock();
            for shard in SHARD_TABLE.iter().rev() {
                shard.force_unlock();
            }
            CONFIG.force_unlock();
            ARMING.force_unlock();
        }
        drop(RESOLVER_HELD.lock().take());
    }
}

/// Whether `config` records full tracing in shadow memory. Sampling always uses the tables
/// (the shadow paths keep no sampling state), and so does `Auto` where the address space is
/// limited (`RLIMIT_AS`): each region reserves 1.22 GiB of it, which the program's own
/// mappings might then be refused; or where reserving costs more than the pages written
/// ([`shadow::reservations_are_charged`]).
fn shadow_chosen(config: &Config) -> bool {
    match config.storage {
        Storage::Table => false,
        _ if config.sample_interval != 0 => false,
        Storage::Shadow => true,
        Storage::Auto => !address_space_limited() && !shadow::reservations_are_charged(),
    }
}

fn address_space_limited() -> bool {
    headroom::soft_limit(Resource::AddressSpace) != Ok(None)
}

fn capture_depth(config: &Config) -> usize {
    config
        .nframe
        .saturating_add(config.hidden_frame_allowance)
        .min(u16::MAX as usize)
}

/// Creates (first start) or clears (later starts) the shard tracers.
/// New tables are placed by `placement`, which they keep for their lifetime (through growth
/// and later starts).
fn allocate_shards(inner: &dyn GlobalAlloc, config: &Config, placement: Placement) -> bool {
    for (i, shard) in SHARD_TABLE.iter().enumerate() {
        let mut shard = shard.lock();
        shard.grow = config.grow;
        if let Some(tracer) = shard.tracer.as_mut() {
            tracer.clear();
            continue;
        }
        // An absurd size is a request no allocator can meet: the start fails for memory.
        let slots = config.initial_slots_per_shard.checked_next_power_of_two();
        let Some((slots, pages)) = slots.and_then(|len| allocate_table(inner, len)) else {
            return false;
        };
        shard.pages = pages;
        // The shards' own traceback stores stay empty: they record ids of the shared store.
        let storage = TracerStorage {
            slots,
            tracebacks: TracebackStorage {
                entries: &mut [],
                index: &mut [],
                frames: &mut [],
            },
        };
        let tracer = Tracer::with_placement(storage, placement);
        publish_hint(i, &tracer);
        shard.tracer = Some(tracer);
    }
    // Zeroed once every table is empty: a free that took a last trace of the previous session
    // out of a shard (a queued one, flushed late) did so under that shard's lock, before the
    // loop cleared it, so its decrement cannot come after this and wrap the count.
    SPILLED.store(0, Relaxed);
    true
}

/// Creates (first start) or clears the tracer of the other domains.
fn allocate_foreign(inner: &dyn GlobalAlloc, depth: usize) -> bool {
    let mut foreign = FOREIGN.lock();
    if let Some(tracer) = foreign.as_mut() {
        tracer.clear();
        return true;
    }
    let frames = FOREIGN_TRACEBACKS * depth.clamp(4, STACK_FRAMES);
    // Small enough for plain pages, which `free_storage` assumes.
    const _: () = assert!(FOREIGN_SLOTS * size_of::<Slot>() < 1 << 20);
    let Some((slots, pages)) = allocate_table(inner, FOREIGN_SLOTS) else {
        return false;
    };
    let Some(tracebacks) = allocate_tracebacks(inner, FOREIGN_TRACEBACKS, frames) else {
        free_table(inner, Raw::from(slots), pages);
        return false;
    };
    *foreign = Some(Tracer::new(TracerStorage { slots, tracebacks }));
    true
}

/// Captures the caller's stack and runs `f` with it.
#[inline(always)]
fn with_stack<R>(inner: &dyn GlobalAlloc, f: impl FnOnce(&Stack<'_>) -> R) -> R {
    let depth = CAPTURE_DEPTH.load(Relaxed);
    let nframe = NFRAME.load(Relaxed);
    let method = capture_method();
    // Limits beyond the stack buffer borrow a buffer from `inner` for this capture (a
    // thread-local buffer would need a destructor, and registering one may allocate through
    // the global allocator, which std forbids from inside it). Without memory, the stack
    // buffer's frames are kept.
    let mut stack = [MaybeUninit::<usize>::uninit(); STACK_FRAMES];
    let mut deep = if depth > STACK_FRAMES {
        allocate_uninit::<usize>(inner, depth)
    } else {
        None
    };
    let buf = match deep.as_deref_mut() {
        Some(buf) => buf,
        None => &mut stack[..depth.min(STACK_FRAMES)],
    };
    let captured = capture(method, buf, nframe);
    // SAFETY: `capture` initialised the first `n` elements, and `MaybeUninit<usize>` has the
    // layout of `usize`.
    let frames = unsafe { core::slice::from_raw_parts(buf.as_ptr().cast::<usize>(), captured.n) };
    let result = f(&Stack {
        frames,
        total: captured.total as u16, // saturated by `capture`
        hash: captured.hash,
    });
    if let Some(buf) = deep {
        free_array(inner, Raw::from(buf));
    }
    result
}

/// Records a new block. Called by the allocator with tracing on and a non-null block.
#[inline(always)]
pub(crate) fn on_alloc(inner: &dyn GlobalAlloc, addr: usize, size: usize) {
    if !sampler::take(size) {
        return;
    }
    let Some(_guard) = Guard::enter() else {
        return;
    };
    if !is_shadowed() || size >= shadow::LARGE {
        prefetch_slot(addr, shard_index(addr));
    }
    with_stack(inner, |stack| record(inner, addr, size, stack));
}

/// Forgets a block's trace, then frees it through `inner`: in this order, no other thread can
/// be handed the address (and record a new trace at it) before the old trace is gone.
///
/// # Safety
/// The caller's `GlobalAlloc::dealloc` contract for `ptr` and `layout`.
#[inline(always)]
pub(crate) unsafe fn dealloc(inner: &dyn GlobalAlloc, ptr: *mut u8, layout: Layout) {
    let guard = if sampler::maybe_traced(ptr as usize) {
        Guard::enter()
    } else {
        None // sampling, and this block was certainly not sampled
    };
    let Some(_guard) = guard else {
        // SAFETY: forwarded unchanged under the caller's contract.
        return unsafe { inner.dealloc(ptr, layout) };
    };
    let addr = ptr as usize;
    if is_shadowed() {
        deferred::notice_probe(inner);
        forget_shadowed(addr, Some(layout.size()));
    } else {
        if deferred::queue(inner, addr, layout) {
            return;
        }
        forget_locked(&mut shard_of(addr).lock(), addr);
    }
    drop(_guard);
    // SAFETY: forwarded unchanged under the caller's contract.
    unsafe { inner.dealloc(ptr, layout) };
}

/// Reallocates through `inner` and moves the trace. The old block's trace leaves before the
/// inner call (once `inner` frees the old address another thread may be handed it, and its new
/// trace must not be the one this realloc removes) and comes back if that fails. No lock is
/// held across the call: a copy of megabytes would keep every thread that needs the shard
/// spinning, and a snapshot with them.
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
    let record_new = sampler::take(new_size);
    let guard = if record_new || sampler::maybe_traced(ptr as usize) {
        Guard::enter()
    } else {
        None // sampling: neither the old block nor the new one is traced
    };
    let Some(_guard) = guard else {
        // SAFETY: forwarded unchanged under the caller's contract.
        return unsafe { inner.realloc(ptr, layout, new_size) };
    };
    if is_shadowed() {
        if !record_new {
            // SAFETY: the caller's contract, forwarded.
            return unsafe { realloc_shadowed(inner, ptr, layout, new_size, None) };
        }
        return with_stack(inner, |stack| {
            let new = intern_stack(inner, stack);
            // SAFETY: as above.
            unsafe { realloc_shadowed(inner, ptr, layout, new_size, Some(new)) }
        });
    }
    let old = ptr as usize;
    if !record_new {
        let taken = take_from_table(old);
        // SAFETY: forwarded unchanged under the caller's contract.
        let new = unsafe { inner.realloc(ptr, layout, new_size) };
        if new.is_null() {
            put_back(inner, old, taken); // the old block is untouched
        }
        return new;
    }
    with_stack(inner, |stack| {
        let (id, generation) = intern_stack(inner, stack);
        let taken = take_from_table(old);
        // SAFETY: forwarded unchanged under the caller's contract.
        let new = unsafe { inner.realloc(ptr, layout, new_size) };
        if new.is_null() {
            put_back(inner, old, taken); // the old block is untouched
        } else {
            // Past the load limit only for the trace that left the table: a block that had
            // none (refused by a full table, or not sampled) is recorded as any new one.
            let restored = new as usize == old && taken.is_some();
            record_id_as(inner, new as usize, new_size, id, generation, restored);
        }
        new
    })
}

/// A default-domain trace taken out of the tables while its block is still live, with the
/// generation it belongs to.
#[derive(Clone, Copy)]
struct Taken {
    size: u64,
    id: TracebackId,
    generation: u32,
}

/// Takes the default-domain trace at `addr` out of its shard's table, if there is one.
fn take_from_table(addr: usize) -> Option<Taken> {
    let mut shard = shard_of(addr).lock();
    // Read under the lock: `clear_traces()` starts a new generation holding every shard lock,
    // so this is the generation of the table's traces.
    let generation = interner::generation();
    let (size, id) = take_locked(&mut shard, addr)?;
    Some(Taken {
        size,
        id,
        generation,
    })
}

/// Records `taken` again at `addr`, whose block stayed (a reallocation failed): in its cell or
/// its table, as [`record_id`] chooses, past the table's load limit if need be. After a
/// `clear_traces()` meanwhile, nothing: the generation no longer matches.
fn put_back(inner: &dyn GlobalAlloc, addr: usize, taken: Option<Taken>) {
    if let Some(t) = taken {
        record_id_as(inner, addr, t.size as usize, t.id, t.generation, true);
    }
}

/// [`realloc`] while shadowed, `new` the new block's id and the generation read before it was
/// interned (`None`: the new block is not sampled). The old block's trace leaves its cell
/// before the inner `realloc` can hand the address to another thread, and comes back if that
/// fails; so does a trace in the tables ([`take_from_table`]).
///
/// # Safety
/// The caller's `GlobalAlloc::realloc` contract for `ptr`, `layout` and `new_size`.
#[inline(always)]
unsafe fn realloc_shadowed(
    inner: &dyn GlobalAlloc,
    ptr: *mut u8,
    layout: Layout,
    new_size: usize,
    new: Option<(TracebackId, u32)>,
) -> *mut u8 {
    let old = ptr as usize;
    let generation = new.map_or_else(interner::generation, |(_, generation)| generation);
    let held = shadow::take(old, layout.size(), generation);
    let in_cell = held.of_generation(generation);
    let in_table = (in_cell.is_none() && may_be_spilled(Some(layout.size())))
        .then(|| take_from_table(old))
        .flatten();
    // SAFETY: forwarded unchanged under the caller's contract.
    let moved = unsafe { inner.realloc(ptr, layout, new_size) };
    if moved.is_null() {
        // The old block is untouched, and so is its trace: back in its cell, or in the tables
        // if a neighbour took the cell meanwhile (its size leaves the count and comes back;
        // after a clear, the tables refuse its old generation).
        if !shadow::put_back(old, held) {
            if let Some((size, id)) = in_cell {
                accounting::account_unlocked(0, size, generation);
                record_id_as(inner, old, size as usize, id, generation, true);
            }
        } else if interner::generation() != generation {
            void_in_cell(old, layout.size(), generation);
        }
        put_back(inner, old, in_table);
        return moved;
    }
    if let Some((size, _)) = in_cell {
        accounting::account_unlocked(0, size, generation);
    }
    if let Some((id, generation)) = new {
        let addr = moved as usize;
        // Past the load limit only for a trace that left (see `realloc`): its cell, when the
        // block grew past the cells' reach or a neighbour took the cell, or its table.
        let restored = addr == old && (in_table.is_some() || in_cell.is_some());
        record_id_as(inner, addr, new_size, id, generation, restored);
    }
    moved
}

/// Takes back a trace just written to its cell under `generation` when a `clear_traces()` came
/// since, as the tables refuse one under their lock; returns false (not recorded). A cell holds
/// 11 bits of the generation, which read as current again 2048 clears later: a trace written
/// after the clear that should have emptied it would then count in snapshots, and its free
/// would take from `traced_memory()` a size it never had. The writer marks the cell's page and
/// then reads the generation, both sequentially consistent, as the clear's taking of the page
/// marks and its new generation after it are. Read unchanged, the clear had not started its
/// new generation: either it takes the page's mark after the write and gives the page back,
/// or the mark is the writer's (or a later writer's) and the next clear empties the cell,
/// whose trace reads as stale until then. No stale trace outlives the next clear.
#[cold]
fn void_in_cell(addr: usize, size: usize, generation: u32) -> bool {
    let _ = shadow::take(addr, size, generation);
    false
}

/// Interns `stack`, with the generation read before: an id interned after a `clear_traces()`
/// that this read missed is then refused where it is recorded, never put against the wrong
/// store.
#[inline(always)]
fn intern_stack(inner: &dyn GlobalAlloc, stack: &Stack<'_>) -> (TracebackId, u32) {
    let generation = interner::generation();
    (interner::intern(inner, stack), generation)
}

/// Records a default-domain block allocated from `stack`.
#[inline(always)]
fn record(inner: &dyn GlobalAlloc, addr: usize, size: usize, stack: &Stack<'_>) -> bool {
    let (id, generation) = intern_stack(inner, stack);
    record_id(inner, addr, size, id, generation)
}

/// Records a default-domain block with its interned id: in its cell when shadowed and it
/// fits one, else in its shard's table.
#[inline(always)]
fn record_id(
    inner: &dyn GlobalAlloc,
    addr: usize,
    size: usize,
    id: TracebackId,
    generation: u32,
) -> bool {
    record_id_as(inner, addr, size, id, generation, false)
}

/// [`record_id`], and for a block that stayed live at `addr` while its trace was out of its
/// table (`restored`: a reallocation in place or one that failed) past the table's load limit
/// if other blocks took the table to it meanwhile ([`Tracer::restore`]): only a trace that
/// left comes back, so the table passes its limit by at most the reallocations racing with it.
#[inline(always)]
fn record_id_as(
    inner: &dyn GlobalAlloc,
    addr: usize,
    size: usize,
    id: TracebackId,
    generation: u32,
    restored: bool,
) -> bool {
    if is_shadowed() && shadow::fits(addr, size) {
        if !is_on() {
            return false; // stopped meanwhile (the table path checks under its lock)
        }
        if let Ok(replaced) = shadow::record(addr, size as u64, generation, id) {
            if interner::generation() != generation {
                return void_in_cell(addr, size, generation);
            }
            // Traces of this generation at the address are blocks whose frees the tracer
            // missed (a signal handler's free inside the tracer): replaced, as the table
            // replaces one.
            accounting::account_unlocked(size as u64, replaced, generation);
            return true;
        }
    }
    if is_shadowed() && size >= shadow::LARGE {
        // The same for a smaller block's trace in this address's cell, which the tables
        // cannot replace. (A missed large block's trace in the tables stays when a smaller
        // block takes the cell: finding it would cost every small allocation a table probe.)
        if let Some((missed, _)) = shadow::take_any(addr, generation).of_generation(generation) {
            accounting::account_unlocked(0, missed, generation);
        }
    }
    let shard = shard_index(addr);
    let mut locked = SHARD_TABLE[shard].lock();
    insert_locked(
        inner,
        &mut locked,
        shard,
        addr,
        size,
        id,
        generation,
        restored,
    )
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn insert_locked(
    inner: &dyn GlobalAlloc,
    shard: &mut Shard,
    index: usize,
    addr: usize,
    size: usize,
    id: TracebackId,
    generation: u32,
    restored: bool,
) -> bool {
    // Re-checked under the lock: `stop()` switches off, and `clear_traces()` starts a new
    // generation of ids, while holding every shard lock; a record that raced with either
    // leaves nothing behind.
    if !is_on() || interner::generation() != generation {
        return false;
    }
    let grow = shard.grow;
    let Some(tracer) = shard.tracer.as_mut() else {
        return false;
    };
    if grow && tracer.table_is_full() {
        grow_table(inner, index, tracer, &mut shard.pages);
    }
    let (before, traces_before) = (tracer.counters().current, tracer.counters().traces);
    let recorded = if restored {
        tracer.restore(DEFAULT_DOMAIN, addr, size, id)
    } else {
        tracer.record_alloc_with(DEFAULT_DOMAIN, addr, size, id)
    };
    if recorded == Recorded::Traced {
        // A trace at the same address is replaced (a realloc in place): it had this size.
        let replaced = (before + size as u64).saturating_sub(tracer.counters().current);
        let interval = sampler::interval();
        accounting::account(size as u64, replaced, interval, generation);
        let new_trace = tracer.counters().traces > traces_before;
        if new_trace && interval != 0 {
            sampler::mark(addr);
        }
        if is_shadowed() {
            let replaced_small = !new_trace && spills(replaced);
            match (replaced_small, spills(size as u64)) {
                (false, true) => {
                    SPILLED.fetch_add(1, Relaxed);
                }
                (true, false) => {
                    SPILLED.fetch_sub(1, Relaxed);
                }
                _ => {}
            }
        }
    } else if tracer.counters().traces < traces_before {
        // A block too big for a slot replaced the trace at its address (see
        // `Tracer::record_alloc_with`): that trace is forgotten as `take_locked` forgets one.
        left_shard(
            addr,
            before - tracer.counters().current,
            sampler::interval(),
        );
    }
    recorded == Recorded::Traced
}

/// Forgets the default-domain traces at `addrs` (a thread's queued frees) and zeroes each
/// address under the same lock (snapshots read the queues holding every shard lock), locking a
/// shard once for each run of neighbouring blocks and holding one shard lock at a time.
pub(crate) fn forget_traces(addrs: &[AtomicUsize]) {
    let mut held: Option<(usize, spin::MutexGuard<'static, Shard>)> = None;
    for queued in addrs {
        let addr = queued.load(Relaxed);
        if addr == 0 {
            continue; // forgotten already (see `deferred::Queue::apply`)
        }
        let shard = shard_index(addr);
        let locked = match &mut held {
            Some((index, locked)) if *index == shard => locked,
            _ => {
                held = None; // unlock before locking the next shard
                &mut held.insert((shard, SHARD_TABLE[shard].lock())).1
            }
        };
        forget_locked(locked, addr);
        queued.store(0, Relaxed);
    }
}

/// Asks the CPU to fetch the table slot of the block at `addr` into the cache.
#[inline(always)]
pub(crate) fn prefetch_trace(addr: usize) {
    prefetch_slot(addr, shard_index(addr));
}

/// Forgets a default-domain trace in a shard's table; whether there was one.
#[inline(always)]
fn forget_locked(shard: &mut Shard, addr: usize) -> bool {
    take_locked(shard, addr).is_some()
}

/// Takes a default-domain trace out of a shard's table, and its mark out of the sampling
/// filter (only the shards' traces are marked: the filter serves the allocator's frees).
#[inline(always)]
fn take_locked(shard: &mut Shard, addr: usize) -> Option<(u64, TracebackId)> {
    let (size, id) = shard.tracer.as_mut()?.take(DEFAULT_DOMAIN, addr)?;
    left_shard(addr, size, sampler::interval());
    Some((size, id))
}

/// What a default-domain trace of `size` bytes at `addr` takes with it when it leaves a shard's
/// table: its bytes from the counters, its sampling mark, and its count among the small blocks
/// spilled from shadow memory.
#[inline(always)]
fn left_shard(addr: usize, size: u64, interval: u64) {
    accounting::account(0, size, interval, interner::generation());
    if interval != 0 {
        sampler::unmark(addr);
    }
    if is_shadowed() && spills(size) {
        SPILLED.fetch_sub(1, Relaxed);
    }
}

/// Forgets a default-domain trace while shadowed: its cell's, or else its table's. `size`, when
/// known (a free's layout), tells where to look ([`may_be_spilled`]).
#[inline(always)]
fn forget_shadowed(addr: usize, size: Option<usize>) -> bool {
    let generation = interner::generation();
    let held = match size {
        Some(size) => shadow::take(addr, size, generation),
        None => shadow::take_any(addr, generation),
    };
    if let Some((size, _)) = held.of_generation(generation) {
        accounting::account_unlocked(0, size, generation);
        return true;
    }
    may_be_spilled(size) && forget_locked(&mut shard_of(addr).lock(), addr)
}

/// Forgets `domain`'s trace at `addr`; its size and traceback if there was one.
#[inline(always)]
fn forget_in(
    tracer: &mut Tracer<'static>,
    domain: u32,
    addr: usize,
    interval: u64,
) -> Option<(u64, TracebackId)> {
    let (size, id) = tracer.take(domain, addr)?;
    accounting::account(0, size, interval, interner::generation());
    Some((size, id))
}

/// Doubles a shard's table. On failure the table stays as it was and the block that triggered
/// the growth is counted as untraced by the core.
#[cold]
fn grow_table(
    inner: &dyn GlobalAlloc,
    shard: usize,
    tracer: &mut Tracer<'static>,
    pages: &mut TablePages,
) {
    if !storage::is_source(inner) {
        return; // another wrapper's allocator: the table must not mix the two
    }
    let len = tracer.table().slot_count().max(1) * 2;
    let Some((bigger, bigger_pages)) = allocate_table(inner, len) else {
        return;
    };
    match tracer.migrate_table(bigger) {
        Ok(old) => {
            free_table(inner, Raw::from(old), *pages);
            *pages = bigger_pages;
        }
        Err(unused) => free_table(inner, Raw::from(unused), bigger_pages),
    }
    publish_hint(shard, tracer);
}

/// Python's `stop()`: switches tracing off, forgets every trace and gives the tracer's storage
/// back (see [`release_storage`]).
pub(crate) fn stop() {
    STATE.store(OFF, SeqCst);
    clear();
    release_storage();
}

/// Gives every table and the traceback store back to the inner allocator they came from, as
/// Python's `stop()` frees its tables; the next start allocates new ones. Only when that is the
/// global allocator's inner allocator, the one allocator the tracer may keep a reference to
/// (named by `start()`): otherwise, as when tracing was started by `RUST_TRACEMALLOC`, the
/// storage stays for the next start.
///
/// Under `ARMING`, so no arming allocates meanwhile, and only while tracing is still off.
fn release_storage() {
    let Some(_guard) = Guard::enter() else {
        return;
    };
    let _arming = ARMING.lock();
    if is_on_state(STATE.load(Acquire)) {
        return; // started again since
    }
    if let Some(inner) = deferred::global_inner_at(storage::source()) {
        free_storage(inner);
    }
}

/// Gives every table and the traceback store back to `inner`, their source, while tracing is
/// off and `ARMING` is held. Every use of the storage happens under the lock that guards it and
/// finds it gone (records check that tracing is on under the shard lock; the store hands out
/// no id), except prefetches of stale table addresses, which are harmless.
fn free_storage(inner: &dyn GlobalAlloc) {
    let mut locked = lock_all_shards();
    for (shard, hint) in locked.iter_mut().zip(&HINTS) {
        hint.base.store(0, Relaxed);
        hint.log2_slots.store(0, Relaxed);
        if let Some(tracer) = shard.tracer.take() {
            free_tracer(inner, RawTracer::of(tracer.into_storage()), shard.pages);
        }
    }
    if let Some(tracer) = FOREIGN.lock().take() {
        free_tracer(
            inner,
            RawTracer::of(tracer.into_storage()),
            TablePages::Small,
        );
    }
    interner::release(inner);
    shadow::release();
    drop(locked);
}

/// Python's `clear_traces()`. Every shard stays locked until the traceback store is cleared,
/// so no record can pair an old id with the new store.
///
/// Lock order: all shards first, then the other domains' tracer and the store (snapshots and
/// the fork handler take those two the other way round, which is safe only because every
/// path that holds both holds all the shards first).
pub(crate) fn clear() {
    deferred::flush_own();
    let _guard = Guard::enter();
    let mut locked = lock_all_shards();
    for shard in &mut locked {
        if let Some(tracer) = shard.tracer.as_mut() {
            tracer.clear();
        }
    }
    SPILLED.store(0, Relaxed);
    // Before the new generation: a thread that reads the new generation writes its cell after
    // the pages are given back. Writers still on the old generation may leave cells behind,
    // which its generation tells apart from the new ones.
    shadow::clear();
    let mut foreign = FOREIGN.lock();
    if let Some(tracer) = foreign.as_mut() {
        tracer.clear();
    }
    interner::clear();
    sampler::forget_marks();
    accounting::reset();
    drop((foreign, locked));
}

/// The traceback limit (Python's `get_traceback_limit()`).
pub(crate) fn traceback_limit() -> usize {
    NFRAME.load(Relaxed)
}

/// Bytes the tracer holds (Python's `get_tracemalloc_memory()`).
pub(crate) fn tracer_memory() -> u64 {
    let _guard = Guard::enter(); // see `with_generation_fixed`
    let shards: usize = SHARD_TABLE
        .iter()
        .filter_map(|s| s.lock().tracer.as_ref().map(Tracer::memory_bytes))
        .sum();
    let foreign = FOREIGN.lock().as_ref().map_or(0, Tracer::memory_bytes);
    (shards + foreign + interner::memory_bytes() + shadow::memory_bytes()) as u64
}

/// Copies every shard, the shared traceback store and the other domains' tracer into a raw
/// snapshot, holding all their locks at once so the copy is consistent. The caller holds the
/// guard, so the copy's own allocations are not traced.
pub(crate) fn copy_raw() -> RawSnapshot {
    let limit = traceback_limit().min(u16::MAX as usize) as u16;
    let mut raw = RawSnapshot::new(limit);
    // Room for the copy, taken and paged in before any lock: sizes read now may grow a little
    // before the locks are held, hence the slack.
    let slots: usize = HINTS
        .iter()
        .map(|h| 1usize << h.log2_slots.load(Relaxed))
        .sum();
    let (entries, frames) = interner::sizes();
    raw.reserve(
        if is_shadowed() { 0 } else { slots },
        entries + entries / 8 + 64,
        frames + frames / 8 + 1024,
    );
    let mut queued = Vec::with_capacity(4 * deferred::BATCH);
    // Counted as `tracer_memory()` counts it; the pages are counted before any lock is held.
    raw.add_tracer_memory(shadow::memory_bytes() as u64);
    // Shadow memory is read before any lock is taken (writing a cell takes none), then the
    // store under its lock: ids are only ever appended to it, so every id of this generation a
    // cell holds is in the copy. Cells change while they are read: a block allocated or freed
    // meanwhile may or may not be in the snapshot. A `clear()` during the scan voids it.
    // After a few clears in a row, the scan runs under the locks, which keep `clear()` out.
    let mut tries = 0;
    let (cells, locked) = loop {
        tries += 1;
        let early = if tries <= 3 {
            None
        } else {
            Some(lock_all_shards())
        };
        let generation = interner::generation();
        // The storage of that generation's session: `arm` sets it before it starts the
        // generation, which the acquire above orders before this read. Read earlier, a restart
        // into shadow memory meanwhile would leave every cell of the new session out.
        let mut cells = Vec::new();
        if is_shadowed() {
            cells = copy_cells(generation);
            cells.reserve(slots); // the tables' slots join the cells under the locks
        }
        let locked = early.unwrap_or_else(lock_all_shards);
        if interner::generation() == generation {
            break (cells, locked);
        }
    };
    let store = interner::STORE.lock();
    let foreign = FOREIGN.lock();
    if let Some(store) = store.as_ref() {
        let tracers = locked.iter().filter_map(|s| s.tracer.as_ref());
        raw.add_sharing_with(cells, tracers, store);
    }
    if let Some(tracer) = foreign.as_ref() {
        raw.add(tracer);
    }
    // Blocks other threads freed whose traces wait in their queues: freed, so left out.
    deferred::queued_frees(&mut queued);
    drop((foreign, store, locked));
    raw.leave_out(&queued);
    raw.set_peak(accounting::traced_memory().1);
    raw.set_sample_interval(sampler::interval());
    raw
}

/// The traces of `generation` in shadow memory, as table slots.
fn copy_cells(generation: u32) -> Vec<Slot> {
    let mut slots = Vec::new();
    shadow::scan(|addr, held| {
        if let Some((size, id)) = held.of_generation(generation) {
            slots.push(Slot::new(addr, size, id));
        }
    });
    slots
}

/// The trace of one default-domain block: its size, its traceback's id, and that traceback's
/// raw frames and depth. `None` when the block is not traced, or when `clear_traces()` ran
/// between reading its id and its frames.
pub(crate) fn trace_of(addr: usize) -> Option<(u64, TracebackId, Vec<usize>, u16)> {
    // The generation first, then its session's storage (as `copy_raw` reads them).
    let generation = interner::generation();
    let cell = is_shadowed()
        .then(|| shadow::current(addr, generation))
        .flatten();
    let (size, id, generation) = if let Some((size, id)) = cell {
        (size, id, generation)
    } else {
        let shard = shard_of(addr).lock();
        // Read under the shard lock, which `clear()` holds while it starts a new generation:
        // the slot's id is of this one.
        let generation = interner::generation();
        let slot = shard.tracer.as_ref()?.table().get(addr, |_| true)?;
        if deferred::is_queued(addr) {
            return None; // freed by the program
        }
        (slot.size(), slot.traceback(), generation)
    };
    let (frames, total) = interner::frames_of(id, generation)?;
    Some((size, id, frames, total))
}

/// An allocator that never has memory: `track` has no inner allocator at hand, so the shared
/// store cannot grow there (a full one reports the stack as `<traceback store full>`).
struct NoMemory;

// SAFETY: `alloc` always fails, which `GlobalAlloc` allows, and `dealloc` is never reached
// since nothing is ever handed out.
unsafe impl GlobalAlloc for NoMemory {
    unsafe fn alloc(&self, _layout: Layout) -> *mut u8 {
        core::ptr::null_mut()
    }
    unsafe fn dealloc(&self, _ptr: *mut u8, _layout: Layout) {}
}

/// Records memory that did not come from the global allocator (`track`).
pub(crate) fn track(domain: u32, addr: usize, size: usize) -> bool {
    if !is_on() {
        return false;
    }
    let Some(_guard) = Guard::enter() else {
        return false;
    };
    // While sampling, a tracked block is sampled like an allocation of its size, so that the
    // estimates scale it like every other trace; left out, it is still accounted for, and a
    // trace at its address goes, as a new block there replaces the trace of an old one.
    if !sampler::take(size) {
        forget_tracked(domain, addr);
        return true;
    }
    // `track` runs in the caller's code, not inside the allocator: `System` may lend the
    // capture buffer of very deep limits.
    with_stack(&std::alloc::System, |stack| {
        if domain == DEFAULT_DOMAIN {
            if is_shadowed() {
                // A trace at this address is replaced, as the tables replace one, whichever
                // storage (or grid of cells) holds it: it may differ from the new block's.
                forget_shadowed(addr, None);
            }
            return record(&NoMemory, addr, size, stack);
        }
        let mut foreign = FOREIGN.lock();
        // Checked again under the lock, as the shards do: a restart clears this tracer (under
        // the lock) while tracing is not on, and starts the generation only afterwards; a trace
        // recorded in between would stay in the new session with its size voided.
        let Some(tracer) = foreign.as_mut().filter(|_| is_on()) else {
            return false;
        };
        let before = tracer.counters().current;
        let recorded = tracer.record_alloc(domain, addr, size, stack.frames, stack.total);
        // A trace at the same key is replaced, by an untraced block too (see
        // `Tracer::record_alloc`).
        let traced = recorded == Recorded::Traced;
        let added = if traced { size as u64 } else { 0 };
        let replaced = (before + added).saturating_sub(tracer.counters().current);
        if traced || replaced != 0 {
            accounting::account(added, replaced, sampler::interval(), interner::generation());
        }
        traced
    })
}

/// Forgets memory recorded by `track`.
pub(crate) fn untrack(domain: u32, addr: usize) -> bool {
    let Some(_guard) = Guard::enter() else {
        return false;
    };
    forget_tracked(domain, addr)
}

/// Forgets the trace at `addr` in `domain`, whichever storage holds it; whether there was one.
/// The caller holds the guard.
fn forget_tracked(domain: u32, addr: usize) -> bool {
    if domain == DEFAULT_DOMAIN {
        return if is_shadowed() {
            forget_shadowed(addr, None)
        } else {
            forget_locked(&mut shard_of(addr).lock(), addr)
        };
    }
    match FOREIGN.lock().as_mut() {
        Some(tracer) => forget_in(tracer, domain, addr, sampler::interval()).is_some(),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracemalloc_core::TraceTable;

    #[test]
    fn one_shards_blocks_spread_over_its_whole_table() {
        // The blocks a shard receives must spread over its table: when the shard was picked by
        // the table's own hash bits (or by page, a sparse subset of the table's regions), a
        // shard's blocks clustered and tracing went quadratic.
        // Each placement with the strides of the allocators it is chosen for, at the default
        // table size and a larger one (bounds as the core's table tests).
        for (stride, start) in [
            (8, 0x5555_0000_0008usize),
            (16, 0x5555_0000_0010),
            (32, 0x5555_0000_0010),
            (48, 0x7f12_3400_0000),
            (4096, 0x1000_0000),
        ] {
            let chosen = Placement::for_spacing(stride);
            for (placement, log2) in [(Placement::Packed, 12), (chosen, 12), (chosen, 16)] {
                let mut storage = vec![Slot::EMPTY; 1 << log2];
                let mut table = TraceTable::with_placement(&mut storage, placement);
                let mut addr = start;
                while table.len() < table.limit() {
                    if shard_index(addr) == 3 {
                        let _ = table.insert(addr, 32, TracebackId::from_index(1), |_| true);
                    }
                    addr += stride;
                }
                let mean = table.mean_probe_length();
                let which = format!("{placement:?}, 2^{log2} slots, stride {stride}");
                assert!(mean < 6.0, "{which}: mean probe length {mean}");
            }
        }
    }
}
