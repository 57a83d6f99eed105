//! tracemalloc for Rust: find memory leaks the way Python's `tracemalloc` does.
//!
//! Install the tracing allocator, start tracing, take a snapshot at start and another later,
//! compare them grouped by file, and read the traceback of the biggest growth:
//!
//! ```no_run
//! use tracemalloc::{KeyType, TracingAllocator};
//!
//! #[global_allocator]
//! static ALLOC: TracingAllocator = TracingAllocator::system();
//!
//! fn main() -> Result<(), tracemalloc::Error> {
//!     tracemalloc::start(16)?;
//!     let start = tracemalloc::take_snapshot()?;
//!     // ... the service runs ...
//!     let current = tracemalloc::take_snapshot()?;
//!     for stat in current.compare_to(&start, KeyType::Filename, false)?.iter().take(5) {
//!         println!("{stat}");
//!     }
//!     Ok(())
//! }
//! ```
//!
//! | Python                              | Rust                                  |
//! |-------------------------------------|---------------------------------------|
//! | `tracemalloc.start(nframe)`         | [`start`], [`start_with`]             |
//! | `tracemalloc.stop()`                | [`stop`]                              |
//! | `tracemalloc.is_tracing()`          | [`is_tracing`]                        |
//! | `tracemalloc.clear_traces()`        | [`clear_traces`]                      |
//! | `tracemalloc.get_traceback_limit()` | [`traceback_limit`]                   |
//! | `tracemalloc.get_traced_memory()`   | [`traced_memory`]                     |
//! | `tracemalloc.reset_peak()`          | [`reset_peak`]                        |
//! | `tracemalloc.get_tracemalloc_memory()` | [`tracemalloc_memory`]             |
//! | `tracemalloc.get_object_traceback(o)` | [`object_traceback`]                |
//! | `tracemalloc.take_snapshot()`       | [`take_snapshot`]                     |
//! | `PyTraceMalloc_Track/Untrack`       | [`track`], [`untrack`]                |
//! | `PYTHONTRACEMALLOC=N`               | `RUST_TRACEMALLOC=N`                  |
//!
//! A `RUST_TRACEMALLOC` that is not a number of frames traces with 1 (more than 65535: with
//! 65535), with a warning on stderr on Unix; empty or 0 leaves tracing off.
//! `RUST_TRACEMALLOC_SAMPLE=BYTES` beside `RUST_TRACEMALLOC` samples one block per BYTES
//! allocated on average (see [`Config::sample_interval`]): always-on tracing of a deployed
//! program without a code change. `RUST_TRACEMALLOC_STORAGE=table` (or `shadow`, `auto`) beside
//! it picks [`Config::storage`].
//!
//! Build with `-C force-frame-pointers=yes` (in `.cargo/config.toml`: `[build] rustflags =
//! ["-C", "force-frame-pointers=yes"]`): stacks are then captured by walking frame pointers,
//! about 1 ns a frame, instead of unwinding, about 110 ns a frame.
#![deny(unsafe_op_in_unsafe_fn, missing_docs, unreachable_pub)]
#![deny(clippy::undocumented_unsafe_blocks)]

/// The README's Rust example, run as a doctest so that it keeps compiling and working as
/// written (a helper that pasted it into a new crate found it panicking).
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeExample;

mod accounting;
mod allocator;
mod capture;
pub mod cli;
mod deferred;
mod files;
mod guard;
mod headroom;
mod interner;
mod plumbing;
mod printable;
mod sampler;
mod shadow;
mod source;
mod state;
mod storage;
pub mod symbolize;

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

pub use allocator::TracingAllocator;
pub use capture::Capture;
pub use files::{dump, load, parse, FileError};
pub use source::{format_traceback, SourceLines};
pub use tracemalloc_core as core;
use tracemalloc_core::snapshot::shown_depth;
use tracemalloc_core::TracebackId;
pub use tracemalloc_core::{
    DomainFilter, Filter, Frame, KeyType, Snapshot, Statistic, StatisticDiff, StatsError, Trace,
    TraceFilter, Traceback, DEFAULT_DOMAIN, MAX_NFRAME,
};

