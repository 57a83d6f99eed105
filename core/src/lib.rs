//! tracemalloc for Rust, the platform-free core.
//!
//! Everything here is `#![no_std]` and needs no allocator for tracing: the [`tracer::Tracer`]
//! records allocations into a fixed-capacity [`table::TraceTable`] and interns call stacks in a
//! [`traceback::TracebackStore`], both over storage the adapter provides. With the `alloc`
//! feature the same crate takes `Snapshot`s and analyses them exactly as CPython's
//! `tracemalloc` module does: statistics grouped by file, line or traceback, diffs between two
//! snapshots, filters, Python-identical text, and snapshot files.
//!
//! The adapters (`tracemalloc` for std, `tracemalloc-embedded` for Cortex-M) add the platform:
//! the allocator wrapper, locking, call-stack capture and symbolization.
#![no_std]
#![deny(unsafe_code, missing_docs, unreachable_pub)]
#![deny(clippy::undocumented_unsafe_blocks)]

#[cfg(feature = "alloc")]
extern crate alloc;

pub mod table;
pub mod traceback;
pub mod tracer;

pub mod build_id;
pub mod codec;
#[cfg(feature = "alloc")]
pub mod filter;
#[cfg(feature = "alloc")]
pub mod format;
#[cfg(feature = "alloc")]
pub mod sampling;
#[cfg(feature = "alloc")]
pub mod snapshot;
#[cfg(feature = "alloc")]
pub mod stats;

pub use codec::{encode_tracer, DecodeError, DeviceInfo, Sink, SliceSink};
pub use table::{Placement, Slot, TraceTable};
pub use traceback::{StoreFull, TracebackEntry, TracebackId, TracebackStorage, TracebackStore};
pub use tracer::{
    Counters, Recorded, Tracer, TracerArrays, TracerStorage, DEFAULT_DOMAIN, MAX_NFRAME,
};

#[cfg(feature = "alloc")]
pub use filter::{fnmatch, DomainFilter, Filter, TraceFilter};
#[cfg(feature = "alloc")]
pub use format::format_size;
#[cfg(feature = "alloc")]
pub use snapshot::{Frame, OverMemoryLimit, RawSnapshot, Resolver, Snapshot, Trace, Traceback};
#[cfg(feature = "alloc")]
pub use stats::{KeyType, Statistic, StatisticDiff, StatsError};

// `core::error::Error` (Rust 1.81) lets `?` turn these into `Box<dyn Error>` in applications.
#[cfg(feature = "alloc")]
impl core::error::Error for stats::StatsError {}
#[cfg(feature = "alloc")]
impl core::error::Error for codec::binary::DecodeError {}
#[cfg(feature = "json")]
impl core::error::Error for codec::json::JsonError {}
