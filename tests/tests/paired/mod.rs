//! Shared by `paired_blocks.rs` and `paired_blocks_wide.rs`, one per layout of shadow memory's
//! cells (`adapter-std/src/shadow.rs`: a cell per 32-byte span, or four in planes, chosen for
//! the inner allocator when tracing starts): glibc never starts two blocks in one span, but
//! allocators with 8- or 16-byte blocks (jemalloc, mimalloc, musl) do. Under an inner
//! allocator that hands out 8-byte blocks side by side, neighbours start in one span. In
//! planes each has a cell; with one cell per span they share it: the first takes the cell and
//! the other goes to the tables. Both must be traced, found, forgotten and counted exactly,
//! also when threads allocate and free neighbours at the same time, while another thread clears
//! the traces, and when a neighbour takes the freed slot while a failed `realloc` has the other
//! block's trace out of its cell.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering::*};
use std::sync::Mutex;

use tracemalloc::{Config, Storage, TracingAllocator};

/// Slots of 8 bytes, 16-byte aligned in pairs, for blocks of [`Small`]'s layout only, handed
/// out in address order (fresh ones) or last freed first: two fresh blocks allocated one after
/// the other from an even slot share a span.
const SLOTS: usize = 1 << 16;
const SLOT: usize = size_of::<Small>();

#[repr(C, align(32))]
struct Arena([u8; SLOTS * SLOT]);

struct Paired {
    arena: *mut Arena,
    /// The next slot never handed out, and the free list's head (slot index + 1, 0 = empty):
    /// a freed slot holds the next free one's index + 1.
    state: Mutex<(usize, usize)>,
}

// SAFETY: the arena is only written through blocks handed out (one owner each) and through
// free slots under the lock.
unsafe impl Sync for Paired {}

/// The size whose reallocation fails, after a neighbour was allocated on another thread.
const FAIL: usize = 777_777;
/// The size whose reallocation fails at once.
const FAIL_AT_ONCE: usize = 777_778;
static NEIGHBOUR_WANTED: AtomicBool = AtomicBool::new(false);
static NEIGHBOUR: AtomicPtr<u8> = AtomicPtr::new(std::ptr::null_mut());
/// Hands out slots never handed out before, leaving the free list alone.
static FRESH_ONLY: AtomicBool = AtomicBool::new(false);
/// Whether the arena serves [`Small`] blocks (`System` does until then): off while tracing
/// starts, the cells are laid out for glibc's blocks (one per span), else for the arena's
/// (in planes).
static ARENA_ON: AtomicBool = AtomicBool::new(false);

impl Paired {
    fn is_small(layout: Layout) -> bool {
        ARENA_ON.load(Relaxed) && layout == Layout::new::<Small>()
    }

    fn slot_of(&self, ptr: *mut u8) -> Option<usize> {
        let offset = (ptr as usize).checked_sub(self.arena as usize)?;
        (offset < SLOTS * SLOT).then_some(offset / SLOT)
    }

    fn take_slot(&self) -> *mut u8 {
        let mut state = self.state.lock().unwrap();
        let (fresh, free) = &mut *state;
        let slot = if *free != 0 && !FRESH_ONLY.load(Relaxed) {
            let slot = *free - 1;
            // SAFETY: a free slot holds the next free one's index + 1, written by `dealloc`.
            *free = unsafe {
                (self.arena as *const u8)
                    .add(slot * SLOT)
                    .cast::<usize>()
                    .read()
            };
            slot
        } else if *fresh < SLOTS {
            *fresh += 1;
            *fresh - 1
        } else {
            return std::ptr::null_mut();
        };
        // SAFETY: `slot < SLOTS`, inside the arena.
        unsafe { (self.arena as *mut u8).add(slot * SLOT) }
    }
}

// SAFETY: blocks of `Small`'s layout are distinct 8-byte, 8-aligned slots of the arena (a slot
// is handed out again only after `dealloc`); other blocks are `System`'s with the caller's
// layout. `realloc` to `FAIL` or `FAIL_AT_ONCE` returns null and leaves the block untouched, as
// `realloc` may; a slot reallocated to its own size stays where it is.
unsafe impl GlobalAlloc for Paired {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if Self::is_small(layout) {
            return self.take_slot();
        }
        // SAFETY: the caller's contract is forwarded.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        match self.slot_of(ptr) {
            Some(slot) => {
                let mut state = self.state.lock().unwrap();
                // SAFETY: the slot was handed out and is now given back: ours to write.
                unsafe { ptr.cast::<usize>().write(state.1) };
                state.1 = slot + 1;
            }
            // SAFETY: not an arena slot, so a `System` block of `layout`.
            None => unsafe { System.dealloc(ptr, layout) },
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size == FAIL {
            // Another thread allocates meanwhile (traced: this thread is inside the tracer).
            NEIGHBOUR_WANTED.store(true, Release);
            while NEIGHBOUR.load(Acquire).is_null() {
                std::thread::yield_now();
            }
            return std::ptr::null_mut();
        }
        if new_size == FAIL_AT_ONCE {
            return std::ptr::null_mut();
        }
        if self.slot_of(ptr).is_some() && new_size == SLOT {
            return ptr; // in place
        }
        let new_layout = Layout::from_size_align(new_size, layout.align()).unwrap();
        // SAFETY: the caller's contract: `new_layout` is valid and non-zero.
        let new = unsafe { self.alloc(new_layout) };
        if !new.is_null() {
            // SAFETY: both blocks are live and distinct; the copy stays within both.
            unsafe {
                std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
        }
        new
    }
}

