//! Example firmware for QEMU's lm3s6965evb (Cortex-M3): a sensor node's main loop with a real
//! leak, traced with tracemalloc-embedded.
//!
//! Each round samples a sensor into a buffer, formats a status line, renders a frame into a
//! scratch buffer (all dropped at the end of the round), and sends the reading through the radio
//! [`Outbox`], which keeps every message until it is acknowledged. The bug: acknowledged
//! messages are marked but never dropped, so the outbox grows by one message a round. A SysTick
//! interrupt allocates and frees a small buffer meanwhile.
//!
//! The firmware marks a baseline after a warm-up, runs, prints the top sites by size and by
//! growth through defmt, writes a snapshot file on the host through semihosting, checks that
//! the traced bytes equal what it requested and stay within the heap's own `used()`, and exits
//! through semihosting with success or failure.
#![no_std]
#![no_main]
// The bench build runs its loop and exits before the device loop.
#![cfg_attr(feature = "bench", allow(unreachable_code))]

extern crate alloc;

use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write as _;
use core::mem::{size_of, MaybeUninit};
use core::sync::atomic::{AtomicU32, Ordering};

use cortex_m as _;
use cortex_m_rt::{entry, exception};
use cortex_m_semihosting::debug::{self, EXIT_FAILURE, EXIT_SUCCESS};
use defmt_semihosting as _;
use embedded_alloc::LlffHeap;

const HEAP_SIZE: usize = 16 * 1024;
const WARMUP_ROUNDS: u32 = 5;
const ROUNDS: u32 = 40;
const PAYLOAD: usize = 64;
const SAMPLES: usize = 16;

/// 256 trace slots (192 live blocks), 64 call stacks, a pool of 512 frames, 8 frames each.
#[cfg(feature = "tracing")]
type TracedHeap = tracemalloc_embedded::TracedHeap<LlffHeap, 256, 64, 512, 8>;

#[cfg(feature = "tracing")]
#[global_allocator]
static HEAP: TracedHeap = TracedHeap::new(LlffHeap::empty());

#[cfg(not(feature = "tracing"))]
#[global_allocator]
static HEAP: LlffHeap = LlffHeap::empty();

fn llff() -> &'static LlffHeap {
    #[cfg(feature = "tracing")]
    return HEAP.heap();
    #[cfg(not(feature = "tracing"))]
    return &HEAP;
}

static mut HEAP_MEMORY: [MaybeUninit<u8>; HEAP_SIZE] = [MaybeUninit::uninit(); HEAP_SIZE];

extern "C" {
    /// Start of the stack region's free RAM (cortex-m-rt: end of .bss/.uninit).
    static __sheap: u32;
    /// Initial stack pointer: the top of RAM.
    static _stack_start: u32;
}

/// A reading waiting for the gateway's acknowledgement.
struct Message {
    id: u32,
    payload: Vec<u8>,
    acked: bool,
}

/// The radio link's outbox.
struct Outbox {
    in_flight: Vec<Message>,
    next_id: u32,
}

impl Outbox {
    const fn new() -> Outbox {
        Outbox {
            in_flight: Vec::new(),
            next_id: 0,
        }
    }

    /// Queues a reading for transmission and returns its message id.
    fn send(&mut self, reading: &[u16]) -> u32 {
        let id = self.next_id;
        self.next_id += 1;
        let mut payload = Vec::with_capacity(PAYLOAD); // the leak: kept after its ack
        payload.extend_from_slice(&id.to_le_bytes());
        for r in reading.iter().take((PAYLOAD - 4) / 2) {
            payload.extend_from_slice(&r.to_le_bytes());
        }
        self.in_flight.push(Message {
            id,
            payload,
            acked: false,
        });
        id
    }

    /// The gateway acknowledged message `id`.
    fn acknowledge(&mut self, id: u32) {
        if let Some(m) = self.in_flight.iter_mut().find(|m| m.id == id) {
            m.acked = true;
        }
        // BUG: acknowledged messages are never removed; the fix is
        // `self.in_flight.retain(|m| !m.acked)`.
    }

    /// Heap bytes the outbox requested and still holds.
    fn heap_bytes(&self) -> usize {
        self.in_flight.capacity() * size_of::<Message>()
            + self
                .in_flight
                .iter()
                .map(|m| m.payload.capacity())
                .sum::<usize>()
    }

    fn unacknowledged(&self) -> usize {
        self.in_flight.iter().filter(|m| !m.acked).count()
    }
}

