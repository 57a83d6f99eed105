//! Snapshot files: `dump` writes the compact binary form, `load` reads either form (binary or
//! JSON, told apart by their first bytes).

use std::fmt;
use std::io::{self, Read};
use std::path::Path;

use tracemalloc_core::codec::binary::{DecodeError, MAGIC};
use tracemalloc_core::codec::json::JsonError;
use tracemalloc_core::Snapshot;

use crate::headroom;

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
            FileError::Binary {
                path,
                source: DecodeError::TooLarge { limit },
            } => write!(
                f,
                "{path}: {}",
                headroom::refusal("loading this snapshot", *limit)
            ),
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

/// Writes `snapshot` to `path` in the binary format (Python's `Snapshot.dump`). A regular
/// file there is replaced whole or not at all: the snapshot is written beside it and renamed
/// over it, so that a write that fails part-way (a full disk) keeps the last good snapshot.
/// Anything else (a pipe, a device) is written in place, as is a file in a directory where no
/// other file may be created.
pub fn dump(snapshot: &Snapshot, path: impl AsRef<Path>) -> Result<(), FileError> {
    let path = path.as_ref();
    let bytes = snapshot.dump_bytes();
    // The file a symbolic link names is replaced, not the link; a dangling link is followed.
    let target = match std::fs::canonicalize(path) {
        Ok(target) => Some(target),
        Err(_) if std::fs::symlink_metadata(path).is_err() => Some(path.to_owned()),
        Err(_) => None,
    };
    let replaced = target.and_then(|target| match std::fs::metadata(&target) {
        Ok(old) if old.is_file() => replace(&target, &bytes, Some(old.permissions())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => replace(&target, &bytes, None),
        _ => None,
    });
    replaced
        .unwrap_or_else(|| std::fs::write(path, &bytes))
        .map_err(|source| FileError::Io {
            path: path.display().to_string(),
            source,
        })
}

/// Writes `bytes` to a new file beside `target` and renames it over `target`, with the
/// permissions of the file it replaces (`old`). `None`, having written nothing, where the
/// new file may not be created.
fn replace(
    target: &Path,
    bytes: &[u8],
    old: Option<std::fs::Permissions>,
) -> Option<io::Result<()>> {
    use std::io::Write;
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

    // A file that may not be written is not replaced either (a read-only snapshot is kept).
    if old.is_some() {
        if let Err(e) = std::fs::OpenOptions::new().write(true).open(target) {
            return Some(Err(e));
        }
    }
    // Unique in this process, for threads dumping to one path at once.
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let mut name = std::ffi::OsString::from(".");
    name.push(target.file_name().unwrap_or_default());
    name.push(format!(
        ".{}-{}.tmp",
        std::process::id(),
        NEXT.fetch_add(1, Relaxed)
    ));
    let temp = target.with_file_name(name);
    let file = match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&temp)
    {
        Ok(file) => file,
        // No file may be created there, or no name longer than the target's (near the file
        // system's 255 bytes): written in place, as before.
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::PermissionDenied | io::ErrorKind::InvalidFilename
            ) =>
        {
            return None
        }
        Err(e) => return Some(Err(e)),
    };
    let write = |mut file: std::fs::File| {
        if let Some(old) = old {
            file.set_permissions(old)?;
        }
        file.write_all(bytes)?;
        // Some file systems report a full disk only now (NFS, delayed allocation).
        file.sync_all()
    };
    let written = write(file).and_then(|()| std::fs::rename(&temp, target));
    if written.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    Some(written)
}

/// Reads a snapshot written by [`dump`], by a device, or in the JSON form (Python's
/// `Snapshot.load`), from a regular file or a pipe (`/dev/stdin`, a shell's `<(...)`). A file
/// whose first 4 KiB begin neither form (or hold only whitespace) is not read to its end. A
/// binary file whose snapshot would take more than half the memory this process can still get
/// is refused ([`DecodeError::TooLarge`]) before it takes it: the other half is for the
/// reports made from it. So is a file, of either form, whose bytes alone pass that half.
pub fn load(path: impl AsRef<Path>) -> Result<Snapshot, FileError> {
    let path = path.as_ref();
    let name = path.display().to_string();
    let io_error = |source| FileError::Io {
        path: name.clone(),
        source,
    };
    let mut file = open_checked(path, Accept::RegularOrPipe).map_err(io_error)?;
    let mut bytes = Vec::new();
    (&mut file)
        .take(SNIFF)
        .read_to_end(&mut bytes)
        .map_err(io_error)?;
    // Neither form, or nothing but whitespace where a snapshot would have begun.
    let full_prefix = bytes.len() as u64 == SNIFF;
    match form(&bytes) {
        Some(Form::Neither) => return Err(FileError::NotASnapshot { path: name }),
        None if full_prefix => return Err(FileError::NotASnapshot { path: name }),
        _ => {}
    }
    // The file's own bytes within the same budget as what they decode to: a pipe may never
    // end, and without a memory limit an endless one would grow until the OOM killer came.
    let budget = headroom::for_one_step() as u64;
    let more = budget.saturating_sub(bytes.len() as u64).saturating_add(1);
    file.take(more).read_to_end(&mut bytes).map_err(io_error)?;
    if bytes.len() as u64 > budget {
        return Err(match form(&bytes) {
            Some(Form::Json) => io_error(io::Error::new(
                io::ErrorKind::OutOfMemory,
                headroom::refusal("reading this file", budget),
            )),
            _ => FileError::Binary {
                path: name,
                source: DecodeError::TooLarge { limit: budget },
            },
        });
    }
    parse_named(&bytes, name)
}

