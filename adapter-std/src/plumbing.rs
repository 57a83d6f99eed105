//! Which code addresses are allocation plumbing, known while a stack is captured.
//!
//! A traceback shows `nframe` frames of the application. The plumbing between the application
//! and the allocator (`Vec::push` → `RawVecInner::grow_one` → `finish_grow` → `__rust_realloc`)
//! is hidden when a snapshot is symbolized, so a capture must take more frames than it shows.
//! How many more depends on the stack: none where `Box::new` is inlined into its caller, four or
//! five through a `Vec`'s growth. A fixed allowance was wrong both ways, and on deep stacks it
//! was costly: its frames lay beyond the ones shown, and in recursive code they made nearly
//! every stack distinct (one `tree` of 262 k nodes stored 262 k tracebacks for 65 k that
//! differ in what a snapshot shows).
//!
//! So when tracing first starts, the symbol table of the object that holds the tracer is read
//! once into a bitmap, one bit per 16 bytes of its code, marking the functions whose names are
//! plumbing. A capture walks as many frames as before (`nframe` and the allowance), and a stack
//! longer than `nframe` is then cut to its leading frames that the map marks (at most the
//! allowance) and `nframe` more: the check costs shorter stacks one compare. A frame is judged by the function that holds its return address, the
//! outermost of those inlined there, and the map errs towards keeping: std code with the
//! application's closure inlined into it is marked, as are the application's impls of std's
//! traits, and each costs one frame more, never one fewer.

use core::sync::atomic::{AtomicPtr, AtomicU8, AtomicUsize, Ordering::*};

use crate::state::OwnLine;

/// One bit per 16 bytes of an object's code, set where a plumbing function lies.
#[derive(Clone, Copy)]
pub(crate) struct Map {
    start: usize,
    bits: &'static [u64],
}

/// Bytes of code per bit: functions start on 16-byte boundaries on x86-64 (4 on AArch64, where a
/// granule shared with plumbing is marked, which only keeps a frame more).
const GRANULE_SHIFT: u32 = 4;

impl Map {
    /// Whether `address` lies in a plumbing function.
    #[inline(always)]
    pub(crate) fn contains(&self, address: usize) -> bool {
        let granule = address.wrapping_sub(self.start) >> GRANULE_SHIFT;
        // Granules past the last one lie in the last word's spare bits, which stay clear.
        self.bits
            .get(granule / 64)
            .is_some_and(|word| word >> (granule % 64) & 1 != 0)
    }
}

/// A map being made.
#[cfg(target_os = "linux")]
struct Builder {
    start: usize,
    granules: usize,
    bits: &'static mut [u64],
}

#[cfg(target_os = "linux")]
impl Builder {
    /// An empty map of `code`, in pages of its own that it keeps for the life of the process
    /// (like the code it describes): neither the inner allocator's memory, which `stop()` gives
    /// back in full, nor counted in `tracemalloc_memory()`. `None` without memory.
    fn new(code: std::ops::Range<usize>) -> Option<Builder> {
        let granules = (code.end - code.start).div_ceil(1 << GRANULE_SHIFT);
        let words = granules.div_ceil(64).max(1);
        // SAFETY: a new anonymous private mapping at an address of the kernel's choosing; it
        // touches no existing memory.
        let ptr = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                words * size_of::<u64>(),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return None;
        }
        // SAFETY: the mapping holds `words` zeroed, aligned words, is never unmapped, and this
        // is the only reference to it.
        let bits = unsafe { core::slice::from_raw_parts_mut(ptr.cast::<u64>(), words) };
        Some(Builder {
            start: code.start,
            granules,
            bits,
        })
    }

    /// Marks `len` bytes from `address`, clipped to the map.
    fn mark(&mut self, address: usize, len: usize) {
        if address < self.start || self.granules == 0 {
            return; // below the code: not ours
        }
        let end = address.saturating_add(len.max(1));
        let first = (address - self.start) >> GRANULE_SHIFT;
        let last = ((end - 1 - self.start) >> GRANULE_SHIFT).min(self.granules - 1);
        for granule in first..=last {
            self.bits[granule / 64] |= 1 << (granule % 64);
        }
    }

    fn finish(self) -> Map {
        Map {
            start: self.start,
            bits: self.bits,
        }
    }
}

/// The map, published once: its bits last (release), so that a reader that sees them sees the
/// rest. Atomics rather than a `OnceLock`: a thread never waits for another to read the symbol
/// table, and a child forked meanwhile, where that thread does not exist, never waits forever.
/// Read by every capture of a stack longer than the limit: on a line of its own.
struct Published {
    bits: AtomicPtr<u64>,
    words: AtomicUsize,
    start: AtomicUsize,
}