/// Reads the (simulated) sensor.
fn sample(round: u32) -> Vec<u16> {
    (0..SAMPLES as u32)
        .map(|i| (round * 31 + i * 7) as u16 % 1024)
        .collect()
}

/// One round of the device loop; every buffer but the outbox's is dropped at its end.
fn round(outbox: &mut Outbox, n: u32) {
    let reading = sample(n);
    let mut status = String::with_capacity(48);
    let _ = write!(
        status,
        "round {} avg {}",
        n,
        reading.iter().map(|&r| u32::from(r)).sum::<u32>() / SAMPLES as u32
    );
    let mut frame = Box::new([0u8; 256]);
    for (i, b) in status.bytes().enumerate() {
        frame[i] = b;
    }
    core::hint::black_box(&frame);
    // The "radio" interrupt, pended by hand so that every run takes the same path.
    cortex_m::peripheral::SCB::set_pendst();
    let id = outbox.send(&reading);
    outbox.acknowledge(id);
}

/// Long-lived configuration, allocated once at boot.
struct Config {
    name: String,
    thresholds: Vec<u16>,
}

impl Config {
    fn load() -> Box<Config> {
        let mut name = String::with_capacity(16);
        name.push_str("node-7");
        let mut thresholds = Vec::with_capacity(8);
        thresholds.extend_from_slice(&[100, 200, 400, 800]);
        Box::new(Config { name, thresholds })
    }

    fn heap_bytes(&self) -> usize {
        size_of::<Config>() + self.name.capacity() + self.thresholds.capacity() * 2
    }
}

/// SysTick runs, and allocates.
static IRQ_ALLOCATIONS: AtomicU32 = AtomicU32::new(0);

/// A static with an initial value, so in `.data`, copied from flash at reset: it holds the value
/// only while the linker scripts (cortex-m-rt's, and tracemalloc-embedded's build id script,
/// which adds a section to flash before `.data`'s copy) agree on where that copy is.
static DATA_COPIED: AtomicU32 = AtomicU32::new(0x5eed_1234);

#[exception]
fn SysTick() {
    // Interrupt handlers may allocate: the traced heap locks with critical sections.
    let scratch = Box::new([0u32; 4]);
    core::hint::black_box(&scratch);
    // Load and store only: the handler is the only writer.
    IRQ_ALLOCATIONS.store(
        IRQ_ALLOCATIONS.load(Ordering::Relaxed) + 1,
        Ordering::Relaxed,
    );
}

#[entry]
fn main() -> ! {
    // Swapped, not loaded: a static never written could be folded into a constant.
    if DATA_COPIED.swap(0, Ordering::Relaxed) != 0x5eed_1234 {
        defmt::error!("check: FAILED: .data was not copied from flash (a linker script moved it)");
        exit(EXIT_FAILURE);
    }
    // SAFETY: called once, before the first allocation; the memory is used by the heap only.
    unsafe { llff().init(core::ptr::addr_of_mut!(HEAP_MEMORY) as usize, HEAP_SIZE) };

    #[cfg(feature = "bench")]
    bench::run();

    #[cfg(feature = "tracing")]
    {
        use tracemalloc_embedded::{CallStacks, StackBounds};
        // Linker symbols: only their addresses are taken.
        let bounds = StackBounds::new(
            core::ptr::addr_of!(__sheap) as usize,
            core::ptr::addr_of!(_stack_start) as usize,
        );
        HEAP.start(CallStacks::FramePointers(bounds));
    }

    let config = Config::load();
    let mut outbox = Outbox::new();

    for n in 0..WARMUP_ROUNDS {
        round(&mut outbox, n);
    }
    #[cfg(feature = "tracing")]
    {
        HEAP.mark_baseline();
        HEAP.reset_peak();
        dump(c"baseline.tmsnap");
    }
    for n in WARMUP_ROUNDS..WARMUP_ROUNDS + ROUNDS {
        round(&mut outbox, n);
    }
    defmt::info!(
        "device: {=u32} rounds, {=usize} messages held, {=usize} unacknowledged, {=u32} interrupt allocations",
        WARMUP_ROUNDS + ROUNDS,
        outbox.in_flight.len(),
        outbox.unacknowledged(),
        IRQ_ALLOCATIONS.load(Ordering::Relaxed)
    );

    let requested = config.heap_bytes() + outbox.heap_bytes();
    #[cfg(feature = "tracing")]
    let ok = report(requested);
    #[cfg(not(feature = "tracing"))]
    let ok = {
        defmt::info!(
            "untraced build: requested={=usize} B heap used={=usize} B",
            requested,
            llff().used()
        );
        true
    };
    core::hint::black_box(&config);
    exit(if ok { EXIT_SUCCESS } else { EXIT_FAILURE })
}

