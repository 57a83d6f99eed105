//! Symbolization: code addresses to file, line and function, from an ELF file's DWARF.
//!
//! One resolver serves both uses: an object of this process (with its load bias subtracted)
//! and a firmware ELF read on the host (bias 0). Inlined calls expand into their own frames,
//! innermost first, through `addr2line`. On Linux the running process's addresses are looked
//! up in the object that holds them: the executable, or a shared library it loaded (a `cdylib`
//! such as a Python extension that installs the tracer, or the C library).
//!
//! Frames of allocation plumbing (the tracer itself, and the `alloc`, `core` and `std` code that
//! sits between a `Vec::push` and the allocator) are hidden unless asked for, so a push inside
//! `src/cache.rs:42` is reported at `src/cache.rs:42`. Paths inside the workspace the binary was
//! built in print relative to it.

use std::collections::HashMap;
use std::ffi::OsString;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tracemalloc_core::{Frame, Resolver};

use crate::Error;

/// Resolves addresses with the debug info of one ELF file.
pub struct ElfResolver {
    loader: addr2line::Loader,
    bias: usize,
    /// The file's executable sections ([`code_ranges`]); empty when they could not be read.
    code: Vec<Range<u64>>,
    roots: Vec<String>,
    show_plumbing: bool,
    cache: HashMap<usize, Option<Vec<Frame>>>,
    names: HashMap<String, Arc<str>>,
    /// The file the symbol table is read from, for [`ElfResolver::function_containing`]:
    /// opened with the rest, as its path may name another build by the time it is read.
    file: Option<std::fs::File>,
    /// Its functions by address, read when first needed ([`functions_of`]).
    functions: Option<Vec<SizedFunction>>,
}

/// A function of the symbol table, with the size it gives: its name is sure for the addresses
/// it covers, where the nearest symbol before an address may be a neighbour's.
struct SizedFunction {
    start: u64,
    end: u64,
    /// As mangled: demangled only when shown.
    name: Box<str>,
}

impl ElfResolver {
    /// Opens `path`; addresses are looked up after subtracting `bias` (the load bias of the
    /// file in the process that captured them; 0 for firmware and non-PIE executables).
    pub fn open(path: &Path, bias: usize) -> Result<ElfResolver, Error> {
        ElfResolver::open_named_from(path, bias, roots_of(path))
    }

    /// [`ElfResolver::open`], naming source paths from `roots` ([`roots_for`]) rather than from
    /// its own file's: several files of one workspace, some kept outside its `target` folder
    /// (an older build), then name a line alike.
    pub(crate) fn open_named_from(
        path: &Path,
        bias: usize,
        roots: Vec<String>,
    ) -> Result<ElfResolver, Error> {
        ElfResolver::open_as(path, path, bias, roots)
    }

