//! Which code addresses are allocation plumbing, known while a stack is captured.
//!
//! A traceback shows `nframe` frames of the application. The plumbing between the application
//! and the allocator (`Vec::push` → `RawVecInner::grow_one` → `finish_grow` → `__rust_realloc`)
//! is hidden when a snapshot is symbolized, so a capture must take more frames than it shows.
//! How many more depends on the stack: none where `Box::new` is inlined into its caller, four or
//! five through a `Vec`'s growth, some between the application's frames where std calls back
//! into it (`OnceLock::get_or_init`, `Iterator::collect`). A fixed allowance was wrong both
//! ways, and on deep stacks it was costly: its frames lay beyond the ones shown, and in
//! recursive code they made nearly every stack distinct (one `tree` of 262 k nodes stored
//! 262 k tracebacks; 131 k now, `total_nframe` being part of a traceback as in CPython).
//!
//! So when tracing first starts, the symbol table of the object that holds the tracer is read
//! once into a bitmap, one bit per 16 bytes of its code, marking the functions whose names are
//! plumbing. A capture walks as many frames as before (`nframe` and the allowance), and a stack
//! longer than `nframe` then ends at its `nframe`-th frame the map does not mark, the marked
//! ones (at most the allowance) not counting: the check costs shorter stacks one compare. A
//! frame is judged by the function that holds its return address, the outermost of those
//! inlined there, and the map errs towards keeping: std code with the application's closure
//! inlined into it is marked, and costs one frame more, never one fewer.

use core::sync::atomic::{AtomicPtr, AtomicU8, AtomicUsize, Ordering::*};

use tracemalloc_core::traceback::{fold_frame, HASH_SEED};

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
        is_marked(self.start, self.bits, address)
    }

    /// How many of `frames` (most recent first) a traceback of `nframe` frames keeps: through
    /// the `nframe`-th frame that is not plumbing, up to `allowance` plumbing frames not
    /// counting, wherever they lie (a snapshot hides plumbing between the application's frames
    /// too: `OnceLock::get_or_init`, `Iterator::collect`); all of them when fewer count. With
    /// the running hash (`fold_stack`) of the frames kept, folded on the way: a second pass
    /// over them and this function's own call were 30 % of the instructions nframe 1 (where
    /// nearly every stack is cut) cost beyond nframe 16 on the hashmap benchmark.
    #[inline(always)]
    pub(crate) fn frames_to_keep(
        &self,
        frames: &[usize],
        nframe: usize,
        allowance: usize,
    ) -> (usize, u64) {
        let mut uncounted = allowance;
        let mut counted = 0;
        let mut hash = HASH_SEED;
        for (i, &frame) in frames.iter().enumerate() {
            hash = fold_frame(hash, frame);
            if uncounted > 0 && self.contains(frame) {
                uncounted -= 1;
                continue;
            }
            counted += 1;
            if counted == nframe {
                return (i + 1, hash);
            }
        }
        (frames.len(), hash)
    }
}