static PUBLISHED: OwnLine<Published> = OwnLine(Published {
    bits: AtomicPtr::new(core::ptr::null_mut()),
    words: AtomicUsize::new(0),
    start: AtomicUsize::new(0),
});

const NOT_READ: u8 = 0;
const READING: u8 = 1;
const READ: u8 = 2;

/// Whether the map was read (`READ`, even if there was none to read), is being read, or not.
static PROGRESS: AtomicU8 = AtomicU8::new(NOT_READ);

/// The map, once [`build`] has made one.
#[inline(always)]
pub(crate) fn map() -> Option<Map> {
    let published = &PUBLISHED.0;
    let bits = published.bits.load(Acquire);
    if bits.is_null() {
        return None;
    }
    // SAFETY: `publish` stored the length and the start before the bits (release, read above
    // with acquire); the bits were written before and are never written again or unmapped.
    let bits = unsafe { core::slice::from_raw_parts(bits, published.words.load(Relaxed)) };
    Some(Map {
        start: published.start.load(Relaxed),
        bits,
    })
}

fn publish(map: Map) {
    let published = &PUBLISHED.0;
    published.words.store(map.bits.len(), Relaxed);
    published.start.store(map.start, Relaxed);
    published.bits.store(map.bits.as_ptr().cast_mut(), Release);
}

/// Makes the map the first time it is called; later calls, and calls while another thread
/// makes it, return at once (captures take the whole allowance until it is there). Called by
/// `start` once tracing is on (a start that fails makes none) and by `take_snapshot`, outside
/// the allocator, with the tracer's guard held: listing the objects allocates.
pub(crate) fn build() {
    if PROGRESS
        .compare_exchange(NOT_READ, READING, Acquire, Relaxed)
        .is_ok()
    {
        if let Some(map) = read() {
            publish(map);
        }
        PROGRESS.store(READ, Release);
    }
}

/// In a child forked while a thread was reading the map: that thread does not exist here, so the
/// next start reads it again.
#[cfg(unix)]
pub(crate) fn after_fork_in_child() {
    let _ = PROGRESS.compare_exchange(READING, NOT_READ, Relaxed, Relaxed);
}

/// Whether a function of this name may be plumbing. Symbolization hides frames by name and by
/// file, and a symbol table has no files, so names stand in for the files: the `hashbrown` that
/// std vendors, and impls of std's traits (`<u8 as alloc::vec::spec_from_elem::SpecFromElem>`
/// behind `vec![0; n]`), the application's own impls among them, which only keep a frame more.
#[cfg(any(target_os = "linux", test))]
fn is_plumbing_symbol(name: &str) -> bool {
    const STD_TRAITS: [&str; 3] = [" as alloc::", " as core::", " as std::"];
    crate::symbolize::is_plumbing(Some(name), None)
        || name.trim_start_matches('<').starts_with("hashbrown::")
        || STD_TRAITS.iter().any(|t| name.contains(t))
}

/// The map of the object holding this code, from its symbol table; `None` where objects cannot
/// be listed, without memory, or when the object has no symbol table (stripped): captures then
/// take the whole allowance. The file is mapped, not read, and names are demangled into a
/// buffer on the stack: the only allocations are the map and the list of objects.
#[cfg(target_os = "linux")]
fn read() -> Option<Map> {
    use object::{Object, ObjectSymbol, SymbolKind};

    let here = read as fn() -> Option<Map> as usize;
    let (path, bias, code) = crate::symbolize::object_holding(here)?;
    let file = MappedFile::open(&path)?;
    let elf = object::File::parse(file.bytes()).ok()?;
    let mut map = Builder::new(code)?;
    let mut functions = 0usize;
    let mut name = NameBuffer::default();
    for symbol in elf.symbols() {
        if symbol.kind() != SymbolKind::Text || symbol.size() == 0 {
            continue;
        }
        functions += 1;
        let Ok(mangled) = symbol.name() else { continue };
        if is_plumbing_symbol(name.demangle(mangled)) {
            map.mark(
                bias.wrapping_add(symbol.address() as usize),
                symbol.size() as usize,
            );
        }
    }
    (functions > 0).then(|| map.finish())
}

#[cfg(not(target_os = "linux"))]
fn read() -> Option<Map> {
    None
}

/// A file mapped read-only for as long as this lives.
#[cfg(target_os = "linux")]
struct MappedFile {
    ptr: *mut libc::c_void,
    len: usize,
}

