//! An inner allocator that registers its fork handlers on its first use (jemalloc does, in
//! `malloc_init`) and holds its lock from its `prepare` handler to its `child` one. The child
//! runs handlers in the order they were registered, and the tracer's child handler frees the
//! other threads' queued blocks through the inner allocator: its handlers must come after the
//! inner allocator's. In a cdylib, whose first allocation may be `start()`'s own, they came
//! first, and the child hung on the inner allocator's lock. Its own main: it forks.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, Ordering::*};
use std::time::{Duration, Instant};

use tracemalloc::TracingAllocator;

/// Exit status of a process stuck on [`LOCKED`].
const STUCK: i32 = 42;

static LOCKED: AtomicBool = AtomicBool::new(false);
/// Whether the fork handlers are registered.
static REGISTERED: AtomicBool = AtomicBool::new(false);
/// Stands for a cdylib just loaded: no allocation has initialised the allocator yet (the test
/// harness's runtime allocated before `main`, which sets this).
static LOADED: AtomicBool = AtomicBool::new(false);

fn lock() {
    let start = Instant::now();
    while LOCKED
        .compare_exchange_weak(false, true, Acquire, Relaxed)
        .is_err()
    {
        if start.elapsed() > Duration::from_secs(3) {
            // SAFETY: `_exit` ends the process at once; nothing here needs to run after it.
            unsafe { libc::_exit(STUCK) };
        }
        std::hint::spin_loop();
    }
}

fn unlock() {
    LOCKED.store(false, Release);
}

extern "C" fn prepare() {
    lock();
}

extern "C" fn after_fork() {
    unlock();
}

/// `System` behind one lock, with fork handlers registered on first use.
struct LazyForkAware;

// SAFETY: forwards to `System` unchanged; the lock only serialises the calls.
unsafe impl GlobalAlloc for LazyForkAware {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if LOADED.load(Relaxed) && !REGISTERED.swap(true, Relaxed) {
            // SAFETY: the handlers only take and release a spin lock.
            unsafe { libc::pthread_atfork(Some(prepare), Some(after_fork), Some(after_fork)) };
        }
        lock();
        // SAFETY: the caller's contract, forwarded.
        let ptr = unsafe { System.alloc(layout) };
        unlock();
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        lock();
        // SAFETY: the caller's contract, forwarded.
        unsafe { System.dealloc(ptr, layout) };
        unlock();
    }
}

#[global_allocator]
static ALLOC: TracingAllocator<LazyForkAware> = TracingAllocator::new(LazyForkAware);

fn main() {
    LOADED.store(true, Relaxed);
    tracemalloc_tests::start_in_tables(4);
    // Another thread's frees wait in its queue (fewer than a batch) while it stays alive.
    let (go_on, wait) = std::sync::mpsc::channel::<()>();
    let (freed, wait_freed) = std::sync::mpsc::channel::<()>();
    let worker = std::thread::spawn(move || {
        drop((0..5).map(|_| Box::new([0u8; 64])).collect::<Vec<_>>());
        freed.send(()).unwrap();
        wait.recv().unwrap();
    });
    wait_freed.recv().unwrap();
    // SAFETY: the child calls only `_exit`, after the fork handlers ran.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: ends the child at once.
        unsafe { libc::_exit(0) };
    }
    let mut status = 0;
    // SAFETY: `pid` is this process's child; `status` is a valid place to write.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    go_on.send(()).unwrap();
    worker.join().unwrap();
    tracemalloc::stop();
    let code = libc::WEXITSTATUS(status);
    assert!(
        libc::WIFEXITED(status) && code == 0,
        "the fork child exited with {code} ({STUCK}: stuck on the inner allocator's lock)"
    );
    println!("fork_order: the child's fork handlers ran after the inner allocator's: ok");
}