/// Everything that can go wrong in the API.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// `nframe` outside `1..=65535` (Python raises `ValueError`).
    InvalidNframe(usize),
    /// The operation needs tracing to be on (Python: "the tracemalloc module must be tracing
    /// memory allocations to take a snapshot").
    NotTracing,
    /// `start()` ran, but no allocation went through a `TracingAllocator`: it is not the
    /// `#[global_allocator]`.
    NotInstalled,
    /// The inner allocator had no memory for the trace tables.
    OutOfMemory,
    /// Statistics were asked for with an invalid combination (cumulative by traceback).
    Stats(StatsError),
    /// Debug info could not be read.
    Symbols {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidNframe(n) => {
                write!(
                    f,
                    "the number of frames must be in range [1; {MAX_NFRAME}], got {n}"
                )
            }
            Error::NotTracing => f.write_str(
                "the tracemalloc module must be tracing memory allocations to take a snapshot",
            ),
            Error::NotInstalled => f.write_str(
                "tracemalloc::TracingAllocator is not the #[global_allocator] of this program",
            ),
            Error::OutOfMemory => f.write_str("no memory for the trace tables"),
            Error::Stats(e) => write!(f, "{e}"),
            Error::Symbols { path, reason } => {
                write!(f, "cannot read debug info of {path}: {reason}")
            }
        }
    }
}

impl std::error::Error for Error {}

impl From<StatsError> for Error {
    fn from(e: StatsError) -> Error {
        Error::Stats(e)
    }
}

/// How tracing runs; [`start`] uses the defaults with its `nframe`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Frames kept per traceback after plumbing is hidden (Python's `nframe`), `1..=65535`.
    pub nframe: usize,
    /// The most frames of plumbing (`Vec::push` → `RawVec::grow_one` → … → `__rust_alloc`, and
    /// std between the application's frames, as in `OnceLock::get_or_init`) that a capture takes
    /// beyond `nframe`, so that the plumbing, which snapshots hide, does not use up the limit.
    /// On Linux the tracer reads the symbol table of the object it is linked into when tracing
    /// first starts (or, when `RUST_TRACEMALLOC` started it, at the first snapshot), and a
    /// stack then ends at its `nframe`-th frame that is not plumbing: a traceback keeps no frame
    /// past the ones a snapshot shows, and stacks of the same depth that differ only beyond
    /// them share it. Elsewhere, or without a symbol table (a stripped binary), every capture
    /// takes this many frames more. 0 captures exactly `nframe` raw frames. The default is 8 in
    /// optimized builds, where most plumbing is inlined, and 24 in debug builds, where none is.
    pub hidden_frame_allowance: usize,
    /// Where the traces of blocks go: see [`Storage`].
    pub storage: Storage,
    /// Trace slots each of the 16 shards starts with (rounded up to a power of two). Tables
    /// that outlived a `stop()` (see [`stop`]) are kept as they have grown.
    pub initial_slots_per_shard: usize,
    /// Whether a shard's table doubles when full (else new blocks are counted as untraced).
    pub grow: bool,
    /// Distinct tracebacks the process-wide store starts with room for (fewer, 16 at least,
    /// when that would pass `max_traceback_memory`); it doubles when full (up to 2^24), and a
    /// stack that still finds no room is reported as `<traceback store full>`.
    pub initial_tracebacks: usize,
    /// Bytes the traceback store may grow to ([`DEFAULT_MAX_TRACEBACK_MEMORY`] by default).
    /// A program whose every allocation comes from a new call stack (deep recursion) would
    /// otherwise make the store grow with every block; past the limit, new stacks are reported
    /// as `<traceback store full>` and their blocks still count. It bounds growth: a store
    /// that outlived a `stop()` stays as big as it was. The store grows by reallocating its
    /// arrays: glibc remaps large blocks without copying them, but an allocator that moves a
    /// block holds the old and the new copy of an array for a moment, so the peak can come
    /// near twice the limit.
    pub max_traceback_memory: usize,
    /// How stacks are captured.
    pub capture: Capture,
    /// Whether snapshots keep the frames of `std`, `alloc`, `core` and the tracer.
    pub show_plumbing: bool,
    /// 0 (the default) traces every block. N > 0 samples: on average one block per N bytes
    /// allocated is traced (Poisson sampling, as tcmalloc and Go do), statistics and
    /// `traced_memory()` become estimates scaled back up, and the cost drops to almost nothing.
    /// [`DEFAULT_SAMPLE_INTERVAL`] suits always-on production use. Intervals above 1 TiB
    /// count as 1 TiB.
    pub sample_interval: u64,
}

