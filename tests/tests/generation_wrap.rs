//! A thread that read the generation before 2048 `clear_traces()` (here: stalled in the inner
//! allocator's realloc) and then writes its cell with it, or puts its trace back there when the
//! realloc fails: a cell keeps 11 bits of the generation, which then match the current one.
//! The trace must not read as current (the tables compare all 32 bits and refuse it): it would
//! show in `object_traceback` and snapshots, and its free would take from `traced_memory()`
//! a size never added. The thread takes it back (`adapter-std/src/state.rs`, `void_in_cell`).

use std::alloc::Layout;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use tracemalloc::{Config, Storage, TracingAllocator};
use tracemalloc_tests::ReallocHook;

/// The size whose reallocation waits for the main thread's clears.
const SLOW: usize = 776;
static IN_REALLOC: AtomicBool = AtomicBool::new(false);
static GO_ON: AtomicBool = AtomicBool::new(false);
/// Whether the stalled reallocation then fails (the block stays, its trace is put back).
static FAIL: AtomicBool = AtomicBool::new(false);

fn stall(new_size: usize) -> bool {
    if new_size == SLOW {
        IN_REALLOC.store(true, SeqCst);
        while !GO_ON.load(SeqCst) {
            std::thread::sleep(Duration::from_millis(1));
        }
        return FAIL.load(SeqCst);
    }
    false
}

#[global_allocator]
static ALLOC: TracingAllocator<ReallocHook> = TracingAllocator::new(ReallocHook(stall));

/// (traced_memory() - sum of the snapshot's traces) after the stalled block is freed, and
/// whether object_traceback() found a trace for the stalled block while it lived.
fn case(storage: Storage, clears: usize, fail: bool) -> (i64, bool) {
    FAIL.store(fail, SeqCst);
    IN_REALLOC.store(false, SeqCst);
    GO_ON.store(false, SeqCst);
    tracemalloc::start_with(Config {
        nframe: 4,
        storage,
        ..Config::default()
    })
    .unwrap();
    let moved = AtomicUsize::new(0);
    std::thread::scope(|s| {
        s.spawn(|| {
            let layout = Layout::from_size_align(100, 8).unwrap();
            // SAFETY: a non-zero size.
            let block = unsafe { std::alloc::alloc(layout) };
            assert!(!block.is_null());
            // SAFETY: `block` is live, of `layout`.
            let p = unsafe { std::alloc::realloc(block, layout, SLOW) };
            assert_eq!(p.is_null(), fail);
            moved.store(if fail { block } else { p } as usize, SeqCst);
        });
        while !IN_REALLOC.load(SeqCst) {
            std::thread::yield_now();
        }
        for _ in 0..clears {
            tracemalloc::clear_traces();
        }
        GO_ON.store(true, SeqCst);
    });
    let ptr = moved.load(SeqCst) as *mut u8;
    // Something traced after the clears, so that the count can fall.
    let keep = std::hint::black_box(vec![7u8; 100_000]);
    let found = tracemalloc::object_traceback(ptr).is_some();
    let size = if fail { 100 } else { SLOW };
    // SAFETY: `ptr` is live, of `size` bytes, alignment 8.
    unsafe { std::alloc::dealloc(ptr, Layout::from_size_align(size, 8).unwrap()) };
    let (current, _) = tracemalloc::traced_memory();
    let snapshot = tracemalloc::take_snapshot().unwrap();
    let sum: u64 = snapshot.traces.iter().map(|t| t.size).sum();
    drop(keep);
    tracemalloc::stop();
    (current as i64 - sum as i64, found)
}

#[test]
fn a_write_stalled_across_2048_clears_is_not_current() {
    let mut results = Vec::new();
    for fail in [false, true] {
        for clears in [1, 2048] {
            for storage in [Storage::Table, Storage::Shadow] {
                let got = case(storage, clears, fail);
                eprintln!("{storage:?}, {clears} clears, realloc fails: {fail}: {got:?}");
                results.push(((storage, clears, fail), got));
            }
        }
    }
    for (which, got) in results {
        assert_eq!(got, (0, false), "{which:?}");
    }
}
