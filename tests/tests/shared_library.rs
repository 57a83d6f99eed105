//! Frames in a shared library the program loaded are looked up in that library's own debug info
//! (Linux). A `cdylib` that installs the tracer, such as a Python extension written in Rust, has
//! all its frames in such a library; before, they were looked up in the executable and lost.
//! The debug info is the loaded build's, even once another build was put at its path.

#![cfg(target_os = "linux")]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use tracemalloc::TracingAllocator;
use tracemalloc_core::snapshot::Snapshot;
use tracemalloc_tests::{load_symbol, marked_line, traced_at};

#[global_allocator]
static ALLOC: TracingAllocator = TracingAllocator::system();

tracemalloc_tests::this_file!();
const LIBRARY_SOURCE: &str = "tests/c/callback.c";

/// Tests start and stop the process's tracer: one at a time.
static TRACER: Mutex<()> = Mutex::new(());

/// Allocates a block of `SIZE` bytes that stays live.
extern "C" fn allocate<const SIZE: usize>() {
    std::mem::forget(vec![7u8; SIZE]); // ALLOCATE
}

/// A loaded build of `tests/c/callback.c`, unloaded and deleted on drop.
struct Library {
    handle: *mut libc::c_void,
    file: PathBuf,
    call: extern "C" fn(extern "C" fn()),
}

/// Builds `tests/c/callback.c` (with `flags`: defines, linker options) into a shared library
/// of its own name.
fn build(name: &str, flags: &[&str]) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let file =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("lib{name}-{}.so", std::process::id()));
    let status = Command::new("cc")
        .args([
            "-shared",
            "-fPIC",
            "-g",
            "-O0",
            "-fno-omit-frame-pointer",
            "-Wl,--build-id",
        ])
        .args(flags)
        .arg("-o")
        .arg(&file)
        .arg(root.join(LIBRARY_SOURCE))
        .status()
        .expect("this test needs a C compiler, `cc`");
    assert!(status.success(), "cc failed: {status}");
    file
}

impl Library {
    /// Builds `tests/c/callback.c` (with `flags`) into a shared library of its own name and
    /// loads it.
    fn load(name: &str, flags: &[&str]) -> Library {
        let file = build(name, flags);
        let (handle, symbol) = load_symbol(&file, c"tracemalloc_test_call");
        // SAFETY: the symbol is `void tracemalloc_test_call(void (*)(void))`, of this ABI.
        let call = unsafe {
            std::mem::transmute::<*mut libc::c_void, extern "C" fn(extern "C" fn())>(symbol)
        };
        Library { handle, file, call }
    }
}

impl Drop for Library {
    fn drop(&mut self) {
        // SAFETY: `handle` came from `dlopen`, and nothing of the library is used after this.
        assert_eq!(unsafe { libc::dlclose(self.handle) }, 0, "dlclose failed");
        let _ = std::fs::remove_file(&self.file);
    }
}

/// The (file, line) frames of the one traced block of `size` bytes.
fn frames_of(snapshot: &Snapshot, size: u64) -> Vec<(String, u32)> {
    let trace = snapshot
        .traces
        .iter()
        .find(|t| t.size == size)
        .expect("the block is traced");
    let frames = &snapshot.tracebacks[trace.traceback as usize].frames;
    frames
        .iter()
        .map(|f| (f.filename.to_string(), f.lineno))
        .collect()
}

/// The line of `tests/c/callback.c` that ends with `marker`.
fn c_line(marker: &str) -> u32 {
    include_str!("../c/callback.c")
        .lines()
        .position(|l| l.ends_with(marker))
        .expect("the C file's marker") as u32
        + 1
}

/// The frames of a block allocated through the library: `allocate`, the library's call at its
/// `c_marker` line, and this file's call at its `call_marker` line.
fn expect(c_marker: &str, call_marker: &str) -> Vec<(String, u32)> {
    let this = SOURCE;
    vec![
        (THIS_FILE.to_owned(), marked_line(this, "ALLOCATE")),
        (LIBRARY_SOURCE.to_owned(), c_line(c_marker)),
        (THIS_FILE.to_owned(), marked_line(this, call_marker)),
    ]
}

#[test]
fn frames_in_loaded_libraries_name_their_source_lines() {
    let _one_at_a_time = TRACER.lock().unwrap_or_else(|e| e.into_inner());
    let allocate_line = line_of("ALLOCATE");
    tracemalloc::start(3).unwrap();
    // The resolver lists the process's objects at the first snapshot: the library comes later,
    // and an address in it makes the resolver read the list again.
    let before = tracemalloc::take_snapshot().unwrap();
    let first = Library::load("tracemalloc_first", &[]);
    (first.call)(allocate::<5000>); // FIRST
    let snapshot = tracemalloc::take_snapshot().unwrap();
    assert_eq!(traced_at(&before, THIS_FILE, allocate_line), None);
    assert_eq!(frames_of(&snapshot, 5000), expect("/* CALL */", "FIRST"));

    // Unloaded, and another build loaded, where the loader usually puts it at the same
    // address: its frames must come from its own debug info, not the first library's.
    drop(first);
    let second = Library::load("tracemalloc_second", &["-DSECOND"]);
    (second.call)(allocate::<6000>); // SECOND
    let snapshot = tracemalloc::take_snapshot().unwrap();
    tracemalloc::stop();
    assert_eq!(
        frames_of(&snapshot, 6000),
        expect("/* SECOND CALL */", "SECOND")
    );
    drop(second);
}