/// Ends the run with `status` through semihosting: QEMU exits. A debugger that serves the call
/// may resume past it, and the core then sleeps (with none attached, the call itself faults).
fn exit(status: debug::ExitStatus) -> ! {
    debug::exit(status);
    loop {
        cortex_m::asm::wfi();
    }
}

/// Prints the reports, dumps the snapshot and checks the counters; true when all is well.
#[cfg(feature = "tracing")]
fn report(requested: usize) -> bool {
    use tracemalloc_embedded::Order;

    HEAP.report::<5>(Order::Size).log();
    let growth = HEAP.report::<5>(Order::Growth);
    growth.log();

    let dumped = dump(c"snapshot.tmsnap");

    let c = growth.counters;
    defmt::info!(
        "check: traced={=u64} B requested={=usize} B heap used={=usize} B untraced={=u64} blocks",
        c.current,
        requested,
        growth.heap_used,
        c.untraced_blocks
    );
    let ok = dumped
        && c.current == requested as u64
        && c.current <= growth.heap_used as u64
        && c.untraced_blocks == 0;
    if ok {
        defmt::info!("check: passed");
        defmt::info!(
            "figures: {=usize} B per trace slot, {=usize} trace slots, tracer memory {=usize} B",
            size_of::<tracemalloc_embedded::Slot>(),
            HEAP.trace_capacity() / 3 * 4,
            HEAP.tracemalloc_memory()
        );
    } else {
        defmt::error!("check: FAILED");
    }
    ok
}

/// Writes a snapshot file on the host; true when it was written whole.
#[cfg(feature = "tracing")]
fn dump(path: &core::ffi::CStr) -> bool {
    use tracemalloc_embedded::semihosting::HostFile;
    let result = HostFile::create(path).and_then(|mut file| {
        let written = HEAP.write_snapshot(&mut file);
        file.finish().map(|()| written)
    });
    match result {
        Ok(true) => {
            defmt::info!("snapshot: written to {=str}", path.to_str().unwrap_or("?"));
            true
        }
        Ok(false) => {
            defmt::error!("snapshot: not written, tracing never started (or the tracer is busy)");
            false
        }
        Err(e) => {
            defmt::error!("snapshot: {}", e);
            false
        }
    }
}

/// Instruction counting: alloc+free pairs between calls of `bench_mark`, whose address the
/// script `ci/count-instructions.sh` finds in the ELF and looks for in QEMU's execution log.
#[cfg(feature = "bench")]
mod bench {
    use alloc::boxed::Box;

    pub(crate) const PAIRS: u32 = 100;

    #[inline(never)]
    #[no_mangle]
    pub extern "C" fn bench_mark(tag: u32) {
        core::hint::black_box(tag);
    }

    #[inline(never)]
    fn pairs() {
        for _ in 0..PAIRS {
            drop(core::hint::black_box(Box::new([0u8; 32])));
        }
    }

    pub(crate) fn run() -> ! {
        // An empty loop of the same shape, to subtract its own instructions.
        bench_mark(1);
        for _ in 0..PAIRS {
            core::hint::black_box(0u32);
        }
        bench_mark(2);
        #[cfg(feature = "tracing")]
        {
            use tracemalloc_embedded::{CallStacks, StackBounds};
            // Linker symbols: only their addresses are taken.
            let bounds = StackBounds::new(
                core::ptr::addr_of!(super::__sheap) as usize,
                core::ptr::addr_of!(super::_stack_start) as usize,
            );
            super::HEAP.start(CallStacks::FramePointers(bounds));
        }
        pairs(); // warm: intern the call stack first
        bench_mark(3);
        pairs();
        bench_mark(4);
        #[cfg(feature = "tracing")]
        super::HEAP.stop();
        bench_mark(5);
        pairs();
        bench_mark(6);
        defmt::info!("bench: {=u32} pairs between each mark", PAIRS);
        super::exit(cortex_m_semihosting::debug::EXIT_SUCCESS)
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    defmt::error!("panic: {}", defmt::Display2Format(info));
    exit(EXIT_FAILURE)
}