/// Whether the bit of `address` is set in `bits`, a map of the code from `start`.
#[inline(always)]
fn is_marked(start: usize, bits: &[u64], address: usize) -> bool {
    let granule = address.wrapping_sub(start) >> GRANULE_SHIFT;
    // Granules past the last one lie in the last word's spare bits, which stay clear.
    bits.get(granule / 64)
        .is_some_and(|word| word >> (granule % 64) & 1 != 0)
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
    /// An empty map of `code`, in pages of its own, which a finished map keeps for the life of
    /// the process (like the code it describes): neither the inner allocator's memory, which
    /// `stop()` gives back in full, nor counted in `tracemalloc_memory()`. `None` without
    /// memory.
    fn new(code: std::ops::Range<usize>) -> Option<Builder> {
        // From a granule boundary, so that granules line up with function starts.
        let start = code.start & !((1 << GRANULE_SHIFT) - 1);
        let granules = code.end.saturating_sub(start).div_ceil(1 << GRANULE_SHIFT);
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
        // SAFETY: the mapping holds `words` zeroed, aligned words, and this is the only
        // reference to it; it is unmapped only by `discard`, which takes the builder, so the
        // `'static` slice never outlives it (a finished map is never unmapped).
        let bits = unsafe { core::slice::from_raw_parts_mut(ptr.cast::<u64>(), words) };
        Some(Builder {
            start,
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

    /// Gives the map's pages back, for a map that will not be used.
    fn discard(self) {
        // SAFETY: the mapping made in `new`, of this many words, which nothing else refers to.
        unsafe { libc::munmap(self.bits.as_mut_ptr().cast(), size_of_val(self.bits)) };
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
    // They are published once: `build` publishes only after taking `READING` from `NOT_READ`,
    // which a child forked after the publication never goes back to (`after_fork_in_child`).
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
        .is_err()
    {
        return;
    }
    let done = match read() {
        Read::Map(map) => {
            publish(map);
            READ
        }
        Read::Nothing => READ,
        Read::Later => NOT_READ,
    };
    PROGRESS.store(done, Release);
}

/// In a child forked while a thread was reading the map: that thread does not exist here, so the
/// next start reads it again, unless the map was published already.
#[cfg(unix)]
pub(crate) fn after_fork_in_child() {
    let done = if PUBLISHED.0.bits.load(Acquire).is_null() {
        NOT_READ
    } else {
        READ
    };
    let _ = PROGRESS.compare_exchange(READING, done, Relaxed, Relaxed);
}

/// What reading the map found.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
enum Read {
    Map(Map),
    /// No map to be had: the object has no symbol table, it does not describe the running code,
    /// or this platform has no way to find it.
    Nothing,
    /// Not now: the symbolizer holds the list of objects (a first snapshot loading debug info
    /// can take seconds, and a start should not wait for it).
    Later,
}

/// Whether a function of this (demangled) name may be plumbing. Symbolization hides frames by
/// name and by file, and a symbol table has no files, so names stand in for the files, as they
/// do when symbolization has none: the names `symbolize::is_plumbing` hides without a file
/// (std's paths, the crates std vendors, std's impls of its traits for types without a path of
/// their own). Legacy mangling names an impl by its generic self type, so an impl for an
/// application's type (`<app::Tree as core::clone::Clone>`, derived or written) is the
/// application's code and is not marked; v0 mangling (`legacy` false) names the concrete type,
/// which cannot tell the two apart, and every impl of a std trait is marked, which only keeps a
/// frame more.
#[cfg(any(target_os = "linux", test))]
fn is_plumbing_symbol(name: &str, legacy: bool) -> bool {
    if crate::symbolize::is_plumbing(Some(name), None) {
        return true;
    }
    !legacy
        && crate::symbolize::self_and_trait(name)
            .is_some_and(|(_, trait_path)| crate::symbolize::is_std_owned(trait_path))
}

/// The map of the object holding this code, from its symbol table: nothing where objects
/// cannot be listed, without memory, when the object has no symbol table (stripped: captures
/// then take the whole allowance), or when the map does not mark this very function, which is
/// plumbing by name (a file that is not the code running: a wrong map would cut every stack
/// short, no map only keeps more frames; the file is the build loaded even where its path now
/// names another, see `symbolize::Module::file`). The file is mapped, not read, and names are
/// demangled into a buffer on the stack: the only allocations are the map, the list of objects
/// and `/proc/self/maps` read to find the object's file.
#[cfg(target_os = "linux")]
fn read() -> Read {
    use object::{Object, ObjectSymbol, SymbolKind};

    let here = read as fn() -> Read as usize;
    let (path, bias, code) = match crate::symbolize::object_holding(here) {
        Ok(Some(found)) => found,
        Ok(None) => return Read::Nothing,
        Err(crate::symbolize::Busy) => return Read::Later,
    };
    let Some(file) = crate::symbolize::MappedFile::open(&path) else {
        return Read::Nothing;
    };
    let Ok(elf) = object::File::parse(file.bytes()) else {
        return Read::Nothing;
    };
    let Some(mut map) = Builder::new(code) else {
        return Read::Nothing;
    };
    let mut functions = 0usize;
    let mut name = NameBuffer::default();
    for symbol in elf.symbols() {
        if symbol.kind() != SymbolKind::Text || symbol.size() == 0 {
            continue;
        }
        functions += 1;
        let Ok(mangled) = symbol.name() else { continue };
        if is_plumbing_symbol(name.demangle(mangled), mangled.starts_with("_ZN")) {
            map.mark(
                bias.wrapping_add(symbol.address() as usize),
                symbol.size() as usize,
            );
        }
    }
    if functions == 0 || !is_marked(map.start, map.bits, here) {
        map.discard();
        return Read::Nothing;
    }
    Read::Map(map.finish())
}

#[cfg(not(target_os = "linux"))]
fn read() -> Read {
    Read::Nothing
}

/// A demangled name, cut at 1 KiB (enough to tell a std path or a trait impl: only a v0
/// name whose self type alone is longer hides the trait).
#[cfg(any(target_os = "linux", test))]
struct NameBuffer {
    bytes: [u8; 1024],
    len: usize,
}

#[cfg(any(target_os = "linux", test))]
impl Default for NameBuffer {
    fn default() -> NameBuffer {
        NameBuffer {
            bytes: [0; 1024],
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
        // A name that does not fit ends the formatting with an error, and stays cut there.
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
        if take < s.len() {
            return Err(core::fmt::Error); // full: no later, shorter piece is spliced on
        }
        Ok(())
    }
}

/// Reads the map if no thread has yet, waiting for one that is (tests only).
#[cfg(test)]
pub(crate) fn build_and_wait() {
    let _guard = crate::guard::Guard::enter();
    while PROGRESS.load(Acquire) != READ {
        build(); // returns at once while another thread reads the map
        std::thread::yield_now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    fn test_map() -> Map {
        let mut builder = Builder::new(0x1000..0x2000).unwrap();
        builder.mark(0x1010, 0x20); // granules 1 and 2
        builder.mark(0x1ff8, 0x100); // the last granule, clipped
        builder.mark(0x800, 0x10); // below: ignored
        builder.finish()
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn marks_cover_whole_granules_and_stay_inside_the_map() {
        let map = test_map();
        assert!(!map.contains(0x100f));
        assert!(map.contains(0x1010) && map.contains(0x102f));
        assert!(!map.contains(0x1030));
        assert!(map.contains(0x1fff));
        assert!(!map.contains(0x2000) && !map.contains(0x800) && !map.contains(0));
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn a_traceback_ends_at_its_limit_of_frames_that_are_not_plumbing() {
        let map = test_map();
        let (p, a) = (0x1010, 0x1100); // plumbing, application
                                       // Plumbing before, between and after: skipped wherever it lies.
        let frames = [p, a, p, a, a, a];
        let kept = |frames: &[usize], nframe, allowance| {
            let (kept, hash) = map.frames_to_keep(frames, nframe, allowance);
            // The hash is that of the frames kept.
            let folded = tracemalloc_core::traceback::fold_stack(&frames[..kept]);
            assert_eq!(hash, folded);
            kept
        };
        assert_eq!(kept(&frames, 1, 8), 2);
        assert_eq!(kept(&frames, 2, 8), 4);
        assert_eq!(kept(&frames, 3, 8), 5);
        // Fewer frames that count than the limit: all kept.
        assert_eq!(kept(&frames, 5, 8), 6);
        // The allowance caps the plumbing that does not count.
        assert_eq!(kept(&frames, 2, 1), 3);
        assert_eq!(kept(&frames, 2, 0), 2);
        assert_eq!(kept(&[p, p, p, a], 1, 2), 3);
        assert_eq!(kept(&[], 1, 8), 0);
    }

    #[test]
    fn long_names_are_cut_at_a_character_boundary() {
        let mut name = NameBuffer::default();
        assert_eq!(
            name.demangle("_ZN5alloc7raw_vec11finish_grow17h0123456789abcdefE"),
            "alloc::raw_vec::finish_grow"
        );
        let long = "é".repeat(1000);
        let cut = name.demangle(&long);
        assert!(cut.len() <= 1024 && cut.len() >= 1022 && long.starts_with(cut));
    }

    #[test]
    fn std_paths_and_std_impls_are_plumbing_names() {
        for (name, legacy) in [
            ("alloc::raw_vec::finish_grow", true),
            (
                "<u8 as alloc::vec::spec_from_elem::SpecFromElem>::from_elem",
                true,
            ),
            ("<T as alloc::string::ToString>::to_string", true),
            ("<&T as core::fmt::Display>::fmt", true),
            ("hashbrown::raw::RawTable<T,A>::reserve_rehash", true),
            ("gimli::read::unit::Unit<R>::new", true),
            ("__rust_alloc", true),
            // v0 names the concrete type: an impl of a std trait is marked whatever it is for.
            ("<app::Key as alloc::string::ToString>::to_string", false),
            // std's own code, as v0 names it: inherent methods of types without a path, and
            // traits local to a function.
            ("<str>::to_lowercase", false),
            ("<[u8]>::to_ascii_uppercase", false),
            (
                "<&str as <alloc::ffi::c_str::CString>::new::SpecNewImpl>::spec_new_impl",
                false,
            ),
            (
                "<u8 as <[_]>::to_vec_in::ConvertVec>::to_vec::<alloc::alloc::Global>",
                false,
            ),
            // std's impl for a reference to a std type.
            (
                "<&alloc::string::String as core::str::pattern::Pattern>::is_prefix_of",
                true,
            ),
        ] {
            assert!(is_plumbing_symbol(name, legacy), "{name}");
        }
        for (name, legacy) in [
            ("app::cache::Cache::insert", true),
            ("app::cache::Cache::insert", false),
            // Legacy names the application's own impl by its type: its code, not std's.
            ("<app::Tree as core::clone::Clone>::clone", true),
            ("<app::Key as app::Encode>::encode", true),
            ("<&app::Tree as core::fmt::Display>::fmt", true),
            ("<app::Cache>::insert", false),
            ("<dyn app::Store>::insert", false),
            // The application's trait, for a std type or a primitive.
            ("<alloc::string::String as app::Encode>::encode", true),
            ("<alloc::string::String as app::Encode>::encode", false),
            ("<u8 as app::Encode>::encode", false),
        ] {
            assert!(!is_plumbing_symbol(name, legacy), "{name}");
        }
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn std_functions_are_marked() {
        build_and_wait();
        let map = map().expect("the test binary has a symbol table");
        let reserve = <Vec<u8>>::reserve as fn(&mut Vec<u8>, usize) as usize;
        assert!(map.contains(reserve + 1), "Vec::reserve is plumbing");
        assert!(map.contains(read as fn() -> Read as usize));
        assert!(!map.contains(usize::MAX));
        // The application's functions are not: `tests/tests/allocator.rs` checks that.
    }
}
