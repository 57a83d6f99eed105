//! The traced heap: a [`Heap`] wrapper that records every block into a tracer in static storage.
//!
//! All storage is inside the [`TracedHeap`] value, sized by its const parameters, so a
//! `static` traced heap costs only bss (zeroed storage is an empty tracer). The tracer is
//! created over that storage the first time tracing starts and lives as long as the heap.
//! Every event takes one `critical_section`, around both the heap operation and the record, so
//! a block freed by an interrupt handler and handed out again cannot be recorded out of order.
//! Nothing here allocates, grows or panics: when a table is full the block is counted as
//! untraced by the core. Events from code that runs inside the tracer (a snapshot's sink) wait
//! in a short queue and are recorded when it returns.

use core::alloc::{GlobalAlloc, Layout};
use core::cell::{RefCell, UnsafeCell};
use core::sync::atomic::{AtomicBool, Ordering};

use critical_section::{CriticalSection, Mutex};
use tracemalloc_core::codec::{encode_tracer, DeviceInfo, Sink};
use tracemalloc_core::{Counters, Tracer, TracerArrays, DEFAULT_DOMAIN};

use crate::heap::Heap;
use crate::report::{self, Order, Report, SiteTotals};
use crate::stack::{self, CallStacks};

/// What the lock protects.
struct State<const TRACEBACKS: usize> {
    /// Created over the storage on the first start, never dropped.
    tracer: Option<Tracer<'static>>,
    call_stacks: CallStacks,
    /// Scratch for reports: live totals per traceback id.
    totals: [SiteTotals; TRACEBACKS],
    /// Totals per traceback id when the firmware marked the baseline.
    baseline: [SiteTotals; TRACEBACKS],
}

/// Heap events that came while the tracer's state was borrowed (from `with_tracer`'s closure or
/// a snapshot's sink), replayed in order when the borrow ends.
#[derive(Clone, Copy)]
enum Missed {
    Alloc {
        addr: usize,
        size: usize,
    },
    Free {
        addr: usize,
    },
    /// An allocation whose free came past the queue's room: the two cancelled out.
    Cancelled,
}

/// How many [`Missed`] events wait for the borrow to end; past that, allocations count as
/// untraced, and frees make room for themselves (see [`MissedQueue::free`]).
const MISSED_EVENTS: usize = 16;

/// The [`Missed`] events waiting, and the allocations past the queue's room.
struct MissedQueue {
    events: heapless::Vec<Missed, MISSED_EVENTS>,
    overflow_blocks: u64,
    overflow_bytes: u64,
}

impl MissedQueue {
    const EMPTY: MissedQueue = MissedQueue {
        events: heapless::Vec::new(),
        overflow_blocks: 0,
        overflow_bytes: 0,
    };

    /// Queues a new block; past the queue's room it counts as untraced.
    fn alloc(&mut self, addr: usize, size: usize) {
        if self.events.push(Missed::Alloc { addr, size }).is_err() {
            self.count_untraced(size);
        }
    }

    fn count_untraced(&mut self, size: usize) {
        self.overflow_blocks += 1;
        self.overflow_bytes = self.overflow_bytes.saturating_add(size as u64);
    }

    /// The latest queued allocation at `addr` (the block's own: an address is allocated again
    /// only after it is freed).
    fn queued_alloc(&self, addr: usize) -> Option<usize> {
        self.events
            .iter()
            .rposition(|e| matches!(*e, Missed::Alloc { addr: a, .. } if a == addr))
    }

    /// Queues a free. A free must not be lost, or its block's trace would stay, a leak that
    /// is not there; past the queue's room it cancels the block's queued allocation (the
    /// block lived and died while the tracer was busy), or else takes the place of a
    /// cancelled one or of the latest queued allocation, which counts as untraced instead.
    /// Only a queue of frees alone loses one. In place, not shifted: a free may go anywhere
    /// before the events of its address, which can only be a queued allocation (cancelled
    /// here), and a shift would bring `memmove` into the firmware.
    fn free(&mut self, addr: usize) {
        if self.events.push(Missed::Free { addr }).is_ok() {
            return;
        }
        if let Some(at) = self.queued_alloc(addr) {
            self.events[at] = Missed::Cancelled;
            return;
        }
        let room = self
            .events
            .iter()
            .rposition(|e| matches!(e, Missed::Cancelled | Missed::Alloc { .. }));
        if let Some(at) = room {
            if let Missed::Alloc { size, .. } = self.events[at] {
                self.count_untraced(size);
            }
            self.events[at] = Missed::Free { addr };
        }
    }

    /// Queues a new block at `addr`, or one that moved there from `old`, or was resized in
    /// place there.
    fn note_alloc(&mut self, old: Option<usize>, addr: usize, size: usize) {
        match old {
            Some(old) if old == addr => self.resize(addr, size),
            Some(old) => {
                self.free(old);
                self.alloc(addr, size);
            }
            None => self.alloc(addr, size),
        }
    }

