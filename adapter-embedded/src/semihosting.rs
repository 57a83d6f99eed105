//! Writing a file on the debugging host through ARM semihosting.
//!
//! The snapshot is dumped as a file rather than through the defmt stream because the host CLI
//! reads files: under QEMU (`-semihosting-config enable=on,target=native`) and under a probe
//! with semihosting enabled, `HostFile::create(c"snapshot.tmsnap")` creates the file in the
//! debugger's working directory. Semihosting halts the core on every call, so only use it at a
//! point where the firmware can afford a pause; without a debugger attached it hard-faults.

use core::ffi::CStr;

use cortex_m_semihosting::{nr, syscall};
use tracemalloc_core::codec::Sink;

/// Why a host file operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum HostFileError {
    /// The host refused to open the file.
    Open,
    /// The host accepted fewer bytes than written.
    Write,
}

impl core::fmt::Display for HostFileError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            HostFileError::Open => "the host could not open the file",
            HostFileError::Write => "the host did not take every byte",
        })
    }
}

/// Bytes gathered before one write call: each call halts the core, so fewer is faster.
const BUFFER: usize = 128;

/// A file on the host, open for writing and buffered; flushed and closed by [`HostFile::finish`]
/// or on drop. It is a snapshot [`Sink`]: the first failed write is kept for `finish`.
#[derive(Debug)]
pub struct HostFile {
    handle: usize,
    buf: [u8; BUFFER],
    len: usize,
    error: Option<HostFileError>,
}

impl HostFile {
    /// Creates (or truncates) `path` on the host, in binary mode.
    pub fn create(path: &CStr) -> Result<HostFile, HostFileError> {
        let name = path.to_bytes();
        // SAFETY: SYS_OPEN reads `name.len()` bytes at `name` plus its NUL terminator, which
        // `CStr` guarantees; the host writes nothing into our memory.
        let handle = unsafe { syscall!(OPEN, name.as_ptr(), nr::open::W_TRUNC_BINARY, name.len()) };
        if handle as isize == -1 {
            return Err(HostFileError::Open);
        }
        Ok(HostFile {
            handle,
            buf: [0; BUFFER],
            len: 0,
            error: None,
        })
    }

    /// Writes all of `bytes` now, bypassing the buffer.
    fn write_now(&mut self, bytes: &[u8]) {
        if bytes.is_empty() || self.error.is_some() {
            return;
        }
        // SAFETY: SYS_WRITE reads `bytes.len()` bytes at `bytes` from a handle SYS_OPEN gave.
        let not_written = unsafe { syscall!(WRITE, self.handle, bytes.as_ptr(), bytes.len()) };
        if not_written != 0 {
            self.error = Some(HostFileError::Write);
        }
    }

    fn flush(&mut self) {
        let buf = self.buf;
        self.write_now(&buf[..self.len]);
        self.len = 0;
    }

    /// Flushes and closes the file; the first error of any write, if one failed.
    pub fn finish(mut self) -> Result<(), HostFileError> {
        self.flush();
        self.error.take().map_or(Ok(()), Err)
    }
}

impl Sink for HostFile {
    fn write(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.len == BUFFER {
                self.flush();
            }
            let n = bytes.len().min(BUFFER - self.len);
            self.buf[self.len..self.len + n].copy_from_slice(&bytes[..n]);
            self.len += n;
            bytes = &bytes[n..];
        }
    }
}

impl Drop for HostFile {
    fn drop(&mut self) {
        self.flush();
        // SAFETY: SYS_CLOSE takes a handle SYS_OPEN gave, closed only here.
        unsafe { syscall!(CLOSE, self.handle) };
    }
}
