//! Snapshot files: a compact binary format and (feature `json`) a JSON form.
//!
//! The binary format ([`binary`]) is what `dump`/`load` use and what a device streams to the
//! host; its encoder for a live [`Tracer`](crate::Tracer) needs no allocator. The JSON form
//! (`json`) is for other tools: one object per trace with its frames spelled out.

pub mod binary;
#[cfg(feature = "json")]
pub mod json;

pub use binary::{encode_tracer, DecodeError, DeviceInfo, Sink, SliceSink};
#[cfg(feature = "json")]
pub use json::JsonError;
