//! A snapshot that overlaps a restart into shadow memory reads the storage of the session whose
//! generation it copies: read before, the old session's storage (the tables) skipped the cells,
//! and every small block of the new session was missing from a snapshot that claimed it.
//!
//! The restart runs deterministically inside the snapshot: the inner allocator, asked for the
//! snapshot's buffers (the first request of at least `HOOKED_SIZE` bytes once armed), waits
//! while another thread stops tracing, starts it again with shadow memory and leaks a block.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::time::{Duration, Instant};

use tracemalloc::{Config, Storage, TracingAllocator};

/// The snapshot's buffers are at least this large; the test's own blocks are far smaller.
const HOOKED_SIZE: usize = 16 << 10;

/// The leaked block's size, unlike any other block of this test.
const KEPT_SIZE: usize = 40;

/// How long the hooked allocation waits for the restart before giving up (the test then fails
/// on its assertions rather than hanging).
const PATIENCE: Duration = Duration::from_secs(10);

static HOOK_ARMED: AtomicBool = AtomicBool::new(false);
static IN_SNAPSHOT: AtomicBool = AtomicBool::new(false);
static RESTARTED: AtomicBool = AtomicBool::new(false);
static KEPT: AtomicUsize = AtomicUsize::new(0);

/// `System`, but the first large allocation after arming waits for the restart.
struct Hooked;

// SAFETY: every method forwards to `System` with the caller's arguments; waiting first
// allocates nothing.
unsafe impl GlobalAlloc for Hooked {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() >= HOOKED_SIZE && HOOK_ARMED.swap(false, SeqCst) {
            IN_SNAPSHOT.store(true, SeqCst);
            let start = Instant::now();
            while !RESTARTED.load(SeqCst) && start.elapsed() < PATIENCE {
                std::hint::spin_loop();
            }
        }
        // SAFETY: the caller's contract for `alloc`, forwarded.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` (every allocation here does) with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: TracingAllocator<Hooked> = TracingAllocator::new(Hooked);

fn config(storage: Storage) -> Config {
    Config {
        nframe: 4,
        storage,
        ..Config::default()
    }
}

#[test]
fn a_snapshot_racing_with_a_restart_into_shadow_memory_keeps_the_cells() {
    tracemalloc::start_with(config(Storage::Table)).unwrap();
    drop(tracemalloc::take_snapshot().unwrap()); // the snapshot's first buffers, unhooked
    let restarter = std::thread::spawn(|| {
        let start = Instant::now();
        while !IN_SNAPSHOT.load(SeqCst) && start.elapsed() < PATIENCE {
            std::hint::spin_loop();
        }
        tracemalloc::stop();
        tracemalloc::start_with(config(Storage::Shadow)).unwrap();
        let kept: &'static mut [u8; KEPT_SIZE] = Box::leak(Box::new([7; KEPT_SIZE]));
        KEPT.store(kept.as_ptr() as usize, SeqCst);
        RESTARTED.store(true, SeqCst);
    });
    HOOK_ARMED.store(true, SeqCst);
    let snapshot = tracemalloc::take_snapshot().unwrap();
    restarter.join().unwrap();
    assert!(
        IN_SNAPSHOT.load(SeqCst),
        "the snapshot never reached the hook"
    );
    assert!(RESTARTED.load(SeqCst), "the restart did not happen in time");
    let kept = KEPT.load(SeqCst) as *const u8;
    assert!(
        tracemalloc::object_traceback(kept).is_some(),
        "the kept block is traced"
    );
    assert!(
        snapshot.traces.iter().any(|t| t.size == KEPT_SIZE as u64),
        "the snapshot of the new session has the kept block, in its cell"
    );
    tracemalloc::stop();
}
