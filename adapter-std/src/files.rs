//! Snapshot files: `dump` writes the compact binary form, `load` reads either form (binary or
//! JSON, told apart by their first bytes).

use std::fmt;
use std::io::{self, Read};
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
    /// The file starts as a JSON snapshot but is not UTF-8.
    NotUtf8 {
        /// The file.
        path: String,
        /// Offset of the first byte that is not UTF-8.
        at: usize,
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
            FileError::NotUtf8 { path, at } => {
                write!(f, "{path}: invalid JSON snapshot: byte {at} is not UTF-8")
            }
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
/// `Snapshot.load`). Only regular files are read, and one whose first bytes are neither form is
/// not read to its end.
pub fn load(path: impl AsRef<Path>) -> Result<Snapshot, FileError> {
    let path = path.as_ref();
    let name = path.display().to_string();
    let io_error = |source| FileError::Io {
        path: name.clone(),
        source,
    };
    let mut file = open_regular(path).map_err(io_error)?;
    let mut bytes = Vec::new();
    (&mut file)
        .take(SNIFF)
        .read_to_end(&mut bytes)
        .map_err(io_error)?;
    if !bytes.starts_with(MAGIC) && first_significant(&bytes).is_some_and(|b| b != b'{') {
        return Err(FileError::NotASnapshot { path: name });
    }
    file.read_to_end(&mut bytes).map_err(io_error)?;
    parse_named(&bytes, name)
}

/// Bytes read before deciding whether a file can be a snapshot.
const SNIFF: u64 = 4096;
/// The UTF-8 byte-order mark some editors put before JSON.
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// Opens `path` for reading if it is a regular file. A FIFO, a device or a directory, named by
/// mistake (or as a source file by a forged snapshot), would block the open, never end, or
/// fail with an obscure error; on Unix the open does not wait for a FIFO's writer.
pub(crate) fn open_regular(path: &Path) -> io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::custom_flags(&mut options, libc::O_NONBLOCK);
    let file = options.open(path)?;
    if file.metadata()?.is_file() {
        Ok(file)
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ))
    }
}

/// The first byte of `bytes` that is not whitespace, after a byte-order mark.
fn first_significant(bytes: &[u8]) -> Option<u8> {
    let text = bytes.strip_prefix(BOM).unwrap_or(bytes);
    text.iter().copied().find(|b| !b.is_ascii_whitespace())
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
    if first_significant(bytes) != Some(b'{') {
        return Err(FileError::NotASnapshot { path });
    }
    let skipped = if bytes.starts_with(BOM) { BOM.len() } else { 0 };
    let text = std::str::from_utf8(&bytes[skipped..]).map_err(|e| FileError::NotUtf8 {
        path: path.clone(),
        at: skipped + e.valid_up_to(),
    })?;
    Snapshot::from_json(text).map_err(|source| FileError::Json { path, source })
}