    /// Queues a block resized in place: its queued allocation takes the new size, or else its
    /// old trace goes (a free) and a new allocation follows. Not one allocation replacing the
    /// trace when replayed: a later free past the room may cancel that allocation or take its
    /// place, and the old trace must go all the same.
    fn resize(&mut self, addr: usize, size: usize) {
        if let Some(at) = self.queued_alloc(addr) {
            self.events[at] = Missed::Alloc { addr, size };
        } else {
            self.free(addr);
            self.alloc(addr, size);
        }
    }
}

/// A heap that traces its blocks, for `#[global_allocator]`.
///
/// - `SLOTS`: trace table slots (a power of two); at most 3/4 of them hold live blocks.
/// - `TRACEBACKS`: distinct call stacks (a power of two), the overflow entry included.
/// - `FRAMES`: frames in the traceback pool, shared by all call stacks.
/// - `NFRAME`: the traceback limit, frames kept per call stack.
///
/// Bytes of storage: `SLOTS * 12 + TRACEBACKS * 44 + FRAMES * 4` on 32-bit targets (12 per
/// trace slot; per traceback a 12-byte entry, 16 of index and 16 of report totals and
/// baseline), and about 340 more of counters and the queue of missed events;
/// [`TracedHeap::tracemalloc_memory`] gives the exact figure.
///
/// ```
/// use core::alloc::{GlobalAlloc, Layout};
/// use std::alloc::System;
/// use tracemalloc_embedded::{CallStacks, Heap, Order, TracedHeap};
///
/// // Any allocator that reports its usage is a `Heap`; on a device, embedded-alloc's.
/// struct Counted(std::sync::atomic::AtomicUsize);
/// unsafe impl GlobalAlloc for Counted {
///     unsafe fn alloc(&self, l: Layout) -> *mut u8 {
///         self.0.fetch_add(l.size(), std::sync::atomic::Ordering::Relaxed);
///         unsafe { System.alloc(l) }
///     }
///     unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
///         self.0.fetch_sub(l.size(), std::sync::atomic::Ordering::Relaxed);
///         unsafe { System.dealloc(p, l) }
///     }
/// }
/// impl Heap for Counted {
///     fn used(&self) -> usize { self.0.load(std::sync::atomic::Ordering::Relaxed) }
///     fn free(&self) -> usize { usize::MAX }
/// }
///
/// static HEAP: TracedHeap<Counted, 64, 16, 64, 4> =
///     TracedHeap::new(Counted(std::sync::atomic::AtomicUsize::new(0)));
///
/// HEAP.start(CallStacks::ReturnAddress);
/// let layout = Layout::from_size_align(24, 4).unwrap();
/// let block = unsafe { HEAP.alloc(layout) };
/// assert_eq!(HEAP.traced_memory(), (24, 24));
/// let report = HEAP.report::<3>(Order::Size);
/// assert_eq!(report.sites[0].size, 24);
/// unsafe { HEAP.dealloc(block, layout) };
/// assert_eq!(HEAP.traced_memory(), (0, 24));
/// ```
// In this order (`repr(C)`): the fields every event reads first, near the value's start. The
// compiler's own order cost 62 more instructions a traced pair on Cortex-M3 (917 against 855)
// once `missed` came.
#[repr(C)]
pub struct TracedHeap<
    H,
    const SLOTS: usize,
    const TRACEBACKS: usize,
    const FRAMES: usize,
    const NFRAME: usize,
> {
    heap: H,
    /// Read without the lock on every event, so an idle tracer costs one load.
    tracing: AtomicBool,
    state: Mutex<RefCell<State<TRACEBACKS>>>,
    storage: UnsafeCell<TracerArrays<SLOTS, TRACEBACKS, FRAMES>>,
    /// Events while `state` was borrowed; borrowed only for a push or a replay.
    missed: Mutex<RefCell<MissedQueue>>,
}

// SAFETY: `storage` is reached only once, in `start` under the critical section, to build the
// tracer (guarded by `tracer.is_none()`); from then on only through that tracer, which lives in
// the `Mutex` and is used only inside critical sections. The wrapped heap must be `Sync` itself.
unsafe impl<H: Sync, const S: usize, const T: usize, const F: usize, const N: usize> Sync
    for TracedHeap<H, S, T, F, N>
{
}