/// Bytes read before deciding whether a file can be a snapshot.
const SNIFF: u64 = 4096;
/// The UTF-8 byte-order mark some editors put before JSON.
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// The kinds of file a reader takes.
#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Accept {
    /// Regular files only: source files a snapshot names, firmware to map.
    Regular,
    /// Regular files and pipes: a snapshot the user names.
    RegularOrPipe,
}

/// Opens `path` for reading if it is a file of a kind `accept` takes, telling its kind before
/// opening it: opening a device has effects of its own (a watchdog starts, a serial port
/// resets its board, a terminal may become the controlling one), reading one may never end,
/// and a directory fails with an obscure error. Regular files are opened without waiting and
/// without taking a terminal (`O_NONBLOCK | O_NOCTTY` on Unix: special files that call
/// themselves regular, such as `/proc/kmsg`, then fail rather than block); a pipe is opened as
/// `cat` would, waiting for its writer. The kind is checked again on the open file, in case the
/// path changed in between (which protects reads of that file, not a later open by name).
pub(crate) fn open_checked(path: &Path, accept: Accept) -> io::Result<std::fs::File> {
    let is_pipe = |kind: std::fs::FileType| {
        #[cfg(unix)]
        let fifo = std::os::unix::fs::FileTypeExt::is_fifo(&kind);
        #[cfg(not(unix))]
        let fifo = {
            let _ = kind;
            false
        };
        accept == Accept::RegularOrPipe && fifo
    };
    let refused = || {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            match accept {
                Accept::Regular => "not a regular file",
                Accept::RegularOrPipe => "not a regular file or a pipe",
            },
        )
    };
    let kind = std::fs::metadata(path)?.file_type();
    if !kind.is_file() && !is_pipe(kind) {
        return Err(refused());
    }
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    if kind.is_file() {
        std::os::unix::fs::OpenOptionsExt::custom_flags(
            &mut options,
            libc::O_NONBLOCK | libc::O_NOCTTY,
        );
    }
    let file = options.open(path)?;
    let opened = file.metadata()?.file_type();
    if opened.is_file() || is_pipe(opened) {
        Ok(file)
    } else {
        Err(refused())
    }
}

/// Up to `max` bytes of the regular file at `path`, and whether it holds more (nothing is
/// read of a file that is larger when opened).
pub(crate) fn read_regular(path: &Path, max: u64) -> io::Result<(Vec<u8>, bool)> {
    let file = open_checked(path, Accept::Regular)?;
    if file.metadata()?.len() > max {
        return Ok((Vec::new(), true));
    }
    let mut bytes = Vec::new();
    file.take(max.saturating_add(1)).read_to_end(&mut bytes)?;
    let more = bytes.len() as u64 > max;
    bytes.truncate(max as usize);
    Ok((bytes, more))
}

/// What a file's first bytes make it.
#[derive(PartialEq)]
enum Form {
    Binary,
    Json,
    Neither,
}

/// The form that `bytes`, a file or its first bytes, begin; `None` while they hold nothing
/// but whitespace. Fewer bytes than the magic that begin it (none at all, too) are a binary
/// file cut short: a dump that never got further.
fn form(bytes: &[u8]) -> Option<Form> {
    if bytes.starts_with(MAGIC) || MAGIC.starts_with(bytes) {
        return Some(Form::Binary);
    }
    // JSON's whitespace, not ASCII's: a form feed would begin neither form.
    without_bom(bytes)
        .iter()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
        .map(|&b| if b == b'{' { Form::Json } else { Form::Neither })
}

fn without_bom(bytes: &[u8]) -> &[u8] {
    bytes.strip_prefix(BOM).unwrap_or(bytes)
}

/// Parses the bytes of a snapshot file of either form, within the memory [`load`] allows.
pub fn parse(bytes: &[u8]) -> Result<Snapshot, FileError> {
    parse_named(bytes, String::new())
}