/// Where the tracer keeps the trace (size and traceback) of each live block.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Storage {
    /// [`Storage::Shadow`] when every block is traced, [`Storage::Table`] when sampling (few
    /// blocks, far apart: shadow memory would take a page for each), where the address space
    /// is limited (`RLIMIT_AS`: each region of shadow memory reserves 1.22 GiB of it), where the
    /// kernel charges reservations in full (`vm.overcommit_memory` = 2) and on 32-bit targets.
    #[default]
    Auto,
    /// Shadow memory: 8 bytes for every 32 bytes of address space in which traced blocks
    /// start (under allocators that hand out small blocks side by side, such as jemalloc and
    /// mimalloc, 8 bytes for every 8 bytes, in four planes whose pages take memory only where
    /// blocks start at their offset; glibc's blocks lie 32 bytes apart at least), at a place
    /// computed from the block's address, reserved 1.22 GiB per 1 GiB of heap address space
    /// (the planes, then the grids below) and taken page by page as
    /// blocks land there. Recording a block needs no lock and touches memory next to its heap
    /// neighbours' traces: see BENCHMARKS.md for what it saves. The memory follows the heap's
    /// address span rather than the number of live blocks: about a quarter of the size of a
    /// densely used heap of blocks under 64 bytes (all of it where 8-byte blocks lie side by
    /// side; blocks of 64 bytes up to 1 KiB take a cell on a grid of their size, one per 64, 128
    /// or 256 bytes, where smaller blocks did not write their page already), but
    /// up to a 4 KiB page per block where blocks lie 16 KiB or more apart, and pages written
    /// stay taken until `clear_traces()` or `stop()`. Blocks that do not fit (not aligned to 8
    /// bytes, 1 KiB or larger, which would cost a quarter of their size in cells where the
    /// tables take 21 to 43 bytes, or, with one cell per 32 bytes, starting in the span of a
    /// block whose trace holds the cell) and platforms without `mmap` use the tables, and so
    /// does sampling, whatever this says.
    Shadow,
    /// Hash tables keyed by address, in 16 shards that double when full: memory in proportion
    /// to the live blocks (21.3 bytes each at the load limit, up to twice that just after a
    /// doubling), for sparse or fragmented heaps, or when memory is tighter than time.
    Table,
}

/// The default limit on the traceback store's growth: room for about a million distinct
/// 16-frame stacks.
pub const DEFAULT_MAX_TRACEBACK_MEMORY: usize = 256 << 20;

/// A sample interval for always-on production tracing: one sample per 512 KiB allocated, as
/// Go's heap profiler defaults to.
pub const DEFAULT_SAMPLE_INTERVAL: u64 = 512 * 1024;

impl Config {
    /// The configuration for always-on production tracing: `nframe` frames, one sample per
    /// [`DEFAULT_SAMPLE_INTERVAL`] bytes.
    pub fn sampled(nframe: usize) -> Config {
        Config {
            nframe,
            sample_interval: DEFAULT_SAMPLE_INTERVAL,
            ..Config::default()
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            nframe: 1,
            hidden_frame_allowance: if cfg!(debug_assertions) { 24 } else { 8 },
            storage: Storage::Auto,
            initial_slots_per_shard: 4096,
            grow: true,
            initial_tracebacks: 4096,
            max_traceback_memory: DEFAULT_MAX_TRACEBACK_MEMORY,
            capture: Capture::Auto,
            show_plumbing: false,
            sample_interval: 0,
        }
    }
}

