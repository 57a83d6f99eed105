//! Snapshot files: `dump` writes the compact binary form, `load` reads either form (binary or
//! JSON, told apart by their first bytes).

use std::fmt;
use std::path::Path;

use tracemalloc_core::codec::binary::{DecodeError, MAGIC};
use tracemalloc_core::codec::json::JsonError;
use tracemalloc_core::Snapshot;

/// Why a snapshot file could not be read or written.
#[derive(Debug)]
pub enum FileError {
    /// The file could not be read or written.
    Io {
        /// The file.
        path: String,
        /// What the system said.
        source: std::io::Error,
    },
    /// The file is a binary snapshot, but damaged.
    Binary {
        /// The file.
        path: String,
        /// What is wrong.
        source: DecodeError,
    },
    /// The file is a JSON snapshot, but invalid.
    Json {
        /// The file.
        path: String,
        /// What is wrong.
        source: JsonError,
    },
    /// The file is neither form.
    NotASnapshot {
        /// The file.
        path: String,
    },
}

impl fmt::Display for FileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FileError::Io { path, source } => write!(f, "{path}: {source}"),
            // The decoders' errors say what they found (truncated, damaged, another version).
            FileError::Binary { path, source } => write!(f, "{path}: {source}"),
            FileError::Json { path, source } => write!(f, "{path}: {source}"),
            FileError::NotASnapshot { path } => write!(
                f,
                "{path}: not a snapshot file (neither the binary format nor JSON)"
            ),
        }
    }
}

impl std::error::Error for FileError {}

/// Writes `snapshot` to `path` in the binary format (Python's `Snapshot.dump`).
pub fn dump(snapshot: &Snapshot, path: impl AsRef<Path>) -> Result<(), FileError> {
    let path = path.as_ref();
    std::fs::write(path, snapshot.dump_bytes()).map_err(|source| FileError::Io {
        path: path.display().to_string(),
        source,
    })
}

/// Reads a snapshot written by [`dump`], by a device, or in the JSON form (Python's
/// `Snapshot.load`).
pub fn load(path: impl AsRef<Path>) -> Result<Snapshot, FileError> {
    let path = path.as_ref();
    let name = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| FileError::Io {
        path: name.clone(),
        source,
    })?;
    parse_named(&bytes, name)
}

/// Parses the bytes of a snapshot file of either form.
pub fn parse(bytes: &[u8]) -> Result<Snapshot, FileError> {
    parse_named(bytes, String::new())
}

/// [`parse`], with errors naming `path`.
fn parse_named(bytes: &[u8], path: String) -> Result<Snapshot, FileError> {
    if bytes.starts_with(MAGIC) {
        return Snapshot::load_bytes(bytes).map_err(|source| FileError::Binary { path, source });
    }
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    let text = match std::str::from_utf8(bytes) {
        Ok(text) if first == Some(&b'{') => text,
        _ => return Err(FileError::NotASnapshot { path }),
    };
    Snapshot::from_json(text).map_err(|source| FileError::Json { path, source })
}
