//! Cross-crate tests live in `tests/`; this library holds the helpers several of them share.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering::Relaxed};

use tracemalloc::{Filter, KeyType, Snapshot, TraceFilter};

/// A node of [`tree`].
pub struct Node(pub Option<Box<Node>>, pub Option<Box<Node>>);

impl Node {
    /// The addresses of this node and every node below it.
    pub fn addresses(&self, out: &mut Vec<usize>) {
        out.push(self as *const Node as usize);
        for child in [&self.0, &self.1].into_iter().flatten() {
            child.addresses(out);
        }
    }
}

/// A binary tree of `depth` levels (`2^depth - 1` nodes) built recursively: the left and right
/// calls return to different places, so every node is allocated from a call stack of its own.
#[inline(never)]
pub fn tree(depth: u32) -> Option<Box<Node>> {
    if depth == 0 {
        return None;
    }
    let left = tree(depth - 1);
    let right = tree(depth - 1);
    // `black_box`: no tail call, which a release build would make of the allocation.
    std::hint::black_box(Some(Box::new(Node(left, right))))
}

/// A MiB of address space aligned to a MiB, which the tracer's tables give to one shard: an
/// inner allocator cuts blocks from it, never reused, for tests that fill one shard's table.
#[repr(C, align(1048576))]
pub struct Arena {
    bytes: UnsafeCell<[u8; Arena::BYTES]>,
    used: AtomicUsize,
}

// SAFETY: disjoint parts are handed out through the atomic `used`, never the same bytes twice,
// and the arena itself never reads or writes them.
unsafe impl Sync for Arena {}

impl Arena {
    const BYTES: usize = 1 << 20;

    /// An arena with nothing handed out.
    pub const fn new() -> Arena {
        Arena {
            bytes: UnsafeCell::new([0; Arena::BYTES]),
            used: AtomicUsize::new(0),
        }
    }

    /// The next `step` bytes, aligned as the steps taken so far add up (all multiples of 64:
    /// 64-byte aligned), or null once the arena is used up.
    pub fn take(&self, step: usize) -> *mut u8 {
        let at = self.used.fetch_add(step, Relaxed);
        if at.saturating_add(step) > Arena::BYTES {
            return std::ptr::null_mut();
        }
        // SAFETY: `at + step` lies within the arena.
        unsafe { self.bytes.get().cast::<u8>().add(at) }
    }

    /// Whether `ptr` lies in the arena.
    pub fn contains(&self, ptr: *mut u8) -> bool {
        (ptr as usize).wrapping_sub(self.bytes.get() as usize) < Arena::BYTES
    }
}

impl Default for Arena {
    fn default() -> Self {
        Arena::new()
    }
}

/// The 1-based line of `source` that ends with the comment `// MARKER`: tests tag the lines
/// whose allocations they look for in snapshots.
pub fn marked_line(source: &str, marker: &str) -> u32 {
    let needle = format!("// {marker}");
    source
        .lines()
        .position(|l| l.trim_end().ends_with(&needle))
        .unwrap_or_else(|| panic!("marker {marker} not found")) as u32
        + 1
}

/// The GNU build id of the ELF file `elf` and the offset of its first byte in the file.
pub fn build_id_in(elf: &[u8]) -> Option<(Vec<u8>, usize)> {
    use object::Object;
    let file = object::File::parse(elf).ok()?;
    let id = file.build_id().ok()??;
    Some((id.to_vec(), id.as_ptr() as usize - elf.as_ptr() as usize))
}

/// The file at `path`, copied to `to` as another build: the same code and debug info under
/// another build id (`Some(byte)`, its first byte replaced) or none (`None`, its note no
/// longer a build id note).
pub fn copy_as_another_build(path: &std::path::Path, to: &std::path::Path, first: Option<u8>) {
    let mut elf = std::fs::read(path).unwrap();
    let (_, at) = build_id_in(&elf).expect("the file has a build id");
    match first {
        Some(byte) => elf[at] = byte,
        // The note's type word lies before its name, "GNU\0": type 0 is no build id.
        None => elf[at - 8..at - 4].fill(0),
    }
    std::fs::write(to, elf).unwrap();
}

/// Starts tracing with `nframe` frames in the tables, where frees are queued and tables grow
/// (shadow memory, which `Storage::Auto` picks on most hosts, does neither for small blocks).
pub fn start_in_tables(nframe: usize) {
    tracemalloc::start_with(tracemalloc::Config {
        nframe,
        storage: tracemalloc::Storage::Table,
        ..tracemalloc::Config::default()
    })
    .unwrap();
    assert_eq!(
        tracemalloc::storage_in_use(),
        Some(tracemalloc::Storage::Table)
    );
}

/// `n` blocks made by `make`, kept in a Vec allocated before the first of them.
pub fn blocks<T>(n: usize, make: impl Fn() -> T) -> Vec<T> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(make());
    }
    out
}

