//! Snapshot files.
pub mod binary;
