//! Symbolization: code addresses to file, line and function, from an ELF file's DWARF.
//!
//! One resolver serves both uses: this process's own executable (with the load bias of a
//! position-independent executable subtracted) and a firmware ELF read on the host (bias 0).
//! Inlined calls expand into their own frames, innermost first, through `addr2line`.
//!
//! Frames of allocation plumbing (the tracer itself, and the `alloc`, `core` and `std` code that
//! sits between a `Vec::push` and the allocator) are hidden unless asked for, so a push inside
//! `src/cache.rs:42` is reported at `src/cache.rs:42`. Paths inside the workspace the binary was
//! built in print relative to it.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use tracemalloc_core::{Frame, Resolver};

use crate::Error;

/// Resolves addresses with the debug info of one ELF file.
pub struct ElfResolver {
    loader: addr2line::Loader,
    bias: usize,
    roots: Vec<String>,
    show_plumbing: bool,
    cache: HashMap<usize, Option<Vec<Frame>>>,
    names: HashMap<String, Arc<str>>,
}

impl ElfResolver {
    /// Opens `path`; addresses are looked up after subtracting `bias` (the load bias of the
    /// file in the process that captured them; 0 for firmware and non-PIE executables).
    pub fn open(path: &Path, bias: usize) -> Result<ElfResolver, Error> {
        let loader = addr2line::Loader::new(path).map_err(|e| Error::Symbols {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        // Where relative paths start, best guess first: the workspace the binary was built in
        // (found from its `target` folder, then from the current directory's Cargo
        // workspace), then the current directory itself.
        let cwd = std::env::current_dir().ok();
        let roots = [
            workspace_of(path),
            cwd.as_deref().and_then(cargo_workspace_around),
            cwd.map(|d| d.display().to_string()),
        ]
        .into_iter()
        .flatten()
        .collect();
        Ok(ElfResolver {
            loader,
            bias,
            roots,
            show_plumbing: false,
            cache: HashMap::new(),
            names: HashMap::new(),
        })
    }

    /// The resolver for this process's executable.
    pub fn for_current_process() -> Result<ElfResolver, Error> {
        let exe = std::env::current_exe().map_err(|e| Error::Symbols {
            path: "current executable".into(),
            reason: e.to_string(),
        })?;
        let bias = main_program_bias().ok_or_else(|| Error::Symbols {
            path: exe.display().to_string(),
            reason: "the load address of the running program is known on Linux and macOS only"
                .into(),
        })?;
        ElfResolver::open(&exe, bias)
    }

    /// Shows (`true`) or hides (`false`, the default) allocation plumbing frames.
    pub fn show_plumbing(&mut self, show: bool) {
        if self.show_plumbing != show {
            self.cache.clear();
        }
        self.show_plumbing = show;
    }

    fn intern(&mut self, s: &str) -> Arc<str> {
        if let Some(name) = self.names.get(s) {
            return name.clone();
        }
        let name: Arc<str> = Arc::from(s);
        self.names.insert(s.to_owned(), name.clone());
        name
    }

    fn relative(&self, file: &str) -> String {
        for root in &self.roots {
            if let Some(rest) = file.strip_prefix(root.as_str()) {
                if let Some(rest) = rest.strip_prefix('/') {
                    return rest.to_owned();
                }
            }
        }
        file.to_owned()
    }

    /// The demangled name of the symbol-table function at or before `probe`, without hashes
    /// or crate disambiguators (`__rustc::__rust_alloc`, not `__rustc[b7974e86…]::…`).
    fn symbol_at(&self, probe: u64) -> Option<String> {
        Some(format!(
            "{:#}",
            rustc_demangle::demangle(self.loader.find_symbol(probe)?)
        ))
    }

    fn lookup(&mut self, address: usize) -> Option<Vec<Frame>> {
        let probe = address.checked_sub(self.bias)? as u64;
        let mut found = Vec::new();
        let mut frames = self.loader.find_frames(probe).ok()?;
        while let Ok(Some(frame)) = frames.next() {
            let function = frame
                .function
                .as_ref()
                .and_then(|f| f.demangle().ok())
                .map(|name| strip_hash(&name).to_owned());
            let (file, line) = match &frame.location {
                Some(loc) => (loc.file.map(|f| f.to_owned()), loc.line.unwrap_or(0)),
                None => (None, 0),
            };
            found.push((function, file, line));
        }
        drop(frames);
        if let Some((function @ None, _, _)) = found.last_mut() {
            // Line tables without names (`debug = "line-tables-only"` leaves the allocator
            // shim `__rg_alloc` nameless): the outermost frame is the function the symbol table
            // names at this address, and that name tells plumbing from the application.
            *function = self.symbol_at(probe);
        }
        if found.is_empty() {
            // No DWARF for this address: the symbol table may still name the function. Such
            // frames (C runtime, code built without debug info) are shown only with plumbing,
            // since the nearest symbol can be a neighbour's.
            if !self.show_plumbing {
                return Some(Vec::new());
            }
            found.push((Some(self.symbol_at(probe)?), None, 0));
        }
        let mut out = Vec::with_capacity(found.len());
        for (function, file, line) in found {
            if !self.show_plumbing && is_plumbing(function.as_deref(), file.as_deref()) {
                continue;
            }
            let filename = match &file {
                Some(file) => self.relative(file),
                None => format!("<{}>", function.as_deref().unwrap_or("unknown")),
            };
            let filename = self.intern(&filename);
            let function = function.map(|f| self.intern(&f));
            out.push(Frame {
                filename,
                lineno: line,
                function,
            });
        }
        Some(out)
    }
}

impl Resolver for ElfResolver {
    fn resolve(&mut self, address: usize, out: &mut Vec<Frame>) -> bool {
        let resolved = match self.cache.get(&address) {
            Some(hit) => hit.clone(),
            None => {
                let found = self.lookup(address);
                self.cache.insert(address, found.clone());
                found
            }
        };
        match resolved {
            Some(frames) => {
                out.extend(frames);
                true
            }
            None => false,
        }
    }
}

/// `name::h0123456789abcdef` without the hash.
fn strip_hash(name: &str) -> &str {
    match name.rsplit_once("::h") {
        Some((head, hash)) if hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit()) => {
            head
        }
        _ => name,
    }
}

/// Whether a frame is allocation plumbing rather than the application's code.
fn is_plumbing(function: Option<&str>, file: Option<&str>) -> bool {
    if let Some(file) = file {
        // The standard library's sources (and the crates it vendors, such as hashbrown), and
        // this crate's: an inlined frame carries only its short name (`alloc<System>`), so the
        // wrapper's own method inlined into `__rust_alloc` is known by its file alone.
        const OWN_SOURCES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src/");
        if file.starts_with("/rustc/")
            || file.starts_with("/rust/deps/")
            || file.starts_with(OWN_SOURCES)
        {
            return true;
        }
    }
    let Some(function) = function else {
        return false;
    };
    let function = function.trim_start_matches('<');
    const PREFIXES: &[&str] = &[
        "tracemalloc::",
        "tracemalloc_core::",
        "tracemalloc_embedded::",
        "alloc::",
        "core::",
        "std::",
        "__rust_",
        "__rustc::",
        "__rdl_",
        "__rg_",
        "__libc_",
        "_start",
    ];
    PREFIXES.iter().any(|p| function.starts_with(p)) || (file.is_none() && function == "main")
}

/// The workspace an ELF file was built in: the folder holding the `target` folder it is in.
fn workspace_of(path: &Path) -> Option<String> {
    let path = path.canonicalize().ok()?;
    let mut dir: Option<&Path> = path.parent();
    while let Some(d) = dir {
        if d.file_name().is_some_and(|n| n == "target") {
            return d.parent().map(|p| p.display().to_string());
        }
        dir = d.parent();
    }
    None
}

/// The nearest folder at or above `dir` whose `Cargo.toml` declares a `[workspace]`, else the
/// nearest with a `Cargo.toml` at all (cargo runs tests in the package's folder, and a binary
/// may be built into a target folder elsewhere).
fn cargo_workspace_around(dir: &Path) -> Option<String> {
    let mut package = None;
    for d in dir.ancestors() {
        let Ok(manifest) = std::fs::read_to_string(d.join("Cargo.toml")) else {
            continue;
        };
        if manifest.lines().any(|l| l.trim() == "[workspace]") {
            return Some(d.display().to_string());
        }
        package.get_or_insert_with(|| d.display().to_string());
    }
    package
}

/// The load bias of the main executable (0 unless it is position-independent), where this
/// platform says it: elsewhere a guess could name the wrong lines.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn main_program_bias() -> Option<usize> {
    unsafe extern "C" fn first(
        info: *mut libc::dl_phdr_info,
        _size: libc::size_t,
        data: *mut libc::c_void,
    ) -> libc::c_int {
        // SAFETY: `dl_iterate_phdr` passes a valid `info`, and `data` is the `&mut usize` given
        // below, alive for the whole call.
        unsafe { *(data as *mut usize) = (*info).dlpi_addr as usize };
        1 // the first object is the main program: stop
    }
    let mut bias = 0usize;
    // SAFETY: the callback only writes through `data`, which points to `bias`.
    unsafe { libc::dl_iterate_phdr(Some(first), (&mut bias as *mut usize).cast()) };
    Some(bias)
}

