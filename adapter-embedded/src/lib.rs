//! tracemalloc for microcontrollers: trace an embedded-alloc heap on Cortex-M, report through
//! defmt, and dump snapshots the host `tracemalloc` CLI reads.
//!
//! - [`TracedHeap`] wraps any [`Heap`] (embedded-alloc's `LlffHeap` and `TlsfHeap` with the
//!   `llff` / `tlsf` features) and is the `#[global_allocator]`. The core's tables live inside it
//!   at capacities fixed by const parameters, so a `static` heap costs bss and nothing grows;
//!   a full table counts blocks as untraced. Locking is `critical-section`, so interrupt
//!   handlers may allocate, and nothing needs atomic compare-and-swap (thumbv6m works).
//! - Call stacks come from the r7 frame chain ([`stack`]) when the firmware is built with
//!   `-C force-frame-pointers=yes`, else the return address alone. Frames are call sites:
//!   return address with the Thumb bit cleared, minus one; the host looks them up as they are.
//! - On the device: start/stop, traced current and peak, reset peak, the top N sites by size
//!   or by growth since a baseline the firmware marks ([`report`]); with the `defmt` feature
//!   `Report::log` prints them.
//! - With the `semihosting` feature, `semihosting::HostFile` writes a snapshot file on the
//!   host for `tracemalloc stats FILE --elf FIRMWARE`.
//! - With the `build-id` feature, snapshots carry the firmware's GNU build id (module
//!   `build_id`), and the host refuses an ELF file of another build.
#![no_std]
#![deny(missing_docs, unreachable_pub, unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

#[cfg(feature = "build-id")]
pub mod build_id;
pub mod heap;
pub mod report;
#[cfg(feature = "semihosting")]
pub mod semihosting;
pub mod stack;
mod traced;

pub use heap::Heap;
pub use report::{Order, Report, Site, SiteTotals};
pub use stack::{call_site, CallStacks, StackBounds};
pub use traced::TracedHeap;
pub use tracemalloc_core::codec::{Sink, SliceSink};
pub use tracemalloc_core::{Counters, Slot, Tracer};
