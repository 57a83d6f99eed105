//! The floor: the least that any tracer keeping a trace per live block, with a traceback of
//! `--nframe` frames, pays on this machine. It walks the frame pointers (stopping at the limit,
//! with no `total_nframe` to count), hashes the frames as it goes, and stores the block in the
//! core's trace table under one lock: no interning, no queue, no accounting, no reentrancy
//! guard, no growth (the table is made, and its pages touched, before the timed run). Frees
//! forget their trace at once. It is not a tracer (the hash stands in for an id, and nothing can
//! be read back); it bounds from below what tracemalloc's allocation and free paths can cost.
//!
//! `FLOOR=walk` only walks, `FLOOR=table` only records (with the block address's hash in place
//! of a traceback), `FLOOR=full` (the default) does both. `FLOOR=shadow` walks and records into
//! shadow memory instead of the table (an 8-byte cell per 32 bytes of address space, see
//! `mod shadow` below), `FLOOR=shadow-only` records there without walking.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering::Relaxed};

use tracemalloc::core::table::{Placement, Slot, TraceTable};
use tracemalloc::core::traceback::{fold_frame, HASH_SEED};
use tracemalloc::core::TracebackId;

const WALK: u8 = 1;
const TABLE: u8 = 2;
/// Records in shadow memory instead of the table (see [`shadow`]).
const SHADOW: u8 = 4;
/// Which parts run; 0 until the table is ready.
static PARTS: AtomicU8 = AtomicU8::new(0);
static DEPTH: AtomicUsize = AtomicUsize::new(16);
static TRACES: spin::Mutex<Option<TraceTable<'static>>> = spin::Mutex::new(None);
/// Slots of the table: json's 880 k live blocks fill it to 0.42, as tracemalloc's own tables
/// are at that point; a workload with more live blocks than the load limit leaves the rest
/// untraced.
const SLOTS: usize = 1 << 21;

thread_local! {
    /// The top of this thread's stack; 0 until read.
    static STACK_TOP: Cell<usize> = const { Cell::new(0) };
}

fn stack_top() -> usize {
    let top = STACK_TOP.with(Cell::get);
    if top != 0 {
        return top;
    }
    // SAFETY: `attr` is initialised by `pthread_getattr_np` before it is read and destroyed
    // once; `pthread_attr_getstack` only writes its out-parameters.
    let top = unsafe {
        let mut attr: libc::pthread_attr_t = core::mem::zeroed();
        if libc::pthread_getattr_np(libc::pthread_self(), &mut attr) != 0 {
            return 0;
        }
        let (mut addr, mut size) = (core::ptr::null_mut(), 0);
        let ok = libc::pthread_attr_getstack(&attr, &mut addr, &mut size) == 0;
        libc::pthread_attr_destroy(&mut attr);
        if ok {
            addr as usize + size
        } else {
            0
        }
    };
    STACK_TOP.with(|t| t.set(top));
    top
}

/// The hash of the caller's first `depth` frames.
#[inline(always)]
fn walk(depth: usize) -> u64 {
    let top = stack_top();
    let mut fp: usize = 0; // elsewhere than x86-64, no walk: the floor is the table's alone
    #[cfg(target_arch = "x86_64")]
    // SAFETY: reading the frame-pointer register has no side effect.
    unsafe {
        core::arch::asm!("mov {}, rbp", out(reg) fp, options(nomem, nostack, preserves_flags))
    };
    let mut hash = HASH_SEED;
    for _ in 0..depth {
        if fp == 0 || !fp.is_multiple_of(8) || fp > top.saturating_sub(16) {
            break;
        }
        // SAFETY: `fp` is aligned and lies between this frame and the top of the thread's
        // stack (the chain only moves upwards), which is mapped.
        let (next, ret) = unsafe { (*(fp as *const usize), *((fp + 8) as *const usize)) };
        if ret == 0 {
            break;
        }
        hash = fold_frame(hash, ret);
        if next <= fp {
            break;
        }
        fp = next;
    }
    hash
}

struct Floor;

impl Floor {
    #[inline(always)]
    fn record(&self, ptr: *mut u8, size: usize, parts: u8) {
        let hash = if parts & WALK != 0 {
            walk(DEPTH.load(Relaxed))
        } else {
            fold_frame(HASH_SEED, ptr as usize)
        };
        if parts & SHADOW != 0 {
            if let Some(cell) = shadow::cell(ptr as usize) {
                cell.store((size as u64) << 24 | (hash & 0xFF_FFFF), Relaxed);
            }
            return;
        }
        if parts & TABLE == 0 {
            core::hint::black_box(hash);
            return;
        }
        if let Some(table) = TRACES.lock().as_mut() {
            let id = TracebackId::from_index(hash as u32);
            let _ = table.insert(ptr as usize, size as u64, id, |_| true);
        }
    }

    #[inline(always)]
    fn forget(&self, ptr: *mut u8, parts: u8) {
        if parts & SHADOW != 0 {
            if let Some(cell) = shadow::cell(ptr as usize) {
                core::hint::black_box(cell.swap(0, Relaxed));
            }
            return;
        }
        if parts & TABLE != 0 {
            if let Some(table) = TRACES.lock().as_mut() {
                table.remove(ptr as usize, |_| true);
            }
        }
    }
}