#[cfg(target_vendor = "apple")]
fn main_program_bias() -> Option<usize> {
    // dyld's own API, in libSystem (libc's binding is deprecated in favour of another crate).
    extern "C" {
        fn _dyld_get_image_vmaddr_slide(image_index: u32) -> isize;
    }
    // SAFETY: dyld's image 0 is the main executable, loaded for the whole life of the process;
    // the call only reads dyld's table of images.
    Some(unsafe { _dyld_get_image_vmaddr_slide(0) } as usize)
}

#[cfg(not(any(target_os = "linux", target_os = "android", target_vendor = "apple")))]
fn main_program_bias() -> Option<usize> {
    None
}

/// Where an `ElfResolver` for the running process is cached between snapshots.
static RESOLVER: std::sync::Mutex<Option<Result<ElfResolver, ()>>> = std::sync::Mutex::new(None);

/// The resolver's lock, held across `fork()` by the tracer's fork handlers: a child forked while
/// another thread was symbolizing would otherwise find it locked for ever.
#[cfg(unix)]
pub(crate) struct ForkHold(
    #[allow(dead_code)] std::sync::MutexGuard<'static, Option<Result<ElfResolver, ()>>>,
);

// SAFETY: a hold is taken in the fork's prepare handler and dropped in its parent or child
// handler, that is by the thread that took it or by that thread's copy in the child, which is
// how a mutex must be unlocked.
#[cfg(unix)]
unsafe impl Send for ForkHold {}