static SHOW_PLUMBING: AtomicBool = AtomicBool::new(false);

pub(crate) fn show_plumbing() -> bool {
    SHOW_PLUMBING.load(Relaxed)
}

/// Starts tracing with tracebacks of up to `nframe` frames (Python's `tracemalloc.start`).
pub fn start(nframe: usize) -> Result<(), Error> {
    start_with(Config {
        nframe,
        ..Config::default()
    })
}

/// Starts tracing with a full configuration. Already tracing: nothing changes, the limit
/// included, as in Python.
pub fn start_with(config: Config) -> Result<(), Error> {
    if !(1..=MAX_NFRAME).contains(&config.nframe) {
        return Err(Error::InvalidNframe(config.nframe));
    }
    let show_plumbing = config.show_plumbing;
    let was_on = state::is_on();
    let requested = state::request_start(config);
    if requested {
        SHOW_PLUMBING.store(show_plumbing, Relaxed);
    }
    // Any allocation through the wrapper switches tracing on; make one.
    drop(std::hint::black_box(Box::new(0u64)));
    if state::is_on() {
        deferred::note_global();
        if !was_on {
            // The probes are traced; a session that has traced nothing yet has no peak. Their
            // frees may wait in this thread's queue (the tables): applied first.
            deferred::flush_own();
            accounting::forget_own_high();
        }
        if let Some(_guard) = guard::Guard::enter() {
            plumbing::build(); // once per process
        }
        Ok(())
    } else if !requested {
        Ok(()) // was on, then switched off by a `stop()` on another thread
    } else if state::arm_failed() {
        Err(Error::OutOfMemory)
    } else if state::is_armed() {
        // Still armed after an allocation: the wrapper never saw it.
        state::stop();
        Err(Error::NotInstalled)
    } else {
        Ok(()) // switched on, then off again by a `stop()` on another thread
    }
}

/// Stops tracing, forgets every trace and gives the tracer's memory back to the inner allocator
/// (Python's `tracemalloc.stop`): [`tracemalloc_memory`] is 0 afterwards.
///
/// Blocks that other live threads freed and still hold in their queues of frees (README,
/// Known limits; at most 15 of at most 4 KiB each) reach the inner allocator when those
/// threads next ask the tracer something or exit.
///
/// The memory stays for the next start, as tables that outlive the stop, when tracing was
/// started by `RUST_TRACEMALLOC` rather than [`start`], or when the wrapper that switched it on
/// is not the global allocator: the tracer may keep a reference only to the global
/// allocator's inner allocator.
pub fn stop() {
    state::stop();
}

/// Whether allocations are being traced.
pub fn is_tracing() -> bool {
    state::is_on()
}

/// Where the traces of this tracing session go, with [`Storage::Auto`] resolved: `None` while
/// tracing is off. Blocks that fit no cell go to the tables whatever this says.
pub fn storage_in_use() -> Option<Storage> {
    state::storage_in_use()
}

/// How this tracing session captures stacks, with [`Capture::Auto`] resolved (frame pointers
/// where this platform has a walker and the build keeps the chain, the unwinder otherwise):
/// `None` while tracing is off. A build without `-C force-frame-pointers=yes` shows here as
/// [`Capture::Unwinder`], about 100x slower a frame.
pub fn capture_in_use() -> Option<Capture> {
    state::capture_in_use()
}

/// Forgets every trace; tracing goes on (Python's `clear_traces`).
pub fn clear_traces() {
    state::clear();
}

/// The traceback limit tracing runs with.
pub fn traceback_limit() -> usize {
    state::traceback_limit()
}

/// Current and peak size of traced blocks, in bytes (Python's `get_traced_memory`).
///
/// Threads publish their changes in batches of 64 KiB: the figures include every change the
/// calling thread made and, on Unix, those of threads that have exited; they may miss under
/// 64 KiB of each other thread's latest changes (allocations or frees, so the peak may be off
/// by as much), and, with the tables, up to 15 of its latest frees of blocks up to 4 KiB,
/// which it applies in batches. With one thread they are exact.
pub fn traced_memory() -> (usize, usize) {
    let (current, peak) = accounting::traced_memory();
    (current as usize, peak as usize)
}

