//! A reallocation holds no tracer lock while the inner allocator works: a large block's copy
//! can take milliseconds, and a snapshot (which takes every shard's lock) or another thread's
//! block in the same shard must not spin for that long. Blocks of 1 KiB and more live in the
//! shard tables under either storage, which is where a realloc used to keep its shard locked.

use std::alloc::Layout;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::time::{Duration, Instant};

use tracemalloc::{Config, Storage, TracingAllocator};
use tracemalloc_tests::ReallocHook;

/// The size whose reallocation waits for a snapshot taken by another thread.
const SLOW: usize = 555_555;

/// How long the slow reallocation waits: far longer than a snapshot of this test's few blocks.
const PATIENCE: Duration = Duration::from_secs(10);

static IN_REALLOC: AtomicBool = AtomicBool::new(false);
static SNAPSHOT_TAKEN: AtomicBool = AtomicBool::new(false);
static SNAPSHOT_CAME_IN_TIME: AtomicBool = AtomicBool::new(false);

/// A realloc to `SLOW` bytes waits (without allocating) for the snapshot, then goes on.
fn wait_for_snapshot(new_size: usize) -> bool {
    if new_size == SLOW {
        IN_REALLOC.store(true, SeqCst);
        let start = Instant::now();
        while !SNAPSHOT_TAKEN.load(SeqCst) && start.elapsed() < PATIENCE {
            std::thread::sleep(Duration::from_millis(1));
        }
        SNAPSHOT_CAME_IN_TIME.store(SNAPSHOT_TAKEN.load(SeqCst), SeqCst);
    }
    false
}

#[global_allocator]
static ALLOC: TracingAllocator<ReallocHook> = TracingAllocator::new(ReallocHook(wait_for_snapshot));

fn case(storage: Storage) {
    for flag in [&IN_REALLOC, &SNAPSHOT_TAKEN, &SNAPSHOT_CAME_IN_TIME] {
        flag.store(false, SeqCst);
    }
    tracemalloc::start_with(Config {
        nframe: 4,
        storage,
        ..Config::default()
    })
    .unwrap();
    let snapshotter = std::thread::spawn(|| {
        while !IN_REALLOC.load(SeqCst) {
            std::thread::sleep(Duration::from_millis(1));
        }
        let snapshot = tracemalloc::take_snapshot().unwrap();
        SNAPSHOT_TAKEN.store(true, SeqCst);
        snapshot
    });
    let layout = Layout::from_size_align(2048, 8).unwrap();
    // SAFETY: a non-zero size.
    let block = unsafe { std::alloc::alloc(layout) };
    assert!(!block.is_null());
    // SAFETY: `block` is live, of `layout`; `SLOW` is non-zero and far from overflow.
    let moved = unsafe { std::alloc::realloc(block, layout, SLOW) };
    assert!(!moved.is_null());
    drop(snapshotter.join().unwrap());
    assert!(
        SNAPSHOT_CAME_IN_TIME.load(SeqCst),
        "{storage:?}: a snapshot waited for another thread's realloc"
    );
    // The trace moved with the block.
    assert!(
        tracemalloc::object_traceback(moved).is_some(),
        "{storage:?}"
    );
    let (with_block, _) = tracemalloc::traced_memory();
    // SAFETY: `moved` is live, of `SLOW` bytes and `layout`'s alignment.
    unsafe { std::alloc::dealloc(moved, Layout::from_size_align(SLOW, 8).unwrap()) };
    assert_eq!(
        with_block - tracemalloc::traced_memory().0,
        SLOW,
        "{storage:?}: traced at its new size"
    );
    tracemalloc::stop();
}

#[test]
fn a_snapshot_does_not_wait_for_a_reallocation() {
    for storage in [Storage::Table, Storage::Shadow] {
        case(storage);
    }
}