/// [`parse`], with errors naming `path`.
fn parse_named(bytes: &[u8], path: String) -> Result<Snapshot, FileError> {
    match form(bytes) {
        Some(Form::Binary) => {
            return Snapshot::load_bytes_within(bytes, headroom::for_one_step())
                .map_err(|source| FileError::Binary { path, source });
        }
        Some(Form::Json) => {}
        _ => return Err(FileError::NotASnapshot { path }),
    }
    let text = without_bom(bytes);
    let skipped = bytes.len() - text.len();
    let text = std::str::from_utf8(text).map_err(|e| FileError::NotUtf8 {
        path: path.clone(),
        at: skipped + e.valid_up_to(),
    })?;
    Snapshot::from_json(text).map_err(|source| FileError::Json { path, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An empty file, or one cut within the magic (a dump that never got further), is a
    /// snapshot cut short, not a file of another kind.
    #[test]
    fn a_file_cut_within_the_magic_is_called_truncated() {
        for len in 0..MAGIC.len() {
            let err = parse(&MAGIC[..len]).unwrap_err();
            assert!(
                matches!(err, FileError::Binary { source: DecodeError::Truncated { at }, .. } if at == len),
                "{len} bytes: {err}"
            );
        }
        assert!(matches!(
            parse(b"TMSNOP"),
            Err(FileError::NotASnapshot { .. })
        ));
        assert!(matches!(parse(b" \n"), Err(FileError::NotASnapshot { .. })));
    }

    /// A name near the file system's limit leaves no room for a temporary name beside it: the
    /// dump is written in place, as before.
    #[test]
    #[cfg(unix)]
    fn a_name_too_long_for_a_temporary_one_is_dumped_in_place() {
        let dir = std::env::temp_dir().join(format!("tracemalloc-long-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s".repeat(250));
        let snapshot = tracemalloc_core::snapshot::snapshot_from_traces(16, []);
        let dumped = dump(&snapshot, &path);
        let dumped_again = dump(&snapshot, &path);
        let loaded = load(&path);
        std::fs::remove_dir_all(&dir).unwrap();
        dumped.unwrap();
        dumped_again.unwrap();
        assert_eq!(loaded.unwrap().traceback_limit, 16);
    }

    /// A dump that fails part-way (a full disk, here a file size limit) leaves the file it
    /// would have replaced as it was: a service dumping every few minutes to one path must
    /// not lose the last good snapshot to the next one.
    #[test]
    #[cfg(unix)]
    fn a_failed_dump_keeps_the_file_it_would_replace() {
        const NAME: &str = "files::tests::a_failed_dump_keeps_the_file_it_would_replace";
        let Some(dir) = std::env::var_os("TRACEMALLOC_TEST_DUMP_DIR") else {
            // In a process of its own: the file size limit would fail other tests' writes.
            let dir = std::env::temp_dir().join(format!("tracemalloc-dump-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let out = std::process::Command::new(std::env::current_exe().unwrap())
                .args(["--exact", NAME, "--test-threads=1"])
                .env("TRACEMALLOC_TEST_DUMP_DIR", &dir)
                .output()
                .unwrap();
            std::fs::remove_dir_all(&dir).unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(out.status.success(), "the limited process failed: {stdout}");
            // A renamed test would run nothing there, and pass.
            assert!(stdout.contains("1 passed"), "{stdout}");
            return;
        };
        let dir = std::path::PathBuf::from(dir);
        let path = dir.join("service.tmsnap");
        let old = tracemalloc_core::snapshot::snapshot_from_traces(16, []);
        dump(&old, &path).unwrap();
        let before = std::fs::read(&path).unwrap();
        let limit = libc::rlimit {
            rlim_cur: 4096,
            rlim_max: libc::RLIM_INFINITY,
        };
        // SAFETY: `limit` is a valid `rlimit`; only this process, which runs this test alone,
        // has its file size limited.
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_FSIZE, &limit) }, 0);
        // Ignored, a write past the limit fails with `EFBIG` instead of ending the process.
        // SAFETY: `SIG_IGN` installs no handler, so nothing runs in a signal context.
        let previous = unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
        assert_ne!(previous, libc::SIG_ERR);
        let long = "x".repeat(10_000);
        let frames = vec![tracemalloc_core::Frame::new(&long, 1)];
        let traceback = tracemalloc_core::Traceback::new(frames);
        let new = tracemalloc_core::snapshot::snapshot_from_traces(16, [(0, 64, traceback)]);
        assert!(new.dump_bytes().len() > 4096);
        assert!(matches!(dump(&new, &path), Err(FileError::Io { .. })));
        let after = std::fs::read(&path).unwrap();
        assert!(after == before, "the old file became {} bytes", after.len());
        // Nothing else is left beside it.
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
    }
}