/// Sets the peak to the current size (Python's `reset_peak`).
pub fn reset_peak() {
    accounting::reset_peak();
}

/// Bytes of memory the tracer uses (Python's `get_tracemalloc_memory`): its tables and
/// traceback store, taken from the inner allocator, and the pages of shadow memory written.
pub fn tracemalloc_memory() -> usize {
    state::tracer_memory() as usize
}

/// The traceback where the block at `ptr` was allocated, if it is traced (Python's
/// `get_object_traceback`).
pub fn object_traceback<T: ?Sized>(ptr: *const T) -> Option<Traceback> {
    deferred::flush_own();
    let _guard = guard::Guard::enter()?;
    let (_, id, addresses, total) = state::trace_of(ptr as *const u8 as usize)?;
    if id == TracebackId::OVERFLOW {
        // As a snapshot shows it.
        return Some(Traceback {
            frames: vec![Frame::store_full()],
            total_nframe: total,
        });
    }
    let mut frames = Vec::new();
    symbolize::with_process_resolver(|resolver| {
        for &address in &addresses {
            resolver.frames_at(address, &mut frames);
        }
    });
    let total_nframe = shown_depth(frames.len(), addresses.len(), total);
    let mut traceback = Traceback {
        frames,
        total_nframe,
    };
    trim(&mut traceback, traceback_limit());
    Some(traceback)
}

/// Keeps the first `nframe` frames; a traceback whose frames were all hidden shows `<unknown>`.
fn trim(traceback: &mut Traceback, nframe: usize) {
    traceback.frames.truncate(nframe);
    if traceback.frames.is_empty() {
        traceback.frames.push(Frame::unknown());
    }
}

/// Takes a snapshot of the traced blocks (Python's `take_snapshot`). Shadow memory is read
/// without a lock, so a block allocated, freed or moved during the read may or may not be in it;
/// the tables are copied under their locks. Symbolization runs afterwards, each address once
/// per process. Every free made before the call, on any thread, is reflected (frees that
/// threads hold in the tables' queues are left out).
pub fn take_snapshot() -> Result<Snapshot, Error> {
    if !is_tracing() {
        return Err(Error::NotTracing);
    }
    deferred::flush_own();
    // The snapshot's own allocations are not traced, as in Python.
    let Some(_guard) = guard::Guard::enter() else {
        return Err(Error::NotTracing);
    };
    // Tracing started by `RUST_TRACEMALLOC` began inside the allocator, where the map cannot
    // be read: from the first snapshot on, its captures keep no frame past the limit either.
    plumbing::build();
    let generation = interner::generation();
    let raw = state::copy_raw();
    let mut snapshot = symbolize::with_process_resolver(|resolver| raw.resolve(resolver));
    // Kept with shadow memory too, where a block that moved during the scan may be counted
    // twice and so raise the peak by its size (README, Known limits): a peak below a total
    // the user has seen would be the worse surprise.
    accounting::raise_peak(snapshot.counters.current, generation);
    let nframe = traceback_limit();
    for traceback in &mut snapshot.tracebacks {
        trim(traceback, nframe);
    }
    Ok(snapshot)
}

/// Records a block that did not come from the global allocator (an arena, a pool, an mmap'd
/// buffer) under `domain`, with the caller's traceback (Python's `PyTraceMalloc_Track`). Returns
/// whether it was recorded: tracing must be on and the table must have room. While sampling,
/// the block is sampled like an allocation of `size` bytes; one left out returns true, as the
/// samples account for it.
pub fn track<T: ?Sized>(domain: u32, ptr: *const T, size: usize) -> bool {
    state::track(domain, ptr as *const u8 as usize, size)
}

/// Forgets a block recorded by [`track`] (Python's `PyTraceMalloc_Untrack`). Returns whether it
/// was traced (false, while sampling, for a block that `track` left out).
pub fn untrack<T: ?Sized>(domain: u32, ptr: *const T) -> bool {
    state::untrack(domain, ptr as *const u8 as usize)
}