/// Takes the resolver's lock for the duration of a `fork()`.
#[cfg(unix)]
pub(crate) fn hold_for_fork() -> ForkHold {
    ForkHold(RESOLVER.lock().unwrap_or_else(|e| e.into_inner()))
}

/// Runs `f` with the running process's resolver, created on first use.
pub(crate) fn with_process_resolver<R>(f: impl FnOnce(&mut dyn Resolver) -> R) -> R {
    let mut slot = RESOLVER.lock().unwrap_or_else(|e| e.into_inner());
    let resolver = slot.get_or_insert_with(|| ElfResolver::for_current_process().map_err(|_| ()));
    match resolver {
        Ok(resolver) => {
            resolver.show_plumbing(crate::show_plumbing());
            f(resolver)
        }
        Err(()) => f(&mut tracemalloc_core::snapshot::AddressesOnly),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_stripped_from_symbol_names() {
        assert_eq!(
            strip_hash("app::cache::insert::h0123456789abcdef"),
            "app::cache::insert"
        );
        assert_eq!(strip_hash("app::cache::hello"), "app::cache::hello");
    }

    #[test]
    fn std_and_tracer_frames_are_plumbing_and_user_frames_are_not() {
        assert!(is_plumbing(Some("alloc::raw_vec::finish_grow"), None));
        assert!(is_plumbing(
            Some("<alloc::vec::Vec<T> as core::clone::Clone>::clone"),
            None
        ));
        assert!(is_plumbing(
            Some("x"),
            Some("/rustc/abc/library/alloc/src/vec/mod.rs")
        ));
        assert!(!is_plumbing(
            Some("leaky_service::Cache::insert"),
            Some("examples/leaky_service.rs")
        ));
    }

    #[test]
    fn the_workspace_is_found_from_a_member_folder() {
        let member = Path::new(env!("CARGO_MANIFEST_DIR"));
        let root = cargo_workspace_around(member).unwrap();
        assert_eq!(Path::new(&root), member.parent().unwrap());
    }

    #[test]
    fn own_executable_resolves_a_function_address() {
        let mut resolver = ElfResolver::for_current_process().expect("own executable");
        resolver.show_plumbing(true);
        let address = own_executable_resolves_a_function_address as fn() as usize;
        let mut out = Vec::new();
        assert!(resolver.resolve(address, &mut out));
        assert!(
            out.iter().any(|f| f.filename.ends_with("symbolize.rs")),
            "{out:?}"
        );
    }
}