// SAFETY: every method forwards to `System` with the caller's arguments and returns its result
// unchanged; the bookkeeping reads only addresses and sizes, and never allocates.
unsafe impl GlobalAlloc for Floor {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract, forwarded.
        let ptr = unsafe { System.alloc(layout) };
        let parts = PARTS.load(Relaxed);
        if parts != 0 && !ptr.is_null() {
            self.record(ptr, layout.size(), parts);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        self.forget(ptr, PARTS.load(Relaxed));
        // SAFETY: the caller's contract, forwarded.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let parts = PARTS.load(Relaxed);
        // SAFETY: the caller's contract, forwarded.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if parts != 0 && !new.is_null() {
            self.forget(ptr, parts);
            self.record(new, new_size, parts);
        }
        new
    }
}

/// `len` zeroed elements on transparent huge pages, as tracemalloc's big tables are (fewer TLB
/// misses); never freed.
fn huge_pages<T: Copy>(len: usize) -> &'static mut [T] {
    const HUGE: usize = 2 << 20;
    let layout = Layout::array::<T>(len)
        .and_then(|l| l.align_to(HUGE))
        .expect("table layout");
    // SAFETY: the layout has a non-zero size. The block is never freed, so the slice may live
    // for 'static; zeroed `T: Copy` values are valid for the slot type used here (all-zero is
    // `Slot::EMPTY`).
    unsafe {
        let ptr = System.alloc(layout);
        assert!(!ptr.is_null(), "no memory for the floor's table");
        libc::madvise(ptr.cast(), layout.size(), libc::MADV_HUGEPAGE);
        ptr.write_bytes(0, layout.size());
        core::slice::from_raw_parts_mut(ptr.cast::<T>(), len)
    }
}

/// Shadow memory: an 8-byte cell for every 32 bytes of address space (as tracemalloc's: glibc
/// starts blocks at least 32 bytes apart), at a fixed place computed from the block's address,
/// so that recording a block touches memory with the heap's own locality instead of a hash
/// table's. A directory of 1 GiB regions maps each to 256 MiB of cells, reserved (not
/// committed) when a block first lands in the region. Blocks that share a cell (other
/// allocators than glibc's) overwrite each other: this is a floor, not a tracer.
mod shadow {
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::*};

    const REGION_BITS: u32 = 30;
    const REGIONS: usize = 1 << (47 - REGION_BITS);
    static DIRECTORY: [AtomicUsize; REGIONS] = [const { AtomicUsize::new(0) }; REGIONS];
    static MAPPING: spin::Mutex<()> = spin::Mutex::new(());

    #[inline(always)]
    pub(super) fn cell(addr: usize) -> Option<&'static AtomicU64> {
        let region = addr >> REGION_BITS;
        let mut base = DIRECTORY.get(region)?.load(Acquire);
        if base == 0 {
            base = map(region)?;
        }
        let offset = (addr & ((1 << REGION_BITS) - 1)) >> 5;
        // SAFETY: `base` is a mapping of `1 << (REGION_BITS - 2)` bytes that is never unmapped,
        // holding one aligned 8-byte cell per 32 bytes of the region; `offset` indexes it.
        Some(unsafe { &*(base as *const AtomicU64).add(offset) })
    }

    #[cold]
    fn map(region: usize) -> Option<usize> {
        let _held = MAPPING.lock();
        let base = DIRECTORY[region].load(Acquire);
        if base != 0 {
            return Some(base);
        }
        // SAFETY: an anonymous private mapping at an address of the kernel's choosing.
        let ptr = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                1 << (REGION_BITS - 2),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return None;
        }
        DIRECTORY[region].store(ptr as usize, Release);
        Some(ptr as usize)
    }
}

#[global_allocator]
static ALLOC: Floor = Floor;

fn main() {
    let args = tracemalloc_bench::Args::from_env();
    let parts = match std::env::var("FLOOR").as_deref() {
        Ok("walk") => WALK,
        Ok("table") => TABLE,
        Ok("full") | Err(_) => WALK | TABLE,
        Ok("shadow") => WALK | SHADOW,
        Ok("shadow-only") => SHADOW,
        Ok(other) => {
            eprintln!("FLOOR={other:?}: expected walk, table, full, shadow or shadow-only");
            std::process::exit(2);
        }
    };
    let slots = huge_pages::<Slot>(SLOTS);
    // Placed as the tracer places its tables under glibc, whose blocks lie 32 bytes apart.
    *TRACES.lock() = Some(TraceTable::with_placement(slots, Placement::Spaced));
    DEPTH.store(args.nframe, Relaxed);
    PARTS.store(parts, Relaxed);
    let (elapsed, checksum) = tracemalloc_bench::time_workload(args.workload, args.threads);
    PARTS.store(0, Relaxed);
    let live = TRACES.lock().as_ref().map_or(0, TraceTable::len);
    let extra = format!("nframe={} parts={parts} live={live}", args.nframe);
    tracemalloc_bench::print_result("floor", &args, elapsed, checksum, &extra);
}