#[global_allocator]
static ALLOC: TracingAllocator<Paired> = TracingAllocator::new(Paired {
    arena: {
        static mut ARENA: Arena = Arena([0; SLOTS * SLOT]);
        &raw mut ARENA
    },
    state: Mutex::new((0, 0)),
});

tracemalloc_tests::this_file!();

/// An 8-byte block of the inner allocator's arena.
#[repr(C)]
struct Small(u64);

#[inline(never)]
fn left() -> Box<Small> {
    Box::new(Small(1)) // LEFT
}

#[inline(never)]
fn right() -> Box<Small> {
    Box::new(Small(2)) // RIGHT
}

fn addr(b: &Small) -> usize {
    b as *const Small as usize
}

/// Fresh neighbours from here on: the next fresh slot is an even one.
fn fresh_pairs() {
    FRESH_ONLY.store(true, Relaxed);
    let probe = left();
    if addr(&probe).is_multiple_of(16) {
        drop(left()); // its odd neighbour
    }
}

/// Neighbours from two call sites, each pair in one span.
fn neighbours_in_one_thread() {
    let (before, _) = tracemalloc::traced_memory();
    let mut pairs: Vec<(Box<Small>, Box<Small>)> = Vec::with_capacity(1000);
    fresh_pairs();
    for _ in 0..1000 {
        pairs.push((left(), right()));
    }
    FRESH_ONLY.store(false, Relaxed);
    assert!(pairs.iter().all(|(l, r)| addr(r) == addr(l) + 8));
    assert!(pairs.iter().all(|(l, _)| addr(l).is_multiple_of(16)));
    assert_eq!(traced_here("LEFT"), Some((1000 * 8, 1000)));
    assert_eq!(traced_here("RIGHT"), Some((1000 * 8, 1000)));
    let (with, _) = tracemalloc::traced_memory();
    assert_eq!(with - before, 2000 * 8 + 1000 * 16, "blocks and the Vec");
    let (l, r) = &pairs[500];
    let line = |b: &Small| tracemalloc::object_traceback(b).map(|t| t.frames[0].lineno);
    assert_eq!(line(l), Some(line_of("LEFT")), "the cell's block");
    assert_eq!(
        line(r),
        Some(line_of("RIGHT")),
        "its neighbour (in the tables with one cell per span)"
    );

    // Free the left blocks first: their neighbours stay traced (in the tables, with one cell
    // per span). New blocks then land in the freed slots (last freed first) and take the cells.
    let rights: Vec<_> = pairs.into_iter().map(|(_, r)| r).collect();
    let lefts: Vec<_> = (0..1000).map(|_| left()).collect();
    let mut paired: Vec<_> = lefts.iter().map(|l| addr(l) + 8).collect();
    let mut expected: Vec<_> = rights.iter().map(|r| addr(r)).collect();
    paired.sort_unstable();
    expected.sort_unstable();
    assert_eq!(
        paired, expected,
        "each new block is a right block's neighbour"
    );
    drop((paired, expected));
    assert_eq!(traced_here("RIGHT"), Some((1000 * 8, 1000)));
    assert_eq!(traced_here("LEFT"), Some((1000 * 8, 1000)));
    drop(rights);
    assert_eq!(traced_here("RIGHT"), None);
    assert_eq!(traced_here("LEFT"), Some((1000 * 8, 1000)));
    drop(lefts);
    assert_eq!(traced_here("LEFT"), None);
    assert_eq!(
        tracemalloc::traced_memory().0,
        before,
        "every block forgotten once"
    );
}

#[inline(never)]
fn churned() -> Box<Small> {
    Box::new(Small(3)) // CHURN
}