/// The traceback ids (indices into `snapshot.tracebacks`) of the traced blocks of exactly
/// `size` bytes, in the snapshot's order: tests give the blocks they look for a size of their own.
pub fn traceback_ids(snapshot: &Snapshot, size: u64) -> Vec<u32> {
    snapshot
        .traces
        .iter()
        .filter(|t| t.size == size)
        .map(|t| t.traceback)
        .collect()
}

/// `(size, count)` of the traced blocks allocated at `file:line` (the first frame's line).
pub fn traced_at(snapshot: &Snapshot, file: &str, line: u32) -> Option<(u64, u64)> {
    let only_file = [TraceFilter::Filter(Filter::new(true, file))];
    let stats = snapshot
        .filter_traces(&only_file)
        .statistics(KeyType::Lineno, false)
        .unwrap();
    stats
        .iter()
        .find(|s| s.traceback.frames[0].lineno == line)
        .map(|s| (s.size, s.count))
}

/// `(size, count)` of the traced blocks allocated at the line of `file` marked `marker`
/// (`source` is the file's text, `include_str!`), in a snapshot taken now.
pub fn traced_at_marker(file: &str, source: &str, marker: &str) -> Option<(u64, u64)> {
    let snapshot = tracemalloc::take_snapshot().unwrap();
    traced_at(&snapshot, file, marked_line(source, marker))
}

/// Defines, in a test file, `THIS_FILE` (its path, as snapshots name it), `SOURCE` (its text),
/// `line_of(marker)` (the line of it marked `// MARKER`, [`marked_line`]) and
/// `traced_here(marker)` (the blocks traced at that line now, [`traced_at_marker`]). A macro,
/// because `file!` and `include_str!` name the file they are written in; the path is from the
/// workspace's root, this crate's parent.
#[macro_export]
macro_rules! this_file {
    () => {
        #[allow(dead_code)]
        const THIS_FILE: &str = file!();
        #[allow(dead_code)]
        const SOURCE: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../", file!()));
        #[allow(dead_code)]
        fn line_of(marker: &str) -> u32 {
            $crate::marked_line(SOURCE, marker)
        }
        #[allow(dead_code)]
        fn traced_here(marker: &str) -> Option<(u64, u64)> {
            $crate::traced_at_marker(THIS_FILE, SOURCE, marker)
        }
    };
}

/// The system allocator, counting the bytes it has handed out and not yet taken back (in
/// [`LIVE`]): an inner allocator for tests that check what reaches it.
pub struct Counting;

/// Bytes [`Counting`] has handed out and not yet taken back.
pub static LIVE: AtomicI64 = AtomicI64::new(0);

// SAFETY: forwards to `System` unchanged; only counts sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is forwarded.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as i64, Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as i64, Relaxed);
        // SAFETY: the caller's contract is forwarded.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is forwarded.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as i64, Relaxed);
        }
        p
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's contract is forwarded.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_add(new_size as i64 - layout.size() as i64, Relaxed);
        }
        p
    }
}

/// Loads the shared library at `path` (for the rest of the process, or until `dlclose`) and
/// returns its handle and the address of its `symbol`; panics with the loader's reason.
#[cfg(unix)]
pub fn load_symbol(
    path: &std::path::Path,
    symbol: &std::ffi::CStr,
) -> (*mut libc::c_void, *mut libc::c_void) {
    use std::os::unix::ffi::OsStrExt;
    let reason = || {
        // SAFETY: `dlerror` returns null or a NUL-terminated message owned by the loader.
        let message = unsafe { libc::dlerror() };
        if message.is_null() {
            String::new()
        } else {
            // SAFETY: as above; copied before any other loader call.
            unsafe { std::ffi::CStr::from_ptr(message) }
                .to_string_lossy()
                .into_owned()
        }
    };
    let name = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: the test's own library; its initialisers are Rust's or none.
    let handle = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    assert!(!handle.is_null(), "dlopen {}: {}", path.display(), reason());
    // SAFETY: `handle` is a loaded library; `symbol` is NUL-terminated.
    let address = unsafe { libc::dlsym(handle, symbol.as_ptr()) };
    assert!(!address.is_null(), "dlsym {symbol:?}: {}", reason());
    (handle, address)
}

/// The system allocator, except that each reallocation first calls the hook with its new size:
/// `true` makes it fail (null, the block untouched, as `GlobalAlloc::realloc` allows). For
/// tests of what the tracer does around the inner realloc: one that fails, or that waits.
pub struct ReallocHook(pub fn(usize) -> bool);

// SAFETY: forwards to `System` unchanged, except that a realloc the hook fails returns null,
// which leaves the old block valid and untouched; the hook sees only the size.
unsafe impl GlobalAlloc for ReallocHook {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is forwarded.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract is forwarded.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if (self.0)(new_size) {
            return std::ptr::null_mut();
        }
        // SAFETY: the caller's contract is forwarded.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Whether the block at `ptr` has a trace. The snapshot first applies this thread's queued
/// frees (tables only), as every question about the traces does.
pub fn traced_now(ptr: *const u8) -> bool {
    drop(tracemalloc::take_snapshot().unwrap());
    tracemalloc::object_traceback(ptr).is_some()
}