#[test]
fn a_library_replaced_on_disk_names_the_lines_of_the_build_that_runs() {
    let _one_at_a_time = TRACER.lock().unwrap_or_else(|e| e.into_inner());
    unprivileged_if_asked();
    check_replaced("tracemalloc_replaced", &[]);
}

#[test]
fn a_library_without_a_build_id_replaced_on_disk_is_not_read_from_the_new_build() {
    let _one_at_a_time = TRACER.lock().unwrap_or_else(|e| e.into_inner());
    unprivileged_if_asked();
    check_replaced("tracemalloc_no_id", &["-Wl,--build-id=none"]);
}

#[test]
fn a_library_listed_before_it_was_replaced_is_read_as_loaded() {
    let _one_at_a_time = TRACER.lock().unwrap_or_else(|e| e.into_inner());
    unprivileged_if_asked();
    let listed = Library::load("tracemalloc_listed", &[]);
    let other = Library::load("tracemalloc_other", &[]);
    tracemalloc::start(3).unwrap();
    // A frame in the other library makes this snapshot list both, and read only that one.
    (other.call)(allocate::<8100>); // OTHER
    let first = tracemalloc::take_snapshot().unwrap();
    assert_eq!(frames_of(&first, 8100), expect("/* CALL */", "OTHER"));
    upgrade(&listed, "tracemalloc_listed", &[]);
    (listed.call)(allocate::<8000>); // LISTED
    let snapshot = tracemalloc::take_snapshot().unwrap();
    tracemalloc::stop();
    assert_loaded_build(frames_of(&snapshot, 8000), "LISTED");
}

/// Loads a build of `name` (with `flags`), puts another one at its path ([`upgrade`]), then
/// checks the frames of a block allocated through the loaded one ([`assert_loaded_build`]).
fn check_replaced(name: &str, flags: &[&str]) {
    let loaded = Library::load(name, flags);
    upgrade(&loaded, name, flags);
    tracemalloc::start(3).unwrap();
    (loaded.call)(allocate::<7000>); // REPLACED
    let snapshot = tracemalloc::take_snapshot().unwrap();
    tracemalloc::stop();
    assert_loaded_build(frames_of(&snapshot, 7000), "REPLACED");
}

/// Renames the `SECOND` build of `name` (with `flags`) over `loaded`'s file, as a package
/// upgrade does: its call is on another line, which the frames must not show.
fn upgrade(loaded: &Library, name: &str, flags: &[&str]) {
    let flags = [&["-DSECOND"][..], flags].concat();
    let upgrade = build(&format!("{name}_upgrade"), &flags);
    std::fs::rename(&upgrade, &loaded.file).unwrap();
}

/// Checks the frames of a block allocated through a library whose path now holds the `SECOND`
/// build: the loaded build's lines where the process may read it through
/// `/proc/self/map_files`, else an address (the build ids differ), never the new build's lines.
fn assert_loaded_build(frames: Vec<(String, u32)>, call_marker: &str) {
    let mut expected = expect("/* CALL */", call_marker);
    if !map_files_open() {
        assert!(frames[1].0.starts_with("0x"), "{frames:?}");
        expected[1] = (frames[1].0.clone(), 0);
    }
    assert_eq!(frames, expected);
}

/// Whether this process may open its mappings' files through `/proc/self/map_files`, which the
/// kernel allows only with `CAP_CHECKPOINT_RESTORE` or `CAP_SYS_ADMIN`.
fn map_files_open() -> bool {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let file_backed = maps
        .lines()
        .find(|l| l.contains('/'))
        .expect("a mapped file");
    let (start, end) = file_backed
        .split(' ')
        .next()
        .unwrap()
        .split_once('-')
        .unwrap();
    let number = |hex| usize::from_str_radix(hex, 16).unwrap();
    // Named without the zeros maps pads with.
    let name = format!("{:x}-{:x}", number(start), number(end));
    std::fs::metadata(Path::new("/proc/self/map_files").join(name)).is_ok()
}

/// Runs the tests of replaced libraries again, in a process whose test threads give up the
/// capabilities that open `/proc/self/map_files`: a privileged run (as CI's may be) then
/// checks both ways of telling builds apart.
#[test]
fn replaced_libraries_are_told_apart_without_privileges_too() {
    if std::env::var_os(UNPRIVILEGED).is_some() || !map_files_open() {
        return; // the child itself, or unprivileged already
    }
    let output = Command::new(std::env::current_exe().unwrap())
        .args(["replaced", "--test-threads=1"])
        .env(UNPRIVILEGED, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("4 passed"), "{stdout}");
}

const UNPRIVILEGED: &str = "TRACEMALLOC_TEST_UNPRIVILEGED";

/// Under [`UNPRIVILEGED`], drops this thread's `CAP_SYS_ADMIN` and `CAP_CHECKPOINT_RESTORE`
/// (capabilities are per thread, and this thread symbolizes its own snapshots).
fn unprivileged_if_asked() {
    if std::env::var_os(UNPRIVILEGED).is_none() {
        return;
    }
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    const CAP_SYS_ADMIN: u32 = 21;
    const CAP_CHECKPOINT_RESTORE: u32 = 40;
    let mut header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: `capget` and `capset` read and write a version 3 header and two data words, which
    // these are; they change this thread's capabilities only.
    unsafe {
        assert_eq!(
            libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()),
            0
        );
        data[0].effective &= !(1 << CAP_SYS_ADMIN);
        data[1].effective &= !(1 << (CAP_CHECKPOINT_RESTORE - 32));
        assert_eq!(
            libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()),
            0
        );
    }
    assert!(!map_files_open(), "map_files still opens");
}