    /// Opens `file`, the build that `path` named when it was loaded (`file` differs once
    /// `path` has been replaced, see [`Module::file`]): `path` finds the workspace and names
    /// the file in errors.
    fn open_as(
        file: &Path,
        path: &Path,
        bias: usize,
        roots: Vec<String>,
    ) -> Result<ElfResolver, Error> {
        // A stripped build reads its lines from its separate debug file, where there is one.
        let debug = separate_debug_file(file, path);
        // `addr2line` also maps a DWARF package beside the file it reads when one exists,
        // opened by name: a FIFO there would block, a device never end. What it merely fails to
        // read (a directory, an unreadable file) it skips, and so does this check.
        let package = dwarf_package_of(debug.as_deref().unwrap_or(file));
        if let Ok(kind) = std::fs::metadata(&package).map(|m| m.file_type()) {
            if !kind.is_file() && !kind.is_dir() {
                return Err(Error::Symbols {
                    path: package.display().to_string(),
                    reason: format!(
                        "the DWARF package beside {} is not a regular file",
                        debug.as_deref().unwrap_or(path).display()
                    ),
                });
            }
        }
        let loader = addr2line::Loader::new(debug.as_deref().unwrap_or(file)).map_err(|e| {
            Error::Symbols {
                path: path.display().to_string(),
                reason: e.to_string(),
            }
        })?;
        Ok(ElfResolver {
            loader,
            bias,
            code: code_ranges(file),
            roots,
            show_plumbing: false,
            cache: HashMap::new(),
            names: HashMap::new(),
            file: std::fs::File::open(file).ok(),
            functions: None,
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
        let (file, path) = executable_file(exe);
        ElfResolver::open_as(&file, &path, bias, roots_of(&path))
    }

    /// Shows (`true`) or hides (`false`, the default) allocation plumbing frames.
    pub fn show_plumbing(&mut self, show: bool) {
        if self.show_plumbing != show {
            self.cache.clear();
        }
        self.show_plumbing = show;
    }

    /// Gives back the frames remembered for the addresses looked up so far.
    pub(crate) fn forget_lookups(&mut self) {
        self.cache = HashMap::new();
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

    /// The demangled name of the function whose symbol covers `probe`, by its size.
    fn function_containing(&mut self, probe: u64) -> Option<String> {
        let functions = self
            .functions
            .get_or_insert_with(|| self.file.as_ref().map(functions_of).unwrap_or_default());
        let after = functions.partition_point(|f| f.start <= probe);
        let function = functions[..after].last().filter(|f| probe < f.end)?;
        Some(format!("{:#}", rustc_demangle::demangle(&function.name)))
    }

    fn lookup(&mut self, address: usize) -> Option<Vec<Frame>> {
        let probe = address.checked_sub(self.bias)? as u64;
        if !self.code.is_empty() && !self.code.iter().any(|code| code.contains(&probe)) {
            return None; // no code there, whatever the debug info says
        }
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
            // names at this address, and that name tells plumbing from the application. (For a
            // function the table does not list, such as a stripped local one, the nearest
            // symbol before it is a neighbour's.)
            *function = self.symbol_at(probe);
        }
        if found.is_empty() {
            // No DWARF for this address (C runtime, code built without debug info): the symbol
            // table may still name the function. Where the function's own symbol covers the
            // address, it is shown by name (`<app::Cache::insert>:0`), a build without debug
            // info being better named by function than all `<unknown>:0`; with plumbing shown,
            // the nearest symbol before the address names it, which may be a neighbour's.
            let name = if self.show_plumbing {
                self.symbol_at(probe)?
            } else {
                match self.function_containing(probe) {
                    Some(name) => name,
                    None => return Some(Vec::new()),
                }
            };
            found.push((Some(name), None, 0));
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

/// The functions `file`'s symbol table gives a size, sorted by address; none when it cannot
/// be read.
fn functions_of(file: &std::fs::File) -> Vec<SizedFunction> {
    use object::{Object, ObjectSymbol};
    let cache = object::ReadCache::new(file);
    let Ok(object) = object::File::parse(&cache) else {
        return Vec::new();
    };
    let mut functions: Vec<SizedFunction> = object
        .symbols()
        .filter(|s| s.is_definition() && s.kind() == object::SymbolKind::Text && s.size() != 0)
        .filter_map(|s| {
            Some(SizedFunction {
                start: s.address(),
                end: s.address().checked_add(s.size())?,
                name: s.name().ok()?.into(),
            })
        })
        .collect();
    functions.sort_unstable_by_key(|f| f.start);
    functions
}

/// The address ranges of `file`'s executable sections: the only places a return address can
/// point to. Debug info may claim others: a function the linker discarded keeps its DWARF, its
/// start address set to 0, and would name addresses that hold no code (an incremental debug
/// build named 0x10 after a generic function this way). ELF sections count by their flags
/// (allocated and executable), whatever their type: a separate debug file keeps its code
/// sections' addresses with no contents (`NOBITS`), and firmware may place code in a section it
/// copies at run time (`NOLOAD`). Empty when the sections cannot be read; nothing is filtered
/// then.
fn code_ranges(file: &Path) -> Vec<Range<u64>> {
    use object::{Object, ObjectSection, SectionFlags};
    const CODE: u64 = (object::elf::SHF_ALLOC | object::elf::SHF_EXECINSTR) as u64;
    let Ok(file) = std::fs::File::open(file) else {
        return Vec::new();
    };
    let cache = object::ReadCache::new(&file);
    let Ok(object) = object::File::parse(&cache) else {
        return Vec::new();
    };
    object
        .sections()
        .filter(|section| match section.flags() {
            SectionFlags::Elf { sh_flags } => sh_flags & CODE == CODE,
            _ => section.kind() == object::SectionKind::Text,
        })
        .filter(|section| section.size() != 0)
        .map(|section| section.address()..section.address().saturating_add(section.size()))
        .collect()
}

/// Where distributions install separate debug files, and gdb looks for them.
const GLOBAL_DEBUG_DIR: &str = "/usr/lib/debug";

/// The separate debug file of `file`, a build without debug info of its own (`strip
/// --strip-debug`, after `objcopy --only-keep-debug`), found as gdb finds it: by its build id
/// (`/usr/lib/debug/.build-id/ab/cdef….debug`), or by the name its `.gnu_debuglink` section
/// holds, beside `path` (the name the build was loaded by), in `.debug/` there, or under
/// `/usr/lib/debug` and `path`'s folder. A candidate counts only if it is a regular file with
/// debug info of the same build: its build id equal to `file`'s, or, where `file` has none, its
/// CRC-32 the one the link records. `None` when `file` has debug info or nothing matches.
fn separate_debug_file(file: &Path, path: &Path) -> Option<PathBuf> {
    use object::{Object, ObjectSection};
    let has_debug_info = |object: &object::File<'_, &object::ReadCache<&std::fs::File>>| {
        [".debug_info", ".zdebug_info"]
            .iter()
            .any(|name| object.section_by_name(name).is_some_and(|s| s.size() != 0))
    };
    let opened = std::fs::File::open(file).ok()?;
    let cache = object::ReadCache::new(&opened);
    let object = object::File::parse(&cache).ok()?;
    if has_debug_info(&object) {
        return None;
    }
    let build_id = object.build_id().ok().flatten().map(<[u8]>::to_vec);
    let link = object.gnu_debuglink().ok().flatten();
    let mut candidates = Vec::new();
    if let Some(id) = build_id.as_deref().filter(|id| id.len() >= 2) {
        let hex = tracemalloc_core::build_id::Hex;
        candidates.push(Path::new(GLOBAL_DEBUG_DIR).join(format!(
            ".build-id/{}/{}.debug",
            hex(&id[..1]),
            hex(&id[1..])
        )));
    }
    let folder = std::fs::canonicalize(path)
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf));
    let link_name = link.and_then(|(name, _)| std::str::from_utf8(name).ok());
    if let (Some(name), Some(folder)) = (link_name, &folder) {
        let name = Path::new(name);
        // Only a file name: a link naming another folder (`../x`) is no debug link.
        if name.components().count() == 1 && name.file_name().is_some() {
            candidates.push(folder.join(name));
            candidates.push(folder.join(".debug").join(name));
            let under = folder.strip_prefix("/").unwrap_or(folder);
            candidates.push(Path::new(GLOBAL_DEBUG_DIR).join(under).join(name));
        }
    }
    candidates.into_iter().find(|candidate| {
        // A FIFO would block, a device never end.
        if !std::fs::metadata(candidate).is_ok_and(|m| m.is_file()) || candidate == file {
            return false;
        }
        let Ok(opened) = std::fs::File::open(candidate) else {
            return false;
        };
        let cache = object::ReadCache::new(&opened);
        let Ok(debug) = object::File::parse(&cache) else {
            return false;
        };
        let same_build = match (&build_id, link) {
            (Some(id), _) => debug.build_id().ok().flatten() == Some(id.as_slice()),
            (None, Some((_, crc))) => crc32_of(&opened) == Some(crc),
            (None, None) => false,
        };
        same_build && has_debug_info(&debug)
    })
}

/// The CRC-32 of a whole file, as `.gnu_debuglink` records its debug file's.
fn crc32_of(mut file: &std::fs::File) -> Option<u32> {
    use std::io::{Read, Seek};
    file.rewind().ok()?;
    let mut hasher = crc32fast::Hasher::new();
    let mut buffer = vec![0; 1 << 16];
    loop {
        match file.read(&mut buffer) {
            Ok(0) => return Some(hasher.finalize()),
            Ok(n) => hasher.update(&buffer[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
}

/// Where `addr2line`'s loader looks for the DWARF package of `file` (split debug info): the
/// same name with `.dwp` added to its extension (`fw.elf.dwp`), or as its extension (`app.dwp`).
fn dwarf_package_of(file: &Path) -> PathBuf {
    let extension = match file.extension() {
        Some(extension) => {
            // Even an empty one, as `fw.` has: `fw..dwp`.
            let mut extension = extension.to_os_string();
            extension.push(".dwp");
            extension
        }
        None => OsString::from("dwp"),
    };
    file.with_extension(extension)
}

/// Whether `file` is an ELF file, the only kind `--elf` takes: `addr2line` would also read a
/// Mach-O file, and search the `.dSYM` folders beside it for its debug info, opening every file
/// there by name.
pub(crate) fn is_elf(file: &std::fs::File) -> bool {
    let cache = object::ReadCache::new(file);
    matches!(
        object::FileKind::parse(&cache),
        Ok(object::FileKind::Elf32 | object::FileKind::Elf64)
    )
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
pub(crate) fn is_plumbing(function: Option<&str>, file: Option<&str>) -> bool {
    if let Some(file) = file {
        // The standard library's sources (and the crates it vendors, such as hashbrown), and
        // this crate's: an inlined frame carries only its short name (`alloc<System>`), so the
        // wrapper's own method inlined into `__rust_alloc` is known by its file alone.
        const OWN_SOURCES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src/");
        // A toolchain built elsewhere than rustup's (a distribution's, remapped under
        // `/usr/src/rustc-1.85.0/`) keeps std's sources under `library/` all the same, in a
        // folder named after rustc (not an application's own `library/core/src/`).
        const STD_SOURCES: [&str; 3] = [
            "/library/alloc/src/",
            "/library/core/src/",
            "/library/std/src/",
        ];
        if file.starts_with("/rustc/")
            || file.starts_with("/rust/deps/")
            || file.starts_with(OWN_SOURCES)
            || STD_SOURCES.iter().any(|std| {
                file.find(std).is_some_and(|at| {
                    file[..at]
                        .rsplit('/')
                        .next()
                        .is_some_and(|dir| dir.starts_with("rustc"))
                })
            })
        {
            return true;
        }
    }
    let Some(function) = function else {
        return false;
    };
    // `<Self as Trait>::item`: the trait's crate's code unless the trait is std's, as std
    // implements no other crate's trait (the program's trait for a std type, `<alloc::string::
    // String as app::Encode>::encode`, is the program's). An impl of a std trait may be std's or
    // the program's (`<alloc::string::String as core::convert::From<app::Error>>::from`): its
    // file tells, std's being checked above, and without one its name.
    let (owner, std_by_name) = match self_and_trait(function) {
        Some((_, trait_path)) if !is_std_path(trait_path.trim_start_matches('<')) => {
            (trait_path, true)
        }
        Some(_) => (function, file.is_none()),
        None => (function, true),
    };
    let owner = owner.trim_start_matches('<');
    const OWN: &[&str] = &[
        "tracemalloc::",
        "tracemalloc_core::",
        "tracemalloc_embedded::",
        "__rust_",
        "__rustc::",
        "__rdl_",
        "__rg_",
        "__libc_",
        "_start",
    ];
    // Where threads begin in glibc, named with lines once its separate debug file is found.
    const THREAD_START: &[&str] = &["start_thread", "clone", "clone3", "__clone", "__clone3"];
    OWN.iter().any(|p| owner.starts_with(p))
        || THREAD_START.contains(&function)
        || (std_by_name && is_std_path(owner))
        || (file.is_none() && (function == "main" || names_std_code(function)))
}

/// Whether a function's name alone says it is std's code, for a frame without a file to tell
/// (code built without debug info, named by its symbol): a function of a crate std vendors
/// (`hashbrown`'s, behind a `HashMap`'s growth), std's impl of its own trait for a type with
/// no path of its own (`<u8 as alloc::vec::spec_from_elem::SpecFromElem>` behind `vec![0; n]`,
/// `<T as alloc::slice::hack::ConvertVec>` behind `to_vec`), and, as std's own code names them
/// with v0 mangling, the inherent methods of such types (`<str>::to_lowercase`) and the traits
/// local to a std function (`<u8 as <[_]>::to_vec_in::ConvertVec>`). An impl of a std trait for
/// the application's type (`<app::Tree as core::clone::Clone>`) is the application's.
fn names_std_code(name: &str) -> bool {
    let bare = name.trim_start_matches('<');
    if VENDORED.iter().any(|c| bare.starts_with(c)) {
        return true;
    }
    match self_and_trait(name) {
        Some((self_type, trait_path)) => is_std_owned(trait_path) && is_std_owned(self_type),
        // v0's `<Self>::method`: an inherent method, which only std has on types without a path.
        None => name.starts_with('<') && is_std_owned(&name[1..]),
    }
}

/// The crates std vendors, as paths in a demangled name start.
const VENDORED: [&str; 9] = [
    "hashbrown::",
    "gimli::",
    "addr2line::",
    "object::",
    "miniz_oxide::",
    "adler2::",
    "memchr::",
    "rustc_demangle::",
    "std_detect::",
];

/// Whether the type or trait that `name` starts with (what follows it aside) is std's as far
/// as names tell: a path into std or a crate it vendors, or a type with no path of its own
/// past any reference (`u8`, `str`, `[T]`, `(A, B)`, `*const T`, `fn(T)`, a generic `T`),
/// which only std implements its traits for or gives methods.
pub(crate) fn is_std_owned(name: &str) -> bool {
    let name = name
        .trim_start_matches(['<', '&'])
        .trim_start_matches("mut ")
        .trim_start_matches("dyn ");
    if name.starts_with(['[', '(', '*']) {
        return true;
    }
    let end = name
        .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(name.len());
    let head = &name[..end];
    !head.contains("::") || is_std_path(head) || VENDORED.iter().any(|c| head.starts_with(c))
}

/// The crates std is built of, as paths in a demangled name start.
pub(crate) const STD_CRATES: [&str; 3] = ["alloc::", "core::", "std::"];

/// Whether `path` starts in one of [`STD_CRATES`].
pub(crate) fn is_std_path(path: &str) -> bool {
    STD_CRATES.iter().any(|c| path.starts_with(c))
}

/// `Self` and `Trait` (with what follows it) of a demangled name `<Self as Trait>::item`, split
/// at the ` as ` of the outer brackets: `Self` may hold brackets and an ` as ` of its own
/// (`<<I as core::iter::IntoIterator>::IntoIter as app::Ext>::f`). `None` for other names, such
/// as v0's inherent `<Self>::item`.
pub(crate) fn self_and_trait(name: &str) -> Option<(&str, &str)> {
    let inner = name.strip_prefix('<')?;
    let bytes = inner.as_bytes();
    let mut depth = 0usize;
    for (i, &byte) in bytes.iter().enumerate() {
        match byte {
            b'<' => depth += 1,
            b'>' if i > 0 && bytes[i - 1] == b'-' => {} // `fn() -> T`
            b'>' if depth == 0 => return None,
            b'>' => depth -= 1,
            b' ' if depth == 0 && inner[i..].starts_with(" as ") => {
                return Some((&inner[..i], &inner[i + 4..]));
            }
            _ => {}
        }
    }
    None
}

/// [`roots_for`] the one binary at `path`, from the current directory.
fn roots_of(path: &Path) -> Vec<String> {
    roots_for([path], std::env::current_dir().ok())
}

/// Where relative paths start for the debug info of `binaries`, best guess first: the
/// workspaces they were built in (found from their `target` folders), then the Cargo
/// workspace around `cwd` (the current directory), then `cwd` itself.
pub(crate) fn roots_for<'a>(
    binaries: impl IntoIterator<Item = &'a Path>,
    cwd: Option<PathBuf>,
) -> Vec<String> {
    let mut roots: Vec<String> = Vec::new();
    let guesses = binaries.into_iter().map(workspace_of).chain([
        cwd.as_deref().and_then(cargo_workspace_around),
        cwd.map(|d| d.display().to_string()),
    ]);
    for root in guesses.flatten() {
        if !roots.contains(&root) {
            roots.push(root);
        }
    }
    roots
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
        // Any directory above may hold a `Cargo.toml`, even one made a FIFO or a device.
        let Ok((manifest, false)) = crate::files::read_regular(&d.join("Cargo.toml"), 1 << 20)
        else {
            continue;
        };
        let manifest = String::from_utf8_lossy(&manifest);
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
    let mut bias = 0;
    for_each_object(|info, _| {
        bias = info.dlpi_addr as usize;
        false // the first object is the main program
    });
    Some(bias)
}

/// Calls `f` with each object the process has loaded, the executable first, and the size of
/// the loader's record of it, until `f` returns false. `f` runs under the loader's lock and must
/// not panic (the loader is C: a panic there aborts).
#[cfg(any(target_os = "linux", target_os = "android"))]
fn for_each_object<F: FnMut(&libc::dl_phdr_info, usize) -> bool>(mut f: F) {
    unsafe extern "C" fn each<F: FnMut(&libc::dl_phdr_info, usize) -> bool>(
        info: *mut libc::dl_phdr_info,
        size: libc::size_t,
        data: *mut libc::c_void,
    ) -> libc::c_int {
        // SAFETY: `dl_iterate_phdr` passes a valid `info` for the duration of the call, and
        // `data` is the `&mut F` given below, alive for the whole iteration.
        let (info, f) = unsafe { (&*info, &mut *(data as *mut F)) };
        libc::c_int::from(!f(info, size))
    }
    // SAFETY: `each::<F>` reads `data` as the `F` it is given, which outlives the call; the
    // loader passes each object's record only for the duration of its callback.
    unsafe { libc::dl_iterate_phdr(Some(each::<F>), (&mut f as *mut F).cast()) };
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

/// The running process's code: the objects it has loaded, each opened for symbols the first
/// time one of its addresses is asked for.
pub(crate) struct ProcessResolver {
    modules: Vec<Module>,
    /// Whether the list was read again since the last [`with_process_resolver`] call, for an
    /// address in none of its objects (a library loaded after the list was made).
    refreshed: bool,
    show_plumbing: bool,
    /// Objects the process had unloaded when the list was read: once that grows, a range of the
    /// list may hold another object, loaded where the unloaded one was.
    unloads: u64,
}

/// One object of the running process.
struct Module {
    /// Its code, as run-time address ranges.
    code: Vec<Range<usize>>,
    /// The path it was loaded from.
    path: PathBuf,
    /// A `/proc/self` link to the file as mapped, which outlives `path` ([`Module::file`]).
    #[cfg(target_os = "linux")]
    mapped: Option<PathBuf>,
    /// The GNU build id in the loaded image, to tell the file at `path` from another build.
    #[cfg(target_os = "linux")]
    build_id: Option<Vec<u8>>,
    /// The inode of the mapped file, as `/proc/self/maps` gives it (libraries only).
    #[cfg(target_os = "linux")]
    mapped_inode: Option<u64>,
    bias: usize,
    /// Opened on first use; `Err` for an object without a readable file (the vDSO).
    resolver: Option<Result<ElfResolver, ()>>,
}

impl ProcessResolver {
    fn new() -> ProcessResolver {
        ProcessResolver {
            unloads: unloads(),
            modules: loaded_modules(),
            refreshed: false,
            show_plumbing: false,
        }
    }

    fn module_of(&self, address: usize) -> Option<usize> {
        self.modules
            .iter()
            .position(|m| m.code.iter().any(|r| r.contains(&address)))
    }

    /// Reads the list again, keeping the objects already opened, or after an unload only the
    /// executable: a library rebuilt and loaded again at the same place has new debug info.
    fn refresh(&mut self) {
        let unloads = unloads();
        let keep = if unloads == self.unloads {
            self.modules.len()
        } else {
            1
        };
        self.unloads = unloads;
        let mut fresh = loaded_modules();
        for module in &mut fresh {
            let same = |old: &Module| old.path == module.path && old.bias == module.bias;
            if let Some(old) = self.modules.iter_mut().take(keep).find(|old| same(old)) {
                module.resolver = old.resolver.take();
            }
        }
        self.modules = fresh;
    }
}

impl Resolver for ProcessResolver {
    fn resolve(&mut self, address: usize, out: &mut Vec<Frame>) -> bool {
        let mut found = self.module_of(address);
        if found.is_none() && !self.refreshed {
            self.refreshed = true;
            self.refresh();
            found = self.module_of(address);
        }
        let Some(index) = found else {
            return false;
        };
        let module = &mut self.modules[index];
        // Which file holds the build is decided when it is first read, not when it was listed:
        // it may have been replaced in between.
        let opened = match module.resolver.take() {
            Some(opened) => opened,
            None => {
                let roots = roots_of(&module.path);
                ElfResolver::open_as(&module.file(), &module.path, module.bias, roots).map_err(drop)
            }
        };
        match module.resolver.insert(opened) {
            Ok(resolver) => {
                resolver.show_plumbing(self.show_plumbing);
                resolver.resolve(address, out)
            }
            Err(()) => false,
        }
    }
}

/// The objects the process has loaded, the executable first, each with its executable segments.
#[cfg(target_os = "linux")]
fn loaded_modules() -> Vec<Module> {
    let mut modules: Vec<Module> = Vec::new();
    // It allocates under the loader's lock, as std's own backtraces do; the caller holds the
    // tracer's guard, so those allocations go straight to the inner allocator.
    for_each_object(|info, _| {
        let bias = info.dlpi_addr as usize;
        let headers = if info.dlpi_phdr.is_null() {
            &[][..]
        } else {
            // SAFETY: a non-null `dlpi_phdr` points to the object's `dlpi_phnum` program
            // headers, mapped while it is loaded (the loader's lock is held during the call).
            unsafe { core::slice::from_raw_parts(info.dlpi_phdr, usize::from(info.dlpi_phnum)) }
        };
        let code = headers
            .iter()
            .filter(|h| h.p_type == libc::PT_LOAD && h.p_flags & libc::PF_X != 0)
            .map(|h| {
                let start = bias.wrapping_add(h.p_vaddr as usize);
                start..start.saturating_add(h.p_memsz as usize)
            })
            .collect();
        let build_id = headers
            .iter()
            .filter(|h| h.p_type == libc::PT_NOTE)
            .find_map(|note| {
                // Only notes inside a readable loaded segment are read.
                let start = note.p_vaddr;
                let end = start.checked_add(note.p_memsz)?;
                let loaded = headers.iter().any(|h| {
                    h.p_type == libc::PT_LOAD
                        && h.p_flags & libc::PF_R != 0
                        && h.p_vaddr <= start
                        && end <= h.p_vaddr.saturating_add(h.p_memsz)
                });
                if !loaded {
                    return None;
                }
                // SAFETY: the note lies inside a readable segment of the object, mapped while
                // it is loaded (the loader's lock is held during the call); it is copied.
                let notes = unsafe {
                    core::slice::from_raw_parts(
                        bias.wrapping_add(start as usize) as *const u8,
                        note.p_memsz as usize,
                    )
                };
                tracemalloc_core::build_id::from_notes(notes, note.p_align as usize)
                    .map(<[u8]>::to_vec)
            });
        let path = if info.dlpi_name.is_null() {
            PathBuf::new()
        } else {
            use std::os::unix::ffi::OsStrExt;
            // SAFETY: a non-null `dlpi_name` is a NUL-terminated string owned by the loader,
            // valid during the call; it is copied.
            let name = unsafe { core::ffi::CStr::from_ptr(info.dlpi_name) };
            PathBuf::from(std::ffi::OsStr::from_bytes(name.to_bytes()))
        };
        modules.push(Module {
            code,
            path,
            mapped: None,
            build_id,
            mapped_inode: None,
            bias,
            resolver: None,
        });
        true // on to the next object
    });
    // Any file the process maps may have a name that is not UTF-8: read lossily, such a line
    // still gives its numbers.
    let maps = std::fs::read("/proc/self/maps").unwrap_or_default();
    let maps = String::from_utf8_lossy(&maps);
    for (index, module) in modules.iter_mut().enumerate() {
        let executable = index == 0 && module.path.as_os_str().is_empty();
        let mapping = (!executable)
            .then(|| mapping_of(&maps, module.code.first()?.start))
            .flatten();
        module.path = if executable {
            // The executable comes first, without a name.
            std::env::current_exe().map(undeleted).unwrap_or_default()
        } else if module.path.is_relative() {
            // As given to `dlopen` (`./libx.so`), from the directory current then, which the
            // program may have left since: the kernel names the mapping by its absolute path.
            // (Unless that name is not UTF-8: read lossily, it names no file.) A bare name
            // (`linux-vdso.so.1`) has no file.
            let named = |name: &str| name.starts_with('/') && !name.contains('\u{fffd}');
            match (module.path.components().count(), &mapping) {
                (1, _) => PathBuf::new(),
                (_, Some((_, _, name))) if named(name) => undeleted(PathBuf::from(name)),
                _ => std::fs::canonicalize(&module.path).unwrap_or_default(),
            }
        } else {
            std::mem::take(&mut module.path)
        };
        module.mapped_inode = mapping.as_ref().map(|(_, inode, _)| *inode);
        module.mapped = match mapping {
            _ if executable => Some(PathBuf::from(RUNNING_EXE)),
            Some((range, _, _)) => Some(map_files_entry(range)),
            None => None,
        };
    }
    modules.retain(|m| !m.path.as_os_str().is_empty() && !m.code.is_empty());
    modules
}

/// The running executable, whatever its path names now.
#[cfg(target_os = "linux")]
const RUNNING_EXE: &str = "/proc/self/exe";

impl Module {
    /// The file to read for this object: `path` while it holds the build that was loaded;
    /// else `mapped`, which leads to the loaded file even after its path was given to another
    /// build (`/proc/self/exe`, or the object's entry in `/proc/self/map_files`, which the
    /// kernel opens only for privileged processes); else none. A program whose binary or
    /// libraries were replaced on disk while it ran (a deploy, a package upgrade) would
    /// otherwise lose its lines, or be shown another build's.
    ///
    /// The same file is told by `stat` (a file and a `/proc` link to it agree), else by the
    /// GNU build id (overlayfs links `map_files` to the file in the layer below, and reading
    /// `path` keeps debug files found beside it, such as a `.dwp`), else, where `map_files`
    /// cannot be opened and the loaded image has no build id, by the inode `/proc/self/maps`
    /// gives (its device numbers may differ from `stat`'s, as on btrfs). A path replaced between
    /// this check and the read goes unnoticed.
    #[cfg(target_os = "linux")]
    fn file(&self) -> PathBuf {
        let Some(mapped) = &self.mapped else {
            return self.path.clone(); // no `/proc`: cannot be checked
        };
        let named = std::fs::metadata(&self.path).ok();
        let running = std::fs::metadata(mapped).ok();
        if let (Some(named), Some(running)) = (&named, &running) {
            if identity(named) == identity(running) {
                return self.path.clone();
            }
        }
        let same_build = self
            .build_id
            .as_ref()
            .map(|loaded| file_build_id(&self.path).is_some_and(|on_disk| on_disk == *loaded));
        // No file, where `path` holds another build: its frames then show as addresses.
        match (same_build, running, self.mapped_inode) {
            (Some(true), _, _) => self.path.clone(),
            (_, Some(_), _) => mapped.clone(),
            (Some(false), None, _) => PathBuf::new(),
            (None, None, Some(inode)) => {
                let same_inode =
                    named.is_some_and(|n| std::os::unix::fs::MetadataExt::ino(&n) == inode);
                if same_inode {
                    self.path.clone()
                } else {
                    PathBuf::new()
                }
            }
            (None, None, None) => self.path.clone(), // no way to tell
        }
    }

    #[cfg(not(target_os = "linux"))]
    fn file(&self) -> PathBuf {
        self.path.clone()
    }
}

/// The file to read for the running executable, loaded from `exe` ([`Module::file`]), and the
/// path that names it.
#[cfg(target_os = "linux")]
fn executable_file(exe: PathBuf) -> (PathBuf, PathBuf) {
    let module = Module {
        code: Vec::new(),
        path: undeleted(exe),
        mapped: Some(PathBuf::from(RUNNING_EXE)),
        build_id: None,
        mapped_inode: None,
        bias: 0,
        resolver: None,
    };
    (module.file(), module.path)
}

#[cfg(not(target_os = "linux"))]
fn executable_file(exe: PathBuf) -> (PathBuf, PathBuf) {
    (exe.clone(), exe)
}

/// A file's device and inode, as `stat` gives them: the same for a file and a `/proc` link
/// that leads to it (`/proc/self/maps` may number devices otherwise, as on btrfs).
#[cfg(target_os = "linux")]
fn identity(metadata: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (metadata.dev(), metadata.ino())
}

/// The GNU build id of the ELF file at `path`.
#[cfg(target_os = "linux")]
fn file_build_id(path: &Path) -> Option<Vec<u8>> {
    build_id_of(&std::fs::File::open(path).ok()?).ok().flatten()
}

/// The GNU build id of the open object file `file` (an ELF file's `NT_GNU_BUILD_ID` note);
/// `None` when it has none, an error when it is no object file this reader knows or its notes
/// are malformed. Reads the headers and the notes only.
pub(crate) fn build_id_of(file: &std::fs::File) -> Result<Option<Vec<u8>>, String> {
    use object::Object;
    let cache = object::ReadCache::new(file);
    let elf = object::File::parse(&cache).map_err(|e| e.to_string())?;
    let id = elf.build_id().map_err(|e| e.to_string())?;
    Ok(id.map(<[u8]>::to_vec))
}

/// `path` without the ` (deleted)` the kernel appends to `/proc/self/exe`'s target once the
/// file is gone (its path may name a new build by now, whose workspace is the same).
#[cfg(target_os = "linux")]
fn undeleted(path: PathBuf) -> PathBuf {
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    const DELETED: &[u8] = b" (deleted)";
    let bytes = path.as_os_str().as_bytes();
    match bytes.strip_suffix(DELETED) {
        Some(kept) if !path.exists() => PathBuf::from(std::ffi::OsString::from_vec(kept.to_vec())),
        _ => path,
    }
}

/// The link in `/proc/self/map_files` to the file mapped at `range` (named without the zeros
/// `/proc/self/maps` pads with: the kernel refuses those names).
#[cfg(target_os = "linux")]
fn map_files_entry(range: Range<usize>) -> PathBuf {
    PathBuf::from(format!(
        "/proc/self/map_files/{:x}-{:x}",
        range.start, range.end
    ))
}

/// The address range, the file's inode and the file's name of the mapping in `maps`
/// (`/proc/self/maps`) that holds `address`.
#[cfg(target_os = "linux")]
fn mapping_of(maps: &str, address: usize) -> Option<(Range<usize>, u64, &str)> {
    maps.lines().find_map(|line| {
        // start-end perms offset major:minor inode, one space apart, then padding and the name
        // (which may hold spaces).
        let mut fields = line.splitn(6, ' ');
        let (start, end) = fields.next()?.split_once('-')?;
        let start = usize::from_str_radix(start, 16).ok()?;
        let end = usize::from_str_radix(end, 16).ok()?;
        let inode = fields.nth(3)?.parse().ok()?;
        let name = fields.next().unwrap_or("").trim_start();
        (start..end)
            .contains(&address)
            .then_some((start..end, inode, name))
    })
}

/// A file mapped read-only for as long as this lives.
#[cfg(target_os = "linux")]
pub(crate) struct MappedFile {
    ptr: *mut libc::c_void,
    len: usize,
}

#[cfg(target_os = "linux")]
impl MappedFile {
    pub(crate) fn open(path: &std::path::Path) -> Option<MappedFile> {
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

    pub(crate) fn bytes(&self) -> &[u8] {
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

/// The symbolizer's lock is held by another thread (see [`object_holding`]).
#[cfg(target_os = "linux")]
pub(crate) struct Busy;

/// The object whose code holds `address`: its file (the build loaded, even if its path now names
/// another, see [`Module::file`]), load bias and code (from its first executable segment to the
/// end of its last). Listed under the resolver's lock, as every
/// listing: the fork handlers take it, so no child is forked while this thread holds the
/// loader's lock. [`Busy`] rather than wait while another thread holds it (a first snapshot
/// loads debug info for as long as it takes).
#[cfg(target_os = "linux")]
pub(crate) fn object_holding(
    address: usize,
) -> Result<Option<(PathBuf, usize, Range<usize>)>, Busy> {
    let _listing = match RESOLVER.try_lock() {
        Ok(guard) => guard,
        Err(std::sync::TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
        Err(std::sync::TryLockError::WouldBlock) => return Err(Busy),
    };
    let modules = loaded_modules();
    let Some(index) = modules
        .iter()
        .position(|m| m.code.iter().any(|r| r.contains(&address)))
    else {
        return Ok(None);
    };
    let module = &modules[index];
    let (Some(start), Some(end)) = (
        module.code.iter().map(|r| r.start).min(),
        module.code.iter().map(|r| r.end).max(),
    ) else {
        return Ok(None);
    };
    Ok(Some((module.file(), module.bias, start..end)))
}

/// How many objects the process has unloaded so far (glibc counts them; musl never unloads).
#[cfg(target_os = "linux")]
fn unloads() -> u64 {
    // The counter is there only when the loader's record reaches it.
    let end = core::mem::offset_of!(libc::dl_phdr_info, dlpi_subs) + size_of::<u64>();
    let mut unloads = 0;
    for_each_object(|info, size| {
        if size >= end {
            unloads = info.dlpi_subs;
        }
        false // one object tells it
    });
    unloads
}

#[cfg(not(target_os = "linux"))]
fn unloads() -> u64 {
    0
}

/// The executable alone, holding every address (shared libraries' frames are then looked up in
/// it, and show as plumbing or addresses).
#[cfg(not(target_os = "linux"))]
fn loaded_modules() -> Vec<Module> {
    match (std::env::current_exe(), main_program_bias()) {
        (Ok(path), Some(bias)) => vec![Module {
            code: std::iter::once(0..usize::MAX).collect(),
            path,
            bias,
            resolver: None,
        }],
        _ => Vec::new(),
    }
}

/// Where the running process's resolver is kept between snapshots.
static RESOLVER: std::sync::Mutex<Option<ProcessResolver>> = std::sync::Mutex::new(None);

/// The resolver's lock, held across `fork()` by the tracer's fork handlers: a child forked while
/// another thread was symbolizing would otherwise find it locked for ever.
#[cfg(unix)]
pub(crate) struct ForkHold(
    #[allow(dead_code)] std::sync::MutexGuard<'static, Option<ProcessResolver>>,
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

/// Runs `f` with the running process's resolver, created on first use. Addresses it cannot
/// place stay addresses.
pub(crate) fn with_process_resolver<R>(f: impl FnOnce(&mut dyn Resolver) -> R) -> R {
    let mut slot = RESOLVER.lock().unwrap_or_else(|e| e.into_inner());
    let resolver = slot.get_or_insert_with(ProcessResolver::new);
    resolver.refreshed = false;
    if unloads() != resolver.unloads {
        resolver.refresh(); // an unloaded object's range may hold another object now
    }
    resolver.show_plumbing = crate::show_plumbing();
    f(resolver)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs binutils' `objcopy` with `args` (its options, then the input and output files),
    /// which must succeed: the tests below make stripped builds and debug files with it.
    fn objcopy(args: &[&std::ffi::OsStr]) {
        let status = std::process::Command::new("objcopy").args(args).status();
        assert!(
            status.expect("objcopy (binutils) runs").success(),
            "{args:?}"
        );
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn the_mapping_of_an_address_gives_its_range_as_map_files_names_it() {
        let maps = "\
01000000-01001000 r-xp 00000000 fd:01 1835080  /opt/low
55d0c2a00000-55d0c2a3f000 r--p 00000000 fd:01 1835081  /usr/bin/app
55d0c2a3f000-55d0c2b40000 r-xp 0003f000 fd:01 1835081  /usr/bin/app (deleted)
7f3a1c000000-7f3a1c021000 rw-p 00000000 00:00 0 
";
        let (range, inode, name) = mapping_of(maps, 0x55d0_c2a4_0000).unwrap();
        assert_eq!(range, 0x55d0_c2a3_f000..0x55d0_c2b4_0000);
        assert_eq!(inode, 1835081);
        assert_eq!(name, "/usr/bin/app (deleted)");
        assert_eq!(mapping_of(maps, 0x55d0_c2b4_0000), None);
        assert_eq!(mapping_of(maps, 0x1000), None);
        assert_eq!(mapping_of(maps, 0x7f3a_1c00_0010).unwrap().2, "");
        // maps pads to 8 digits; map_files names do not, and refuse padded ones.
        let (low, _, _) = mapping_of(maps, 0x100_0010).unwrap();
        assert_eq!(
            map_files_entry(low),
            Path::new("/proc/self/map_files/1000000-1001000")
        );
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn the_build_id_of_the_loaded_executable_is_the_one_in_its_file() {
        // A linker may leave the id out (`rust-lld` without `--build-id`): then both lack it.
        let exe = &loaded_modules()[0];
        assert_eq!(exe.build_id, file_build_id(Path::new(RUNNING_EXE)));
        assert!(exe.build_id.as_ref().is_none_or(|id| id.len() >= 8));
    }

    /// `/proc/self/maps` names every file the process maps, whatever bytes its name holds: one
    /// that is not UTF-8 must not cost the libraries the check of the build they run.
    #[test]
    #[cfg(target_os = "linux")]
    fn a_mapped_file_named_in_another_encoding_leaves_the_libraries_checked() {
        use std::os::unix::ffi::OsStrExt;
        let dir = std::env::temp_dir().join(format!("tm-maps-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let latin1 = dir.join(std::ffi::OsStr::from_bytes(b"caf\xe9.bin"));
        std::fs::write(&latin1, [0u8; 64]).unwrap();
        let mapped = MappedFile::open(&latin1).unwrap();
        let modules = loaded_modules();
        drop(mapped);
        std::fs::remove_dir_all(&dir).unwrap();
        let libraries = &modules[1..];
        assert!(!libraries.is_empty(), "this test links the C library");
        for library in libraries {
            assert!(library.mapped_inode.is_some(), "{}", library.path.display());
            assert!(library.mapped.is_some(), "{}", library.path.display());
        }
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn a_deleted_executable_is_named_by_its_path() {
        let gone = PathBuf::from("/nonexistent/tracemalloc/app (deleted)");
        assert_eq!(undeleted(gone), Path::new("/nonexistent/tracemalloc/app"));
        // A file whose name really ends so, or any other path, is left alone.
        let here = std::env::current_exe().unwrap();
        assert_eq!(undeleted(here.clone()), here);
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn a_module_is_read_from_its_path_only_while_that_holds_the_loaded_build() {
        let module = |path: &Path, mapped: &str, build_id: Option<Vec<u8>>| Module {
            code: Vec::new(),
            path: path.to_path_buf(),
            mapped: Some(PathBuf::from(mapped)),
            build_id,
            mapped_inode: None,
            bias: 0,
            resolver: None,
        };
        let exe = std::env::current_exe().unwrap();
        assert_eq!(module(&exe, RUNNING_EXE, None).file(), exe);
        // The path names another file: the loaded one is read through `/proc`.
        let other = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
        assert_eq!(
            module(&other, RUNNING_EXE, None).file(),
            Path::new(RUNNING_EXE)
        );
        // ... and when that cannot be opened (an unprivileged `map_files`), the build ids
        // decide: another build is not read, the same one is.
        let closed = "/proc/self/map_files/0-0";
        if let Some(this_build) = file_build_id(&exe) {
            assert_eq!(module(&exe, closed, Some(this_build)).file(), exe);
        }
        let another = module(&exe, closed, Some(vec![1, 2, 3]));
        assert_eq!(another.file(), PathBuf::new());
        // Without build ids, the inode the maps give.
        let inode = |path: &Path| {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata(path).unwrap().ino()
        };
        let unknown = |mapped_inode| Module {
            mapped_inode,
            ..module(&exe, closed, None)
        };
        assert_eq!(unknown(Some(inode(&exe))).file(), exe);
        assert_eq!(unknown(Some(inode(&other))).file(), PathBuf::new());
        assert_eq!(unknown(None).file(), exe, "no way to tell");
    }

    #[test]
    fn the_dwarf_package_is_looked_for_where_addr2line_looks() {
        assert_eq!(
            dwarf_package_of(Path::new("target/fw.elf")),
            Path::new("target/fw.elf.dwp")
        );
        assert_eq!(
            dwarf_package_of(Path::new("bin/app")),
            Path::new("bin/app.dwp")
        );
        assert_eq!(dwarf_package_of(Path::new("fw.")), Path::new("fw..dwp"));
    }

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
        // The program's trait implemented for a std type is the program's code.
        assert!(!is_plumbing(
            Some("<alloc::string::String as app::Encode>::encode"),
            Some("src/encode.rs")
        ));
        assert!(is_plumbing(
            Some("<std::alloc::System as tracemalloc::Inner>::alloc"),
            None
        ));
    }

    #[test]
    fn a_qualified_name_splits_at_its_outer_as() {
        assert_eq!(
            self_and_trait("<alloc::string::String as app::Encode>::encode"),
            Some(("alloc::string::String", "app::Encode>::encode"))
        );
        assert_eq!(
            self_and_trait("<<I as core::iter::IntoIterator>::IntoIter as app::Ext>::f"),
            Some(("<I as core::iter::IntoIterator>::IntoIter", "app::Ext>::f"))
        );
        assert_eq!(
            self_and_trait("<fn() -> u8 as core::ops::function::FnOnce<()>>::call_once"),
            Some(("fn() -> u8", "core::ops::function::FnOnce<()>>::call_once"))
        );
        assert_eq!(self_and_trait("<alloc::vec::Vec<u8>>::push"), None);
        assert_eq!(self_and_trait("<str>::to_lowercase"), None);
        assert_eq!(self_and_trait("app::as_bytes"), None);
    }

    /// A thread's first frames in glibc, named with their lines where its separate debug file
    /// is installed (`libc6-dbg`), are the runtime's, as `__libc_start_call_main` is.
    #[test]
    fn glibcs_thread_start_is_plumbing() {
        for (function, file) in [
            ("start_thread", "./nptl/pthread_create.c"),
            ("clone3", "../sysdeps/unix/sysv/linux/x86_64/clone3.S"),
            (
                "__libc_start_call_main",
                "../sysdeps/nptl/libc_start_call_main.h",
            ),
        ] {
            assert!(is_plumbing(Some(function), Some(file)), "{function}");
        }
        assert!(!is_plumbing(Some("app::start_thread"), Some("src/main.rs")));
    }

    /// Full debug info (cargo's default `debug = true`) names the application's impls for std
    /// types after the type, as `Vec<u32>`'s impl of the application's own extension trait: its
    /// line is in the application's file, and a leak there must be reported there.
    #[test]
    fn an_applications_impl_for_a_std_type_is_not_plumbing() {
        let ext = Some("/home/dev/app/src/ext.rs");
        assert!(!is_plumbing(
            Some("<alloc::vec::Vec<u32> as app::VecExt>::push_twice"),
            ext
        ));
        assert!(!is_plumbing(
            Some("<alloc::string::String as core::convert::From<app::Error>>::from"),
            ext
        ));
        // std's own functions by name whatever the file, and the allocator shims that
        // `#[global_allocator]` generates, whose line is the application's `static`.
        assert!(is_plumbing(Some("alloc::raw_vec::finish_grow"), ext));
        assert!(is_plumbing(Some("__rustc::__rust_alloc"), ext));
        assert!(is_plumbing(Some("__rg_alloc"), ext));
        // std's own impls are std's by their file, wherever the toolchain keeps its sources.
        let clone = Some("<alloc::vec::Vec<u8> as core::clone::Clone>::clone");
        for std in [
            "/rustc/17067e9ac6d7e98f18d4ba8d4ba4ab0d0a8d5d24/library/alloc/src/vec/mod.rs",
            "/usr/src/rustc-1.85.0/library/alloc/src/vec/mod.rs",
        ] {
            assert!(is_plumbing(clone, Some(std)), "{std}");
        }
        // An application's own crate kept under `library/` is its code.
        let own = Some("/home/dev/app/library/core/src/lib.rs");
        assert!(!is_plumbing(Some("app_core::Cache::insert"), own));
    }

    #[test]
    fn copies_of_one_build_name_a_line_alike_from_shared_roots() {
        // A build in the workspace's `target` and a copy of it elsewhere (an older build kept
        // for `compare`) are named from the same roots when both are given. This test binary
        // is that build, or, when `CARGO_TARGET_DIR` put it elsewhere, a copy made in `target`.
        let exe = std::env::current_exe().unwrap();
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let tag = format!("tm-roots-{}", std::process::id());
        let outside = std::env::temp_dir().join(&tag);
        std::fs::create_dir_all(&outside).unwrap();
        let copy = outside.join("old-build");
        std::fs::copy(&exe, &copy).unwrap();
        let in_target = workspace.join("target").join(&tag);
        let exe = if workspace_of(&exe) == Some(workspace.display().to_string()) {
            exe
        } else {
            std::fs::create_dir_all(&in_target).unwrap();
            let build = in_target.join("new-build");
            std::fs::copy(&exe, &build).unwrap();
            build
        };
        let cwd = Some(outside.clone()); // run from outside the workspace
        let alone = roots_for([copy.as_path()], cwd.clone());
        assert_eq!(alone, [outside.display().to_string()]);
        let shared = roots_for([copy.as_path(), exe.as_path()], cwd);
        assert_eq!(shared[0], workspace.display().to_string());
        let address = copies_of_one_build_name_a_line_alike_from_shared_roots as fn() as usize;
        let name = |roots: Vec<String>| {
            let bias = main_program_bias().unwrap();
            let mut resolver = ElfResolver::open_named_from(&copy, bias, roots).unwrap();
            resolver.show_plumbing(true);
            let mut out = Vec::new();
            assert!(resolver.resolve(address, &mut out));
            let frame = out.iter().find(|f| f.filename.ends_with("symbolize.rs"));
            frame.expect("this file").filename.to_string()
        };
        assert_eq!(name(shared), "adapter-std/src/symbolize.rs");
        assert!(
            name(alone).starts_with('/'),
            "alone, it can only be absolute"
        );
        std::fs::remove_dir_all(&outside).unwrap();
        let _ = std::fs::remove_dir_all(&in_target); // made only for an outside target
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
        // The start of the file (its ELF header) is no code, whatever the debug info says.
        assert!(
            resolver
                .code
                .iter()
                .any(|code| code.contains(&((address - resolver.bias) as u64))),
            "{:x?}",
            resolver.code
        );
        assert!(!resolver.code.iter().any(|code| code.contains(&0x10)));
        let header = resolver.bias + 0x10;
        assert!(!resolver.resolve(header, &mut out), "{out:?}");
    }

    /// A build stripped of its debug info (`strip --strip-debug`) names its lines from its
    /// separate debug file (`objcopy --only-keep-debug`), found through its debug link beside
    /// it or in `.debug/` there, and only when that file is of the same build.
    #[test]
    #[cfg(target_os = "linux")]
    fn a_stripped_build_reads_its_lines_from_its_separate_debug_file() {
        use std::io::Write;
        let exe = std::env::current_exe().unwrap();
        let dir = std::env::temp_dir().join(format!("tm-debuglink-{}", std::process::id()));
        std::fs::create_dir_all(dir.join(".debug")).unwrap();
        let debug = dir.join("app.debug");
        objcopy(&["--only-keep-debug".as_ref(), exe.as_ref(), debug.as_ref()]);
        // The same debug info without the build id: of another build, as far as anyone knows.
        let other = dir.join("other.debug");
        let no_id = "--remove-section=.note.gnu.build-id";
        objcopy(&[no_id.as_ref(), debug.as_ref(), other.as_ref()]);
        let stripped = |name: &str, link: &Path, keep_id: bool| {
            let out = dir.join(name);
            let link = format!("--add-gnu-debuglink={}", link.display());
            let mut args = vec!["--strip-debug".as_ref(), link.as_ref()];
            if !keep_id {
                args.push(no_id.as_ref());
            }
            args.extend([exe.as_os_str(), out.as_ref()]);
            objcopy(&args);
            out
        };
        let names = |file: &Path| {
            let bias = main_program_bias().unwrap();
            let mut resolver = ElfResolver::open_named_from(file, bias, Vec::new()).unwrap();
            resolver.show_plumbing(true);
            let address = a_stripped_build_reads_its_lines_from_its_separate_debug_file as fn();
            let mut out = Vec::new();
            resolver.resolve(address as usize, &mut out);
            out.iter().any(|f| f.filename.ends_with("symbolize.rs"))
        };
        let beside = stripped("app", &debug, true);
        let mismatched = stripped("mismatched", &other, true);
        let found = [names(&beside), names(&mismatched)];
        // Without build ids on either side, the link's CRC-32 tells.
        let by_crc = stripped("by-crc", &other, false);
        let crc_matches = names(&by_crc);
        let mut changed = std::fs::OpenOptions::new()
            .append(true)
            .open(&other)
            .unwrap();
        changed.write_all(b"!").unwrap();
        let crc_differs = names(&by_crc);
        std::fs::rename(&debug, dir.join(".debug/app.debug")).unwrap();
        let in_debug_folder = names(&beside);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(found, [true, false], "beside it, and of another build");
        assert_eq!([crc_matches, crc_differs], [true, false], "by CRC-32");
        assert!(in_debug_folder, "in .debug/ beside it");
    }

    /// `addr2line` maps the DWARF package beside the file it reads, by name: beside the
    /// separate debug file when it reads that one. A FIFO there must end the open with an
    /// error, not block it (as one beside the build does).
    #[test]
    #[cfg(target_os = "linux")]
    fn a_fifo_beside_the_separate_debug_file_is_not_opened() {
        use std::os::unix::fs::OpenOptionsExt;
        let exe = std::env::current_exe().unwrap();
        let dir = std::env::temp_dir().join(format!("tm-debugfifo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (debug, stripped) = (dir.join("app.debug"), dir.join("app"));
        let link = format!("--add-gnu-debuglink={}", debug.display());
        for args in [
            vec![
                "--only-keep-debug".as_ref(),
                exe.as_os_str(),
                debug.as_ref(),
            ],
            vec![
                "--strip-debug".as_ref(),
                link.as_ref(),
                exe.as_os_str(),
                stripped.as_ref(),
            ],
        ] {
            objcopy(&args);
        }
        let fifo = dir.join("app.debug.dwp");
        let name = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: `name` is a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o600) }, 0);
        // In a thread: an open that blocks must fail this test, not hang it.
        let (done, result) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let bias = main_program_bias().unwrap();
            let opened = ElfResolver::open_named_from(&stripped, bias, Vec::new());
            let _ = done.send(opened.err().map(|e| e.to_string()));
        });
        let outcome = result.recv_timeout(std::time::Duration::from_secs(60));
        if outcome.is_err() {
            // Let the blocked reader go.
            let _ = std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&fifo);
        }
        std::fs::remove_dir_all(&dir).unwrap();
        let err = outcome
            .expect("the open blocked on the FIFO")
            .expect("an error");
        assert!(err.contains("app.debug.dwp"), "{err}");
    }

    /// A build without debug info (cargo's default release profile) is named by the functions
    /// its symbol table gives a size, rather than all `<unknown>:0`; an address past every
    /// function's end is not named after the function before it.
    #[test]
    #[cfg(target_os = "linux")]
    fn a_build_without_debug_info_is_named_by_its_functions() {
        let exe = std::env::current_exe().unwrap();
        let bare = std::env::temp_dir().join(format!("tm-bare-{}", std::process::id()));
        objcopy(&["--strip-debug".as_ref(), exe.as_ref(), bare.as_ref()]);
        let bias = main_program_bias().unwrap();
        let mut resolver = ElfResolver::open_named_from(&bare, bias, Vec::new()).unwrap();
        // A function of another crate: this crate's own are plumbing, and hidden, as are those
        // of the crates std vendors (`rustc_demangle`).
        let address = crc32fast::hash as fn(&[u8]) -> u32 as usize;
        let mut out = Vec::new();
        assert!(resolver.resolve(address + 1, &mut out));
        let functions = functions_of(&std::fs::File::open(&bare).unwrap());
        std::fs::remove_file(&bare).unwrap();
        let name = "crc32fast::hash";
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(&*out[0].filename, format!("<{name}>"));
        assert_eq!((out[0].lineno, out[0].function.as_deref()), (0, Some(name)));
        // Between two functions (alignment padding), or past the last: no name.
        let gap = functions
            .windows(2)
            .find(|w| w[0].end < w[1].start)
            .unwrap()[0]
            .end;
        resolver.functions = Some(functions);
        assert_eq!(resolver.function_containing(gap), None);
        assert!(resolver.function_containing(gap - 1).is_some());
    }

    /// The functions of a build without debug info are read, when first needed, from the build
    /// that was opened, even once its path names another (a deploy replacing the binary while
    /// the program runs): read by name, another build's table would name them.
    #[test]
    #[cfg(target_os = "linux")]
    fn a_build_replaced_after_opening_keeps_its_functions() {
        let exe = std::env::current_exe().unwrap();
        let dir = std::env::temp_dir().join(format!("tm-replaced-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (bare, other) = (dir.join("app"), dir.join("app.new"));
        for (strip, out) in [("--strip-debug", &bare), ("--strip-all", &other)] {
            objcopy(&[strip.as_ref(), exe.as_ref(), out.as_ref()]);
        }
        let bias = main_program_bias().unwrap();
        let mut resolver = ElfResolver::open_named_from(&bare, bias, Vec::new()).unwrap();
        std::fs::rename(&other, &bare).unwrap();
        let address = crc32fast::hash as fn(&[u8]) -> u32 as usize;
        let mut out = Vec::new();
        assert!(resolver.resolve(address + 1, &mut out));
        std::fs::remove_dir_all(&dir).unwrap();
        let names: Vec<_> = out.iter().map(|f| f.function.as_deref()).collect();
        assert_eq!(names, [Some("crc32fast::hash")]);
    }

    /// Without debug info, names stand in for files: std's code whose name holds no path into
    /// std (a crate std vendors, behind a `HashMap`'s growth; std's impl for a primitive, behind
    /// `to_vec`) is hidden as its file would hide it, where the capture's map marks it too.
    #[test]
    #[cfg(target_os = "linux")]
    fn a_build_without_debug_info_hides_std_code_named_without_a_std_path() {
        let exe = std::env::current_exe().unwrap();
        let bare = std::env::temp_dir().join(format!("tm-bare-std-{}", std::process::id()));
        objcopy(&["--strip-debug".as_ref(), exe.as_ref(), bare.as_ref()]);
        let bias = main_program_bias().unwrap();
        let mut resolver = ElfResolver::open_named_from(&bare, bias, Vec::new()).unwrap();
        let functions = functions_of(&std::fs::File::open(&bare).unwrap());
        let mut shown = Vec::new();
        for std in [
            "<hashbrown::raw::RawTable<",
            "<u8 as <[_]>::to_vec_in::ConvertVec>",
        ] {
            let function = functions
                .iter()
                .find(|f| format!("{:#}", rustc_demangle::demangle(&f.name)).starts_with(std))
                .unwrap_or_else(|| panic!("no {std}… in this build"));
            let mut out = Vec::new();
            assert!(resolver.resolve(bias + function.start as usize + 1, &mut out));
            shown.extend(out);
        }
        std::fs::remove_file(&bare).unwrap();
        assert!(shown.is_empty(), "{shown:?}");
        // Legacy mangling's names, and the application's impls, which stay.
        for name in [
            "hashbrown::raw::RawTable<T,A>::reserve_rehash",
            "<u8 as alloc::vec::spec_from_elem::SpecFromElem>::from_elem",
            "<T as alloc::slice::hack::ConvertVec>::to_vec",
            "<str>::to_lowercase",
        ] {
            assert!(is_plumbing(Some(name), None), "{name}");
        }
        for name in [
            "<app::Tree as core::clone::Clone>::clone",
            "<alloc::string::String as app::Encode>::encode",
            "<u8 as app::Encode>::encode",
            "<app::Cache>::insert",
            "app::main",
        ] {
            assert!(!is_plumbing(Some(name), None), "{name}");
        }
    }

    /// A separate debug file (`objcopy --only-keep-debug`, as distributions ship them) keeps
    /// its code sections' addresses but no contents (`NOBITS`): its code is where the
    /// executable's is.
    #[test]
    fn a_separate_debug_file_has_the_executables_code_ranges() {
        let exe = std::env::current_exe().unwrap();
        let debug = std::env::temp_dir().join(format!("tm-debug-{}.debug", std::process::id()));
        objcopy(&["--only-keep-debug".as_ref(), exe.as_ref(), debug.as_ref()]);
        let (code, debug_code) = (code_ranges(&exe), code_ranges(&debug));
        std::fs::remove_file(&debug).unwrap();
        assert!(!code.is_empty());
        assert_eq!(code, debug_code);
    }
}