/// Two threads allocate into and free from shared slots, so neighbours belong to different
/// threads and change hands; no trace may be lost or kept.
fn neighbours_across_threads() {
    const SHARED: usize = 512;
    let slots: &'static [AtomicPtr<Small>] = Vec::leak(
        (0..SHARED)
            .map(|_| AtomicPtr::new(std::ptr::null_mut()))
            .collect(),
    );
    let live: &'static AtomicUsize = Box::leak(Box::new(AtomicUsize::new(0)));
    // Joined, not scoped: a scope ends before its threads' exit, whose accounting would then
    // land after the counts below were read.
    let threads: Vec<_> = (0..2u64)
        .map(|t| {
            std::thread::spawn(move || {
                let mut x = t + 1;
                for _ in 0..200_000 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let block = Box::into_raw(churned());
                    let old = slots[x as usize % SHARED].swap(block, AcqRel);
                    if old.is_null() {
                        live.fetch_add(1, Relaxed);
                    } else {
                        // SAFETY: every non-null slot holds a block from `Box::into_raw`,
                        // swapped out by one thread only.
                        drop(unsafe { Box::from_raw(old) });
                    }
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    let live = live.load(Relaxed) as u64;
    assert_eq!(traced_here("CHURN"), Some((live * 8, live)));
    for slot in slots {
        let block = slot.swap(std::ptr::null_mut(), Relaxed);
        if !block.is_null() {
            // SAFETY: as above; the threads are done.
            drop(unsafe { Box::from_raw(block) });
        }
    }
    assert_eq!(traced_here("CHURN"), None);
}

/// A `realloc` that fails while a neighbour took the slot beside it (and, with one cell a span,
/// the cell its block's trace had left: the trace then goes to the tables): both blocks stay
/// traced.
fn neighbour_takes_the_cell_during_a_failed_realloc() {
    let layout = Layout::new::<Small>();
    let (before, _) = tracemalloc::traced_memory();
    fresh_pairs();
    let first = left();
    let second = right();
    FRESH_ONLY.store(false, Relaxed);
    let (a, b) = (addr(&first), addr(&second));
    assert_eq!((a % 16, b), (0, a + 8));
    drop(second); // its slot is the next one handed out
    let helper = std::thread::spawn(|| {
        while !NEIGHBOUR_WANTED.load(Acquire) {
            std::thread::yield_now();
        }
        NEIGHBOUR.store(Box::into_raw(right()).cast(), Release);
    });
    let block = Box::into_raw(first).cast::<u8>();
    // SAFETY: `block` is live, of `layout`; `FAIL` is non-zero and far from overflow.
    let moved = unsafe { std::alloc::realloc(block, layout, FAIL) };
    assert!(moved.is_null());
    helper.join().unwrap();
    let neighbour = NEIGHBOUR.load(Acquire);
    assert_eq!(neighbour as usize, b, "the neighbour took the freed slot");

    assert_eq!(traced_here("LEFT"), Some((8, 1)), "the realloc'd block");
    assert_eq!(traced_here("RIGHT"), Some((8, 1)), "the neighbour");
    assert_eq!(tracemalloc::traced_memory().0, before + 16);
    // SAFETY: both are live blocks of `layout` from `Box::into_raw`.
    unsafe {
        drop(Box::from_raw(block.cast::<Small>()));
        drop(Box::from_raw(neighbour.cast::<Small>()));
    }
    assert_eq!(traced_here("LEFT"), None);
    assert_eq!(traced_here("RIGHT"), None);
    assert_eq!(tracemalloc::traced_memory().0, before);
}

/// `clear_traces()` calls completed so far by [`neighbours_under_clears`]'s clearing thread.
static CLEARS: AtomicU64 = AtomicU64::new(0);
/// Allocations made so far by its churning threads.
static CHURNED: AtomicU64 = AtomicU64::new(0);

/// A block that holds the number of clears completed before its allocation began.
#[inline(never)]
fn cleared() -> *mut Small {
    let clears = CLEARS.load(Acquire);
    Box::into_raw(Box::new(Small(clears))) // CLEARED
}

/// One thread's part of [`neighbours_under_clears`]: replaces, frees, reallocates in place and
/// fails to reallocate the blocks of random slots.
fn churn_with_reallocs(slots: &[AtomicPtr<Small>], seed: u64, rounds: usize) {
    let layout = Layout::new::<Small>();
    let mut x = seed;
    for _ in 0..rounds {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let slot = &slots[(x >> 8) as usize % slots.len()];
        CHURNED.fetch_add(1, Relaxed);
        let taken = match x % 8 {
            0..=3 => slot.swap(cleared(), AcqRel),
            4 => slot.swap(std::ptr::null_mut(), AcqRel),
            step => {
                let block = slot.swap(std::ptr::null_mut(), AcqRel);
                if block.is_null() {
                    continue;
                }
                let new_size = if step == 7 { FAIL_AT_ONCE } else { SLOT };
                let ptr = block.cast();
                // SAFETY: `block` is a live block of `layout` that this thread took out of its
                // slot; both sizes are non-zero.
                let moved = unsafe { std::alloc::realloc(ptr, layout, new_size) }; // REALLOCATED
                assert_eq!(moved.is_null(), step == 7, "in place, or failed");
                slot.swap(block, AcqRel) // the block is untouched either way
            }
        };
        if !taken.is_null() {
            // SAFETY: every non-null slot holds a block from `Box::into_raw`, swapped out by
            // one thread only.
            drop(unsafe { Box::from_raw(taken) });
        }
    }
}

/// The blocks traced to `CLEARED` or, once reallocated in place, to `REALLOCATED`: bytes and
/// count.
fn churned_traced() -> (u64, u64) {
    [traced_here("CLEARED"), traced_here("REALLOCATED")]
        .into_iter()
        .flatten()
        .fold((0, 0), |(bytes, count), (b, c)| (bytes + b, count + c))
}

/// Frees the blocks of every slot.
fn free_all(slots: &[AtomicPtr<Small>]) {
    for slot in slots {
        let block = slot.swap(std::ptr::null_mut(), AcqRel);
        if !block.is_null() {
            // SAFETY: as in `churn_with_reallocs`.
            drop(unsafe { Box::from_raw(block) });
        }
    }
}

/// Neighbours churned by two threads, with reallocations in place and failed ones, while a
/// third clears the traces during the first half of the churn; then churned without clears.
/// After the first phase every live block allocated after the last clear is traced, and no
/// more blocks than are live; after the second the traces are exactly the live blocks, and
/// nothing stays traced once they are freed (from a helper's review).
fn neighbours_under_clears() {
    const ROUNDS: u64 = 50_000;
    let slots: &'static [AtomicPtr<Small>] = Vec::leak(
        (0..256)
            .map(|_| AtomicPtr::new(std::ptr::null_mut()))
            .collect(),
    );
    let churn = |seed: u64| {
        let churners: Vec<_> = (0..2)
            .map(|t| {
                std::thread::spawn(move || churn_with_reallocs(slots, seed + t, ROUNDS as usize))
            })
            .collect();
        for thread in churners {
            thread.join().unwrap();
        }
    };
    let live = || {
        let blocks = slots
            .iter()
            .map(|s| s.load(Acquire))
            .filter(|b| !b.is_null());
        // SAFETY: the churning threads are done; live blocks stay in their slots until freed.
        blocks.map(|b| unsafe { (*b).0 }).collect::<Vec<u64>>()
    };
    for round in 0..6u64 {
        let start = CHURNED.load(Relaxed);
        let clearer = std::thread::spawn(move || {
            while CHURNED.load(Relaxed) < start + ROUNDS {
                tracemalloc::clear_traces();
                CLEARS.fetch_add(1, Release);
                std::thread::yield_now();
            }
        });
        churn(1 + round * 7);
        clearer.join().unwrap();
        let last = CLEARS.load(Acquire);
        let live_now = live();
        let after_last = live_now.iter().filter(|&&clears| clears == last).count() as u64;
        let (bytes, traced) = churned_traced();
        assert_eq!(bytes, traced * 8, "round {round}");
        assert!(
            after_last <= traced && traced <= live_now.len() as u64,
            "round {round}: {traced} traced, {} live, {after_last} allocated after the last clear",
            live_now.len()
        );
        free_all(slots);
        assert_eq!(
            churned_traced(),
            (0, 0),
            "round {round}: traced after the frees"
        );

        churn(3 + round * 17);
        let live_now = live().len() as u64;
        let traced = churned_traced();
        assert_eq!(
            traced,
            (live_now * 8, live_now),
            "round {round}: traces of the live blocks"
        );
        free_all(slots);
        assert_eq!(
            churned_traced(),
            (0, 0),
            "round {round}: traced after the frees"
        );
    }
}

/// The test: under shadow memory whose cells were laid out for the arena's blocks (`planed`)
/// or for glibc's (one cell per span).
pub fn neighbours_in_one_span_are_both_traced(planed: bool) {
    ARENA_ON.store(planed, Relaxed);
    tracemalloc::start_with(Config {
        nframe: 4,
        storage: Storage::Shadow,
        ..Config::default()
    })
    .unwrap();
    // Tracing is switched on by the first allocation, which chooses the layout.
    drop(std::hint::black_box(Box::new(5u32)));
    ARENA_ON.store(true, Relaxed);
    neighbours_in_one_thread();
    neighbours_across_threads();
    neighbour_takes_the_cell_during_a_failed_realloc();
    neighbours_under_clears();
    tracemalloc::stop();
}