#[cfg(target_os = "linux")]
impl MappedFile {
    fn open(path: &std::path::Path) -> Option<MappedFile> {
        use std::os::fd::AsRawFd;
        let file = std::fs::File::open(path).ok()?;
        let len = usize::try_from(file.metadata().ok()?.len()).ok()?;
        if len == 0 {
            return None;
        }
        // SAFETY: a new private read-only mapping of an open file at an address of the
        // kernel's choosing; it touches no existing memory, and outlives the descriptor.
        let ptr = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        };
        (ptr != libc::MAP_FAILED).then_some(MappedFile { ptr, len })
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: `ptr..ptr + len` is mapped readable until `drop`, which needs `&mut self`.
        // A file truncated meanwhile would fault on the pages past its end; executables and
        // libraries in use are replaced, not truncated, by builds and package managers.
        unsafe { core::slice::from_raw_parts(self.ptr.cast::<u8>(), self.len) }
    }
}

#[cfg(target_os = "linux")]
impl Drop for MappedFile {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `open`, which no borrow outlives.
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}

/// A demangled name, cut at 256 bytes (enough to tell a std path or a trait impl).
#[cfg(any(target_os = "linux", test))]
struct NameBuffer {
    bytes: [u8; 256],
    len: usize,
}

#[cfg(any(target_os = "linux", test))]
impl Default for NameBuffer {
    fn default() -> NameBuffer {
        NameBuffer {
            bytes: [0; 256],
            len: 0,
        }
    }
}

#[cfg(any(target_os = "linux", test))]
impl NameBuffer {
    /// `mangled` demangled without hashes (`{:#}`), as far as it fits.
    fn demangle(&mut self, mangled: &str) -> &str {
        use core::fmt::Write;
        self.len = 0;
        let _ = write!(self, "{:#}", rustc_demangle::demangle(mangled));
        // Only whole characters are copied in.
        core::str::from_utf8(&self.bytes[..self.len]).unwrap_or("")
    }
}

#[cfg(any(target_os = "linux", test))]
impl core::fmt::Write for NameBuffer {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let room = self.bytes.len() - self.len;
        let mut take = s.len().min(room);
        while !s.is_char_boundary(take) {
            take -= 1;
        }
        self.bytes[self.len..self.len + take].copy_from_slice(&s.as_bytes()[..take]);
        self.len += take;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(target_os = "linux")]
    fn marks_cover_whole_granules_and_stay_inside_the_map() {
        let mut builder = Builder::new(0x1000..0x2000).unwrap();
        builder.mark(0x1010, 0x20); // granules 1 and 2
        builder.mark(0x1ff8, 0x100); // the last granule, clipped
        builder.mark(0x800, 0x10); // below: ignored
        let map = builder.finish();
        assert!(!map.contains(0x100f));
        assert!(map.contains(0x1010) && map.contains(0x102f));
        assert!(!map.contains(0x1030));
        assert!(map.contains(0x1fff));
        assert!(!map.contains(0x2000) && !map.contains(0x800) && !map.contains(0));
    }

    #[test]
    fn long_names_are_cut_at_a_character_boundary() {
        let mut name = NameBuffer::default();
        assert_eq!(
            name.demangle("_ZN5alloc7raw_vec11finish_grow17h0123456789abcdefE"),
            "alloc::raw_vec::finish_grow"
        );
        let long = "é".repeat(200);
        let cut = name.demangle(&long);
        assert!(cut.len() <= 256 && cut.len() >= 254 && long.starts_with(cut));
    }

    #[test]
    fn std_paths_and_std_trait_impls_are_plumbing_names() {
        for name in [
            "alloc::raw_vec::finish_grow",
            "<u8 as alloc::vec::spec_from_elem::SpecFromElem>::from_elem",
            "hashbrown::raw::RawTable<T,A>::reserve_rehash",
            "__rust_alloc",
        ] {
            assert!(is_plumbing_symbol(name), "{name}");
        }
        assert!(!is_plumbing_symbol("app::cache::Cache::insert"));
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn std_functions_are_marked() {
        let _guard = crate::guard::Guard::enter();
        while PROGRESS.load(Acquire) != READ {
            build(); // returns at once while another thread reads the map
            std::thread::yield_now();
        }
        let map = map().expect("the test binary has a symbol table");
        let reserve = <Vec<u8>>::reserve as fn(&mut Vec<u8>, usize) as usize;
        assert!(map.contains(reserve + 1), "Vec::reserve is plumbing");
        assert!(!map.contains(usize::MAX));
        // The application's functions are not: `tests/tests/allocator.rs` checks that.
    }
}
