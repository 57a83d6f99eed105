//! A signal handler that frees while its thread holds a tracer lock outside the allocator
//! (`traced_memory()` publishes under a shard lock) must not wait for that lock forever: the
//! thread is inside the tracer, so the handler's free passes untraced. The main thread asks for
//! the traced memory in a loop, then for the tracer's memory in another, while another thread
//! signals it, and each handler frees blocks of the shard that lock guards; a watchdog fails
//! the run when the main thread stops moving.
//! `SIGNAL_SECS` sets the length (3 s by default).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use tracemalloc::TracingAllocator;

/// The system allocator, except that frees made by the signal handler are dropped: glibc's
/// `free` is not safe there, and the test is about the tracer's locks.
struct NoFreeInHandler;

static IN_HANDLER: AtomicBool = AtomicBool::new(false);

// SAFETY: allocations and frees are `System`'s, unchanged, except that blocks freed in the
// handler are never reused, so never freed twice.
unsafe impl GlobalAlloc for NoFreeInHandler {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is forwarded.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if !IN_HANDLER.load(Relaxed) {
            // SAFETY: the caller's contract is forwarded.
            unsafe { System.dealloc(ptr, layout) }
        }
    }
}

#[global_allocator]
static ALLOC: TracingAllocator<NoFreeInHandler> = TracingAllocator::new(NoFreeInHandler);

const BLOCKS: usize = 1 << 10;
/// Above the size whose frees are queued, so every free in the handler takes its shard's lock.
const LAYOUT: Layout = Layout::new::<[u64; 1024]>();
static POOL: [AtomicUsize; BLOCKS] = [const { AtomicUsize::new(0) }; BLOCKS];
static NEXT: AtomicUsize = AtomicUsize::new(0);
static PROGRESS: AtomicU64 = AtomicU64::new(0);
static DONE: AtomicBool = AtomicBool::new(false);

extern "C" fn free_one(_: libc::c_int) {
    let i = NEXT.fetch_add(1, Relaxed);
    if let Some(block) = POOL.get(i) {
        let ptr = block.swap(0, Relaxed);
        if ptr != 0 {
            IN_HANDLER.store(true, Relaxed);
            // SAFETY: the block came from the global allocator with `LAYOUT` and is freed once
            // (swapped out of the pool).
            unsafe { std::alloc::dealloc(ptr as *mut u8, LAYOUT) };
            IN_HANDLER.store(false, Relaxed);
        }
    }
}

/// The shard of `addr` (as `adapter-std/src/state.rs` computes it): the handler frees blocks
/// of the shard `traced_memory()` locks.
fn shard_of(addr: usize) -> usize {
    let mut chunk = (addr >> 20) as u64;
    chunk ^= chunk >> 33;
    chunk = chunk.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
    chunk ^= chunk >> 33;
    (chunk >> 60) as usize
}

fn main() {
    let secs = std::env::var("SIGNAL_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    tracemalloc::start(1).unwrap();
    // Blocks of other shards are kept until the pool is full, so that the allocator moves on.
    let mut others = Vec::new();
    let mut kept = 0;
    while kept < BLOCKS {
        // SAFETY: a valid, non-zero-sized layout.
        let ptr = unsafe { std::alloc::alloc(LAYOUT) };
        if !ptr.is_null() && shard_of(ptr as usize) == 0 {
            POOL[kept].store(ptr as usize, Relaxed);
            kept += 1;
        } else if !ptr.is_null() {
            others.push(ptr as usize);
        }
    }
    for ptr in others {
        // SAFETY: allocated above with `LAYOUT`, and freed once.
        unsafe { std::alloc::dealloc(ptr as *mut u8, LAYOUT) };
    }
    // SAFETY: `free_one` only touches atomics and frees through the global allocator.
    unsafe {
        libc::signal(
            libc::SIGUSR1,
            free_one as extern "C" fn(libc::c_int) as *const () as libc::sighandler_t,
        )
    };
    // SAFETY: `pthread_self` has no preconditions.
    let main_thread = unsafe { libc::pthread_self() } as usize;
    let signaller = std::thread::spawn(move || {
        while !DONE.load(Relaxed) {
            // SAFETY: the main thread outlives this loop (it joins this thread).
            unsafe { libc::pthread_kill(main_thread as libc::pthread_t, libc::SIGUSR1) };
            for _ in 0..200 {
                std::hint::spin_loop();
            }
        }
    });
    std::thread::spawn(|| {
        let mut last = 0;
        let mut since = Instant::now();
        loop {
            std::thread::sleep(Duration::from_millis(100));
            let now = PROGRESS.load(Relaxed);
            if now != last {
                (last, since) = (now, Instant::now());
            } else if since.elapsed() > Duration::from_secs(5) {
                eprintln!("deadlock: the main thread is stuck after {now} calls");
                std::process::exit(2);
            }
        }
    });
    // One call at a time, each for half the pool (and half the time): in a loop of both,
    // `traced_memory()`'s short hold of the lock was too rare a target to be hit, and the run
    // passed without its guard.
    let calls: [(&str, fn()); 2] = [
        ("traced_memory", || {
            std::hint::black_box(tracemalloc::traced_memory());
        }),
        ("tracemalloc_memory", || {
            std::hint::black_box(tracemalloc::tracemalloc_memory());
        }),
    ];
    for (phase, (name, call)) in calls.into_iter().enumerate() {
        let end = Instant::now() + Duration::from_secs(secs).div_f64(2.0);
        let (first, last) = (NEXT.load(Relaxed), BLOCKS / 2 * (phase + 1));
        while Instant::now() < end && NEXT.load(Relaxed) < last {
            call();
            PROGRESS.fetch_add(1, Relaxed);
        }
        let freed = NEXT.load(Relaxed).min(last).saturating_sub(first);
        println!("signal_free: {freed} blocks freed by handlers during {name}()");
        assert!(freed > 0, "no signal handler freed a block during {name}()");
    }
    DONE.store(true, Relaxed);
    signaller.join().unwrap();
    println!(
        "signal_free: {} calls, {} signals, no deadlock",
        PROGRESS.load(Relaxed),
        NEXT.load(Relaxed)
    );
}