impl<H, const SLOTS: usize, const TRACEBACKS: usize, const FRAMES: usize, const NFRAME: usize>
    TracedHeap<H, SLOTS, TRACEBACKS, FRAMES, NFRAME>
{
    /// A traced heap over `heap`, not tracing yet. The capacities are checked at compile time.
    pub const fn new(heap: H) -> Self {
        const {
            assert!(SLOTS.is_power_of_two(), "SLOTS must be a power of two");
            assert!(
                TRACEBACKS.is_power_of_two(),
                "TRACEBACKS must be a power of two"
            );
            assert!(
                TRACEBACKS >= 2,
                "TRACEBACKS counts the overflow entry: at least 2"
            );
            assert!(TRACEBACKS <= 1 << 24, "traceback ids have 24 bits");
            assert!(NFRAME <= u16::MAX as usize, "NFRAME is at most 65535");
        }
        TracedHeap {
            heap,
            tracing: AtomicBool::new(false),
            state: Mutex::new(RefCell::new(State {
                tracer: None,
                call_stacks: CallStacks::ReturnAddress,
                totals: [SiteTotals::ZERO; TRACEBACKS],
                baseline: [SiteTotals::ZERO; TRACEBACKS],
            })),
            missed: Mutex::new(RefCell::new(MissedQueue::EMPTY)),
            storage: UnsafeCell::new(TracerArrays::new()),
        }
    }

    /// The wrapped heap (to initialise it, or to ask for its own usage).
    pub const fn heap(&self) -> &H {
        &self.heap
    }

    /// Most live blocks the trace table holds before blocks are counted as untraced.
    pub const fn trace_capacity(&self) -> usize {
        tracemalloc_core::table::load_limit(SLOTS)
    }

    /// Starts tracing (Python's `tracemalloc.start()`), capturing call stacks as `call_stacks`
    /// says. Starting again only changes how stacks are captured.
    pub fn start(&'static self, call_stacks: CallStacks) {
        critical_section::with(|cs| {
            let Ok(mut state) = self.state.borrow(cs).try_borrow_mut() else {
                return;
            };
            if state.tracer.is_none() {
                // SAFETY: the only place the storage is borrowed, and `tracer` is `None` only
                // before the first start (it is never reset), so this `&mut` is unique. The
                // heap is `'static`, so is its storage.
                let storage = unsafe { &mut *self.storage.get() };
                state.tracer = Some(Tracer::new(storage.storage()));
            }
            state.call_stacks = call_stacks;
            self.tracing.store(true, Ordering::Relaxed);
        });
    }

    /// Stops tracing and forgets every trace and the baseline (Python's `tracemalloc.stop()`).
    pub fn stop(&self) {
        self.with_state(|state| {
            self.tracing.store(false, Ordering::Relaxed);
            if let Some(tracer) = state.tracer.as_mut() {
                tracer.clear();
            }
            state.baseline.fill(SiteTotals::ZERO);
        });
    }

    /// Whether blocks are being traced (Python's `is_tracing()`).
    pub fn is_tracing(&self) -> bool {
        self.tracing.load(Ordering::Relaxed)
    }

    /// Traced bytes now and at their peak (Python's `get_traced_memory()`).
    pub fn traced_memory(&self) -> (u64, u64) {
        let c = self.counters();
        (c.current, c.peak)
    }

    /// The tracer's counters; zeros before the first start.
    pub fn counters(&self) -> Counters {
        self.with_tracer(|t| *t.counters()).unwrap_or_default()
    }

    /// Sets the peak to the current size (Python's `reset_peak()`).
    pub fn reset_peak(&self) {
        self.with_state(|state| {
            if let Some(tracer) = state.tracer.as_mut() {
                tracer.reset_peak();
            }
        });
    }

    /// Forgets every trace and the baseline but keeps tracing (Python's `clear_traces()`).
    pub fn clear_traces(&self) {
        self.with_state(|state| {
            if let Some(tracer) = state.tracer.as_mut() {
                tracer.clear();
            }
            state.baseline.fill(SiteTotals::ZERO);
        });
    }

    /// Bytes of RAM the tracer uses (Python's `get_tracemalloc_memory()`): its storage and the
    /// per-site totals, whether tracing or not.
    pub const fn tracemalloc_memory(&self) -> usize {
        core::mem::size_of::<TracerArrays<SLOTS, TRACEBACKS, FRAMES>>()
            + core::mem::size_of::<State<TRACEBACKS>>()
            + core::mem::size_of::<MissedQueue>()
    }

    /// Remembers each site's live size and count now; reports then show the change since.
    pub fn mark_baseline(&self) {
        self.with_state(|state| {
            if let Some(tracer) = state.tracer.as_ref() {
                report::tally(tracer, &mut state.baseline);
            }
        });
    }

    /// The counters and the `N` best sites by `order`, with their change since the baseline.
    ///
    /// Interrupts stay masked while the table is tallied: O(`SLOTS` + `TRACEBACKS` × `N`).
    pub fn report<const N: usize>(&self, order: Order) -> Report<N, NFRAME>
    where
        H: Heap,
    {
        let mut report = Report {
            order,
            counters: Counters::default(),
            heap_used: 0,
            tracer_memory: self.tracemalloc_memory(),
            site_count: 0,
            sites: heapless::Vec::new(),
        };
        self.with_state(|state| {
            // Under the same lock as the counters, so the two are consistent.
            report.heap_used = self.heap.used();
            let State {
                tracer,
                totals,
                baseline,
                ..
            } = state;
            if let Some(tracer) = tracer.as_ref() {
                report::tally(tracer, totals);
                let (sites, site_count) = report::top_sites(tracer, totals, baseline, order);
                report.counters = *tracer.counters();
                report.sites = sites;
                report.site_count = site_count;
            }
        });
        report
    }

    /// Runs `f` on the tracer inside the critical section (to encode a snapshot, say); `None`
    /// before the first start. Interrupts stay masked while `f` runs, so keep it short. Blocks
    /// that `f` allocates, reallocates or frees are recorded when it returns (the first 16
    /// such events, in order, a resize in place of a block from before taking two;
    /// allocations under an empty traceback, as no stack was taken):
    /// past that, allocations count as untraced, and a free cancels its block's queued
    /// allocation or takes the place of another one (only 16 frees in a row lose the next).
    /// Calls that need the tracer's state (`stop`, `counters`, `write_snapshot`, a report)
    /// made from `f` find it borrowed and do nothing.
    pub fn with_tracer<R>(&self, f: impl FnOnce(&Tracer<'static>) -> R) -> Option<R> {
        self.with_state(|state| state.tracer.as_ref().map(f))
            .flatten()
    }

    /// Streams a snapshot in the core's binary format into `sink` (Python's `take_snapshot()`
    /// then `dump()`), without allocating. Returns false, writing nothing, before the first
    /// start. The lock is held while `sink` runs: a slow sink (semihosting, a UART) delays
    /// interrupts for as long. With the `build-id` feature the snapshot names the firmware's
    /// build (module `build_id`).
    pub fn write_snapshot<S: Sink>(&self, sink: S) -> bool {
        let device = DeviceInfo {
            traceback_limit: NFRAME as u16,
            #[cfg(feature = "build-id")]
            build_id: crate::build_id::build_id(),
            #[cfg(not(feature = "build-id"))]
            build_id: &[],
            tracer_memory: self.tracemalloc_memory(),
        };
        self.with_tracer(|tracer| encode_tracer(tracer, &device, sink))
            .is_some()
    }

    fn with_state<R>(&self, f: impl FnOnce(&mut State<TRACEBACKS>) -> R) -> Option<R> {
        critical_section::with(|cs| {
            let result = f(&mut *self.state.borrow(cs).try_borrow_mut().ok()?);
            self.replay_missed(cs);
            Some(result)
        })
    }

    /// Notes an allocation, or a reallocation from `old`, that the tracer could not record: its
    /// state is borrowed by the code running inside it (a closure given to
    /// [`TracedHeap::with_tracer`], a snapshot's sink). Out of line: only such code takes it.
    #[cold]
    #[inline(never)]
    fn miss_alloc(&self, cs: CriticalSection<'_>, old: Option<usize>, addr: usize, size: usize) {
        if let Ok(mut missed) = self.missed.borrow(cs).try_borrow_mut() {
            missed.note_alloc(old, addr, size);
        }
    }

    /// [`TracedHeap::miss_alloc`] for a free.
    #[cold]
    #[inline(never)]
    fn miss_free(&self, cs: CriticalSection<'_>, addr: usize) {
        if let Ok(mut missed) = self.missed.borrow(cs).try_borrow_mut() {
            missed.free(addr);
        }
    }

    /// Records the events [`TracedHeap::miss_alloc`] and [`TracedHeap::miss_free`] noted, in order, now that the state is free:
    /// the blocks allocated meanwhile under an empty traceback (no stack was captured). One
    /// copy for every caller of the generic [`TracedHeap::with_state`].
    #[inline(never)]
    fn replay_missed(&self, cs: CriticalSection<'_>) {
        let Ok(mut missed) = self.missed.borrow(cs).try_borrow_mut() else {
            return;
        };
        if missed.events.is_empty() && missed.overflow_blocks == 0 {
            return;
        }
        let queue = core::mem::replace(&mut *missed, MissedQueue::EMPTY);
        let Ok(mut state) = self.state.borrow(cs).try_borrow_mut() else {
            *missed = queue; // still borrowed further out: the outer borrow replays them
            return;
        };
        let Some(tracer) = state.tracer.as_mut() else {
            return;
        };
        if !self.tracing.load(Ordering::Relaxed) {
            return; // stopped meanwhile: its traces are gone, and so are these
        }
        for event in queue.events {
            match event {
                Missed::Alloc { addr, size } => {
                    tracer.record_alloc(DEFAULT_DOMAIN, addr, size, &[], 0);
                }
                Missed::Free { addr } => forget(tracer, addr),
                Missed::Cancelled => {}
            }
        }
        tracer.record_untraced(queue.overflow_blocks, queue.overflow_bytes);
    }

    /// Records a new block; `fp` and `lr` are the allocator entry's frame pointer and link
    /// register.
    #[inline(always)]
    fn record_alloc(
        &self,
        cs: CriticalSection<'_>,
        fp: usize,
        lr: usize,
        old: Option<usize>,
        addr: usize,
        size: usize,
    ) {
        // Borrowed: the block comes from code running inside the tracer (a closure given to
        // `with_tracer`, a snapshot's sink), and is recorded when that code returns.
        let Ok(mut state) = self.state.borrow(cs).try_borrow_mut() else {
            return self.miss_alloc(cs, old, addr, size);
        };
        let State {
            tracer: Some(tracer),
            call_stacks,
            ..
        } = &mut *state
        else {
            return;
        };
        // Stopped (by an interrupt handler) after this event read the flag: nothing to record.
        if !self.tracing.load(Ordering::Relaxed) {
            return;
        }
        let mut frames = [0usize; NFRAME];
        let (kept, total) = stack::capture(call_stacks, fp, lr, &mut frames);
        let frames = frames.get(..kept).unwrap_or(&[]);
        match old {
            Some(old) => tracer.record_realloc(DEFAULT_DOMAIN, old, addr, size, frames, total),
            None => tracer.record_alloc(DEFAULT_DOMAIN, addr, size, frames, total),
        };
    }

    #[inline(always)]
    fn record_free(&self, cs: CriticalSection<'_>, addr: usize) {
        let Ok(mut state) = self.state.borrow(cs).try_borrow_mut() else {
            return self.miss_free(cs, addr); // as in `record_alloc`
        };
        // Checked again under the lock, as in `record_alloc` (a stop cleared every trace).
        if !self.tracing.load(Ordering::Relaxed) {
            return;
        }
        if let Some(tracer) = state.tracer.as_mut() {
            forget(tracer, addr);
        }
    }
}

/// Forgets the block at `addr`: one copy of the core's free path for the allocator's frees and
/// the replayed ones.
#[inline(never)]
fn forget(tracer: &mut Tracer<'static>, addr: usize) {
    tracer.record_free(DEFAULT_DOMAIN, addr);
}

// SAFETY: every method forwards to the wrapped heap with the caller's arguments and returns
// its result unchanged; tracing only records addresses and sizes, it never touches the blocks.
unsafe impl<H, const SLOTS: usize, const TRACEBACKS: usize, const FRAMES: usize, const NFRAME: usize>
    GlobalAlloc for TracedHeap<H, SLOTS, TRACEBACKS, FRAMES, NFRAME>
where
    H: Heap,
{
    // Never inlined: the frame walk starts at this function's own frame record, whose return
    // address is the allocation's call site, wherever the allocator shims were inlined.
    #[inline(never)]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let lr = stack::link_register();
        let fp = stack::frame_pointer();
        if !self.tracing.load(Ordering::Relaxed) {
            // SAFETY: the caller's contract for `alloc` is passed on unchanged.
            return unsafe { self.heap.alloc(layout) };
        }
        critical_section::with(|cs| {
            // SAFETY: as above.
            let ptr = unsafe { self.heap.alloc(layout) };
            if !ptr.is_null() {
                self.record_alloc(cs, fp, lr, None, ptr as usize, layout.size());
            }
            ptr
        })
    }

    #[inline(never)]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let lr = stack::link_register();
        let fp = stack::frame_pointer();
        if !self.tracing.load(Ordering::Relaxed) {
            // SAFETY: the caller's contract for `alloc_zeroed` is passed on unchanged.
            return unsafe { self.heap.alloc_zeroed(layout) };
        }
        critical_section::with(|cs| {
            // SAFETY: as above.
            let ptr = unsafe { self.heap.alloc_zeroed(layout) };
            if !ptr.is_null() {
                self.record_alloc(cs, fp, lr, None, ptr as usize, layout.size());
            }
            ptr
        })
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if !self.tracing.load(Ordering::Relaxed) {
            // SAFETY: the caller's contract for `dealloc` is passed on unchanged.
            return unsafe { self.heap.dealloc(ptr, layout) };
        }
        critical_section::with(|cs| {
            self.record_free(cs, ptr as usize);
            // SAFETY: as above; the trace is gone before the heap can hand the block out again.
            unsafe { self.heap.dealloc(ptr, layout) }
        })
    }

    #[inline(never)]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let lr = stack::link_register();
        let fp = stack::frame_pointer();
        if !self.tracing.load(Ordering::Relaxed) {
            // SAFETY: the caller's contract for `realloc` is passed on unchanged.
            return unsafe { self.heap.realloc(ptr, layout, new_size) };
        }
        critical_section::with(|cs| {
            // SAFETY: as above.
            let new = unsafe { self.heap.realloc(ptr, layout, new_size) };
            if !new.is_null() {
                self.record_alloc(cs, fp, lr, Some(ptr as usize), new as usize, new_size);
            }
            new
        })
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::alloc::System;
    use std::boxed::Box;
    use std::sync::atomic::AtomicUsize;

    /// `System`, counting bytes as a heap's `used()` would.
    struct Counted(AtomicUsize);

    // SAFETY: forwards to `System` unchanged.
    unsafe impl GlobalAlloc for Counted {
        unsafe fn alloc(&self, l: Layout) -> *mut u8 {
            self.0.fetch_add(l.size(), Ordering::Relaxed);
            // SAFETY: the caller's contract is passed on.
            unsafe { System.alloc(l) }
        }
        unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
            self.0.fetch_sub(l.size(), Ordering::Relaxed);
            // SAFETY: the caller's contract is passed on.
            unsafe { System.dealloc(p, l) }
        }
    }

    impl Heap for Counted {
        fn used(&self) -> usize {
            self.0.load(Ordering::Relaxed)
        }
        fn free(&self) -> usize {
            usize::MAX
        }
    }

    type Small = TracedHeap<Counted, 8, 4, 16, 2>;

    #[test]
    fn the_trace_capacity_is_the_tables_own_limit() {
        type Tiny = TracedHeap<Counted, 2, 2, 4, 1>;
        let h: &'static Tiny = heap_of();
        h.start(CallStacks::ReturnAddress);
        assert_eq!(h.trace_capacity(), 1);
        // SAFETY: nonzero layouts; both blocks freed with theirs.
        unsafe {
            let (a, b) = (h.alloc(layout(8)), h.alloc(layout(8)));
            assert_eq!(h.counters().traces, 1, "one slot of two holds a trace");
            h.dealloc(a, layout(8));
            h.dealloc(b, layout(8));
        }
    }

    fn heap() -> &'static Small {
        heap_of()
    }

    /// A traced heap of any capacities over a fresh `Counted`, leaked: `start` needs `'static`.
    fn heap_of<const S: usize, const T: usize, const F: usize, const N: usize>(
    ) -> &'static TracedHeap<Counted, S, T, F, N> {
        Box::leak(Box::new(TracedHeap::new(Counted(AtomicUsize::new(0)))))
    }

    fn layout(size: usize) -> Layout {
        Layout::from_size_align(size, 8).unwrap()
    }

    #[test]
    fn nothing_is_traced_before_start_or_after_stop() {
        let h = heap();
        // SAFETY: nonzero layouts; every block is freed with its layout.
        unsafe {
            let a = h.alloc(layout(16));
            assert_eq!(h.counters(), Counters::default());
            h.start(CallStacks::ReturnAddress);
            let b = h.alloc(layout(32));
            h.dealloc(a, layout(16)); // untraced block: not an error
            assert_eq!(h.traced_memory(), (32, 32));
            h.stop();
            assert!(!h.is_tracing());
            assert_eq!(h.counters(), Counters::default());
            h.dealloc(b, layout(32));
        }
    }

    #[test]
    fn full_table_counts_blocks_as_untraced_and_traced_stays_within_used() {
        let h = heap();
        h.start(CallStacks::ReturnAddress);
        assert_eq!(h.trace_capacity(), 6);
        let blocks: std::vec::Vec<_> = (0..8)
            // SAFETY: nonzero layout.
            .map(|_| unsafe { h.alloc(layout(10)) })
            .collect();
        let c = h.counters();
        assert_eq!((c.traces, c.current), (6, 60));
        assert_eq!((c.untraced_blocks, c.untraced_bytes), (2, 20));
        assert!(c.current <= h.heap().used() as u64);
        for b in blocks {
            // SAFETY: allocated above with this layout.
            unsafe { h.dealloc(b, layout(10)) };
        }
        assert_eq!(h.traced_memory(), (0, 60));
        h.reset_peak();
        assert_eq!(h.traced_memory(), (0, 0));
    }

    #[test]
    fn blocks_allocated_and_freed_inside_the_tracer_are_recorded_when_it_returns() {
        let h = heap();
        h.start(CallStacks::ReturnAddress);
        // SAFETY: nonzero layouts; every block is freed with its layout.
        unsafe {
            let a = h.alloc(layout(16));
            let b = h.alloc(layout(24));
            // A sink that frees, grows and allocates heap buffers while the snapshot is written.
            let (c, b) = h
                .with_tracer(|_| {
                    h.dealloc(a, layout(16));
                    (h.alloc(layout(8)), h.realloc(b, layout(24), 40))
                })
                .unwrap();
            let counters = h.counters();
            assert_eq!((counters.traces, counters.current), (2, 48));
            assert_eq!(counters.untraced_blocks, 0);
            assert_eq!(counters.current, h.heap().used() as u64);
            h.dealloc(c, layout(8));
            h.dealloc(b, layout(40));
        }
        assert_eq!(h.counters().traces, 0);
    }

    #[test]
    fn events_past_the_queue_inside_the_tracer_count_as_untraced() {
        type Roomy = TracedHeap<Counted, 64, 4, 16, 2>;
        let h: &'static Roomy = heap_of();
        h.start(CallStacks::ReturnAddress);
        // SAFETY: nonzero layout.
        let allocate = || unsafe { h.alloc(layout(10)) };
        let blocks = h
            .with_tracer(|_| (0..20).map(|_| allocate()).collect::<std::vec::Vec<_>>())
            .unwrap();
        let c = h.counters();
        assert_eq!(
            (c.traces, c.current),
            (MISSED_EVENTS as u64, 10 * MISSED_EVENTS as u64)
        );
        assert_eq!((c.untraced_blocks, c.untraced_bytes), (4, 40));
        for b in blocks {
            // SAFETY: allocated above with this layout.
            unsafe { h.dealloc(b, layout(10)) };
        }
        assert_eq!(h.counters().traces, 0);
    }

    #[test]
    fn frees_past_the_queue_inside_the_tracer_leave_no_trace_of_a_freed_block() {
        type Roomy = TracedHeap<Counted, 64, 4, 16, 2>;
        let h: &'static Roomy = heap_of();
        h.start(CallStacks::ReturnAddress);
        // SAFETY: nonzero layouts; every block is freed with its layout.
        unsafe {
            let before = h.alloc(layout(24));
            h.with_tracer(|_| {
                // Scratch buffers of a sink: each allocation queued, its free past the room.
                let scratch: std::vec::Vec<_> =
                    (0..MISSED_EVENTS).map(|_| h.alloc(layout(10))).collect();
                for block in scratch {
                    h.dealloc(block, layout(10));
                }
                // Then 16 allocations fill the queue, and a block traced before is freed.
                let kept: std::vec::Vec<_> =
                    (0..MISSED_EVENTS).map(|_| h.alloc(layout(8))).collect();
                h.dealloc(before, layout(24));
                for block in kept {
                    h.dealloc(block, layout(8));
                }
            })
            .unwrap();
        }
        let c = h.counters();
        assert_eq!(h.heap().used(), 0, "every block was freed");
        assert_eq!((c.traces, c.current), (0, 0), "{c:?}");
    }

    #[test]
    fn a_block_resized_in_place_past_the_queue_keeps_no_stale_trace() {
        let h = in_place_heap();
        // SAFETY: nonzero layouts; every block is freed with its final layout.
        unsafe {
            let a = h.alloc(layout(10));
            let (b, fillers) = h
                .with_tracer(|_| {
                    let fillers: std::vec::Vec<_> =
                        (0..MISSED_EVENTS).map(|_| h.alloc(layout(8))).collect();
                    (h.realloc(a, layout(10), 100), fillers)
                })
                .unwrap();
            assert_eq!(a, b, "resized in place");
            let c = h.counters();
            // The old trace (10 bytes) is gone; the resized block or a queued one is untraced.
            assert!(
                c.current + c.untraced_bytes >= h.heap().used() as u64,
                "{c:?}"
            );
            assert!(c.current <= h.heap().used() as u64, "{c:?}");
            let resized = h.with_tracer(|t| t.trace(DEFAULT_DOMAIN, a as usize).map(|(s, _)| s));
            assert_ne!(resized.flatten(), Some(10), "{c:?}");
            for f in fillers {
                h.dealloc(f, layout(8));
            }
            h.dealloc(b, layout(100));
        }
        assert_eq!(h.counters().traces, 0);
    }

    #[test]
    fn a_block_resized_in_place_then_freed_past_the_queue_keeps_no_trace() {
        let h = in_place_heap();
        // SAFETY: nonzero layouts; every block is freed with its final layout.
        unsafe {
            let a = h.alloc(layout(10));
            let fillers = h
                .with_tracer(|_| {
                    let b = h.realloc(a, layout(10), 100);
                    assert_eq!(a, b, "resized in place");
                    // The queue fills, then the resized block is freed past its room.
                    let fillers: std::vec::Vec<_> =
                        (0..MISSED_EVENTS).map(|_| h.alloc(layout(8))).collect();
                    h.dealloc(b, layout(100));
                    fillers
                })
                .unwrap();
            let traced = h.with_tracer(|t| t.trace(DEFAULT_DOMAIN, a as usize).map(|(s, _)| s));
            assert_eq!(traced.flatten(), None, "the freed block keeps no trace");
            for f in fillers {
                h.dealloc(f, layout(8));
            }
        }
        let c = h.counters();
        assert_eq!((c.traces, c.current), (0, 0), "{c:?}");
    }

    #[test]
    fn a_block_resized_in_place_then_pushed_out_of_the_queue_keeps_no_stale_trace() {
        let h = in_place_heap();
        // SAFETY: nonzero layouts; every block is freed with its final layout.
        unsafe {
            let a = h.alloc(layout(10));
            let traced: std::vec::Vec<_> =
                (0..MISSED_EVENTS - 1).map(|_| h.alloc(layout(8))).collect();
            let c = h
                .with_tracer(|_| {
                    let c = h.alloc(layout(8));
                    let b = h.realloc(a, layout(10), 100);
                    assert_eq!(a, b, "resized in place");
                    // Frees of blocks traced before, the last ones past the room: they take
                    // the places of the queued allocations, the resized block's first.
                    for &block in &traced {
                        h.dealloc(block, layout(8));
                    }
                    c
                })
                .unwrap();
            let resized = h.with_tracer(|t| t.trace(DEFAULT_DOMAIN, a as usize).map(|(s, _)| s));
            assert_eq!(resized.flatten(), None, "no trace at the old size");
            let counters = h.counters();
            assert_eq!((counters.traces, counters.current), (0, 0), "{counters:?}");
            assert_eq!(
                (counters.untraced_blocks, counters.untraced_bytes),
                (2, 108)
            );
            h.dealloc(c, layout(8));
            h.dealloc(a, layout(100));
        }
    }

    /// `System` with room for 256 bytes under every block, so that a reallocation up to that
    /// stays in place, as embedded heaps' often do.
    struct InPlace(AtomicUsize);

    /// A traced heap over a fresh `InPlace`, room for 4 tracebacks, leaked and started.
    fn in_place_heap() -> &'static TracedHeap<InPlace, 64, 4, 16, 2> {
        let h = Box::leak(Box::new(TracedHeap::new(InPlace(AtomicUsize::new(0)))));
        h.start(CallStacks::ReturnAddress);
        h
    }

    const IN_PLACE_ROOM: usize = 256;

    // SAFETY: every block is a `System` block of `IN_PLACE_ROOM` bytes, freed with that layout;
    // a reallocation within it returns the same block, beyond it fails (null, the block kept).
    unsafe impl GlobalAlloc for InPlace {
        unsafe fn alloc(&self, l: Layout) -> *mut u8 {
            self.0.fetch_add(l.size(), Ordering::Relaxed);
            // SAFETY: a nonzero size.
            unsafe { System.alloc(Layout::from_size_align(IN_PLACE_ROOM, l.align()).unwrap()) }
        }
        unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
            self.0.fetch_sub(l.size(), Ordering::Relaxed);
            // SAFETY: allocated above with this layout.
            unsafe {
                System.dealloc(
                    p,
                    Layout::from_size_align(IN_PLACE_ROOM, l.align()).unwrap(),
                )
            }
        }
        unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
            if new > IN_PLACE_ROOM {
                return core::ptr::null_mut();
            }
            self.0.fetch_sub(l.size(), Ordering::Relaxed);
            self.0.fetch_add(new, Ordering::Relaxed);
            p
        }
    }

    impl Heap for InPlace {
        fn used(&self) -> usize {
            self.0.load(Ordering::Relaxed)
        }
        fn free(&self) -> usize {
            usize::MAX
        }
    }

    /// `System`, stopping [`STOPPED_BY_ALLOC`]'s tracing when asked, from inside its own
    /// critical section as an interrupt handler would between the flag's check and the lock.
    struct StopsTracing;
    static STOP_ON_NEXT_ALLOC: AtomicBool = AtomicBool::new(false);
    static STOPPED_BY_ALLOC: TracedHeap<StopsTracing, 8, 4, 16, 2> = TracedHeap::new(StopsTracing);

    // SAFETY: forwards to `System` unchanged; stopping the tracer allocates nothing.
    unsafe impl GlobalAlloc for StopsTracing {
        unsafe fn alloc(&self, l: Layout) -> *mut u8 {
            if STOP_ON_NEXT_ALLOC.swap(false, Ordering::Relaxed) {
                STOPPED_BY_ALLOC.stop();
            }
            // SAFETY: the caller's contract is passed on.
            unsafe { System.alloc(l) }
        }
        unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
            // SAFETY: the caller's contract is passed on.
            unsafe { System.dealloc(p, l) }
        }
    }

    impl Heap for StopsTracing {
        fn used(&self) -> usize {
            0
        }
        fn free(&self) -> usize {
            usize::MAX
        }
    }

    #[test]
    fn a_block_allocated_as_tracing_stops_leaves_no_trace() {
        let h = &STOPPED_BY_ALLOC;
        h.start(CallStacks::ReturnAddress);
        STOP_ON_NEXT_ALLOC.store(true, Ordering::Relaxed);
        // SAFETY: nonzero layout; freed with it.
        unsafe {
            let a = h.alloc(layout(16));
            assert!(!h.is_tracing());
            h.dealloc(a, layout(16)); // not traced now: the tracer is not asked
        }
        h.start(CallStacks::ReturnAddress);
        let c = h.counters();
        assert_eq!((c.traces, c.current), (0, 0), "no phantom trace");
        h.stop();
    }

    #[test]
    fn realloc_moves_the_trace_to_the_new_size() {
        let h = heap();
        h.start(CallStacks::ReturnAddress);
        // SAFETY: nonzero layouts; the block is freed with its final layout.
        unsafe {
            let a = h.alloc_zeroed(layout(8));
            let b = h.realloc(a, layout(8), 100);
            assert_eq!(h.traced_memory(), (100, 100));
            h.dealloc(b, layout(100));
        }
        assert_eq!(h.counters().traces, 0);
    }

    #[test]
    fn baseline_diffs_and_snapshots_come_from_the_same_tracer() {
        let h = heap();
        h.start(CallStacks::ReturnAddress);
        // SAFETY: nonzero layouts; blocks freed with their layouts.
        unsafe {
            let a = h.alloc(layout(8));
            h.mark_baseline();
            let b = h.alloc(layout(24));
            let r = h.report::<2>(Order::Growth);
            // Off Cortex-M stacks are empty, so every block shares one site.
            assert_eq!(r.sites.len(), 1);
            assert_eq!((r.sites[0].size, r.sites[0].size_diff), (32, 24));
            assert_eq!(r.heap_used, 32);
            let mut buf = [0u8; 256];
            let mut sink = tracemalloc_core::codec::SliceSink::new(&mut buf);
            assert!(h.write_snapshot(&mut sink));
            assert!(sink.written().unwrap().starts_with(b"TMSNAP"));
            h.dealloc(a, layout(8));
            h.dealloc(b, layout(24));
        }
    }
}
