//! Property tests of the snapshot files: round trips keep statistics, a device stream decodes
//! to what a host-side snapshot of the same tracer shows, and damaged files are refused
//! without panicking.
#![cfg(feature = "alloc")]

use proptest::prelude::*;
use tracemalloc_core::codec::binary::{OLDEST_VERSION, VERSION};
use tracemalloc_core::codec::{encode_tracer, DecodeError, DeviceInfo, SliceSink};
use tracemalloc_core::snapshot::{snapshot_from_traces, AddressesOnly};
use tracemalloc_core::{
    Frame, KeyType, OverMemoryLimit, RawSnapshot, Resolver, Slot, Snapshot, Traceback,
    TracebackEntry, TracebackStorage, Tracer, TracerStorage,
};

/// Counts this thread's heap: the property tests run on several threads at once, and each
/// measures only its own decoding.
mod heap {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    pub struct Counting;

    thread_local! {
        // (live bytes, peak live bytes), signed: a thread may free blocks another allocated.
        // Const-initialised, no destructor: reading them inside the allocator neither
        // allocates nor recurses.
        static BYTES: Cell<(isize, isize)> = const { Cell::new((0, 0)) };
    }

    fn add(bytes: usize) {
        let _ = BYTES.try_with(|b| {
            let (live, peak) = b.get();
            let live = live + bytes as isize;
            b.set((live, peak.max(live)));
        });
    }

    fn sub(bytes: usize) {
        let _ = BYTES.try_with(|b| {
            let (live, peak) = b.get();
            b.set((live - bytes as isize, peak));
        });
    }

    // SAFETY: every call is forwarded to `System` unchanged; the counting touches only
    // thread-local cells.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            add(layout.size());
            // SAFETY: the caller's contract, forwarded.
            unsafe { System.alloc(layout) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            sub(layout.size());
            // SAFETY: the caller's contract, forwarded.
            unsafe { System.dealloc(ptr, layout) }
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            add(new_size);
            sub(layout.size());
            // SAFETY: the caller's contract, forwarded.
            unsafe { System.realloc(ptr, layout, new_size) }
        }
    }

    /// The most this thread's heap grew above its level at the start while `f` ran.
    pub fn peak_growth<R>(f: impl FnOnce() -> R) -> (R, usize) {
        let start = BYTES.with(|b| {
            let (live, _) = b.get();
            b.set((live, live));
            live
        });
        let r = f();
        (r, (BYTES.with(|b| b.get().1) - start) as usize)
    }
}

#[global_allocator]
static HEAP: heap::Counting = heap::Counting;

const FILES: [&str; 4] = ["src/main.rs", "src/cache.rs", "src/ünï.rs", "<unknown>"];
const FUNCTIONS: [&str; 3] = [
    "app::main",
    "app::cache::insert",
    "alloc::vec::Vec<T>::push",
];

fn frame() -> impl Strategy<Value = Frame> {
    (
        0..FILES.len(),
        0u32..6,
        proptest::option::of(0..FUNCTIONS.len()),
    )
        .prop_map(|(f, line, func)| Frame {
            function: func.map(|i| FUNCTIONS[i].into()),
            ..Frame::new(FILES[f], line)
        })
}

fn snapshot() -> impl Strategy<Value = Snapshot> {
    let traceback =
        (proptest::collection::vec(frame(), 0..5), 0u16..8).prop_map(|(frames, extra)| {
            let total_nframe = frames.len() as u16 + extra;
            Traceback {
                frames,
                total_nframe,
            }
        });
    let trace = (0u32..3, 0u64..100_000, traceback);
    (
        1u16..20,
        proptest::collection::vec(trace, 0..40),
        any::<u64>(),
    )
        .prop_map(|(limit, traces, memory)| {
            let mut s = snapshot_from_traces(limit, traces);
            s.tracer_memory = memory;
            s
        })
}

fn all_statistics(s: &Snapshot) -> Vec<String> {
    let mut out = Vec::new();
    for (key, cumulative) in [
        (KeyType::Filename, false),
        (KeyType::Lineno, false),
        (KeyType::Traceback, false),
        (KeyType::Filename, true),
        (KeyType::Lineno, true),
    ] {
        for stat in s.statistics(key, cumulative).unwrap() {
            out.push(format!(
                "{key:?} {cumulative} {stat} {:?}",
                stat.traceback.frames
            ));
        }
    }
    out
}

/// Tracebacks as addresses most recent first, then a traced allocation.
#[derive(Clone, Debug)]
struct Alloc {
    domain: u32,
    addr: usize,
    size: usize,
    stack: Vec<usize>,
}

fn allocs() -> impl Strategy<Value = Vec<Alloc>> {
    let stack = proptest::collection::vec(
        prop_oneof![
            0x0800_0000usize..0x0800_0100,
            Just(usize::MAX - 1),
            1usize..4
        ],
        0..6,
    );
    proptest::collection::vec(
        (0u32..2, 1usize..64, 0usize..5000, stack).prop_map(|(domain, a, size, stack)| Alloc {
            domain,
            addr: a * 16,
            size,
            stack,
        }),
        0..60,
    )
}

struct Arrays {
    slots: Vec<Slot>,
    entries: Vec<TracebackEntry>,
    index: Vec<u64>,
    frames: Vec<usize>,
}

impl Arrays {
    /// Small on purpose: the table and the traceback store both fill up.
    fn new() -> Arrays {
        Arrays {
            slots: vec![Slot::EMPTY; 32],
            entries: vec![TracebackEntry::EMPTY; 12],
            index: vec![0; 32],
            frames: vec![0; 40],
        }
    }

    fn tracer(&mut self, allocs: &[Alloc]) -> Tracer<'_> {
        let mut t = Tracer::new(TracerStorage {
            slots: &mut self.slots,
            tracebacks: TracebackStorage {
                entries: &mut self.entries,
                index: &mut self.index,
                frames: &mut self.frames,
            },
        });
        for (i, a) in allocs.iter().enumerate() {
            t.record_alloc(a.domain, a.addr, a.size, &a.stack, a.stack.len() as u16 + 1);
            if i % 5 == 4 {
                t.record_free(a.domain, allocs[i / 2].addr);
            }
        }
        t
    }
}

/// Names addresses deterministically; some are inlined (two frames), small ones hidden.
#[derive(Clone, Copy)]
struct FakeSymbols;

impl Resolver for FakeSymbols {
    fn resolve(&mut self, address: usize, out: &mut Vec<Frame>) -> bool {
        match address {
            1..=3 => true,
            a if a % 3 == 0 => {
                out.push(Frame::new("src/inlined.rs", (a % 7) as u32));
                out.push(Frame::new(FILES[a % 3], (a % 11) as u32));
                true
            }
            a if a % 3 == 1 => {
                out.push(Frame::new(FILES[a % 4], (a % 5) as u32));
                true
            }
            _ => false,
        }
    }
}

/// The build id the devices of these tests report.
const BUILD_ID: &[u8] = &[0xde, 0xad, 0xbe, 0xef];

/// How the devices of these tests describe themselves: 8 frames, a build id, and 100 bytes of
/// their own beside the tracer's storage.
fn device(tracer: &Tracer<'_>) -> DeviceInfo<'static> {
    DeviceInfo {
        traceback_limit: 8,
        build_id: BUILD_ID,
        tracer_memory: tracer.memory_bytes() + 100,
    }
}

fn device_bytes(tracer: &Tracer<'_>) -> Vec<u8> {
    let mut bytes = Vec::new();
    encode_tracer(tracer, &device(tracer), &mut bytes);
    bytes
}

proptest! {
    #[test]
    fn binary_round_trip_preserves_statistics(s in snapshot()) {
        let back = Snapshot::load_bytes(&s.dump_bytes()).unwrap();
        prop_assert_eq!(all_statistics(&back), all_statistics(&s));
        prop_assert_eq!(&back.tracebacks, &s.tracebacks);
        // Equal tracebacks may differ in depth (as in Python, equality is the frames').
        let depths = |s: &Snapshot| s.tracebacks.iter().map(|t| t.total_nframe).collect::<Vec<_>>();
        prop_assert_eq!(depths(&back), depths(&s));
        prop_assert_eq!(back.counters, s.counters);
        prop_assert_eq!(back.tracer_memory, s.tracer_memory);
        let diffs = back.compare_to(&s, KeyType::Lineno, false).unwrap();
        prop_assert!(diffs.iter().all(|d| d.size_diff == 0 && d.count_diff == 0));
    }

    #[cfg(feature = "json")]
    #[test]
    fn json_round_trip_preserves_statistics(s in snapshot()) {
        let back = Snapshot::from_json(&s.to_json()).unwrap();
        prop_assert_eq!(all_statistics(&back), all_statistics(&s));
        let depths = |s: &Snapshot| {
            let mut d: Vec<_> = s.traces.iter().map(|t| s.traceback_of(t).total_nframe).collect();
            d.sort_unstable();
            d
        };
        prop_assert_eq!(depths(&back), depths(&s));
        prop_assert_eq!(back.counters, s.counters);
        prop_assert_eq!(back.traceback_limit, s.traceback_limit);
    }

    /// What a device streams decodes to the statistics a host-side snapshot of the same tracer
    /// gives, before and after resolving the addresses.
    #[test]
    fn device_stream_matches_a_host_snapshot(allocs in allocs()) {
        let mut arrays = Arrays::new();
        let tracer = arrays.tracer(&allocs);
        let mut raw = RawSnapshot::new(8);
        raw.add(&tracer);
        let bytes = device_bytes(&tracer);

        let mut decoded = Snapshot::load_bytes(&bytes).unwrap();
        prop_assert_eq!(decoded.traces.len(), tracer.table().len());
        prop_assert_eq!(decoded.counters, *tracer.counters());
        prop_assert_eq!(decoded.traceback_limit, 8);
        prop_assert_eq!(&decoded.build_id[..], BUILD_ID);
        prop_assert_eq!(decoded.tracer_memory, tracer.memory_bytes() as u64 + 100);
        let total: u64 = decoded.traces.iter().map(|t| t.size).sum();
        prop_assert_eq!(total, tracer.counters().current);

        let host = raw.clone().resolve(&mut AddressesOnly);
        prop_assert_eq!(all_statistics(&decoded), all_statistics(&host));

        decoded.resolve_addresses(&mut FakeSymbols);
        let host = raw.resolve(&mut FakeSymbols);
        prop_assert_eq!(all_statistics(&decoded), all_statistics(&host));

        // The fixed-buffer sink writes the same bytes, or says how many it needs.
        let mut buf = vec![0u8; bytes.len()];
        let mut sink = SliceSink::new(&mut buf);
        encode_tracer(&tracer, &device(&tracer), &mut sink);
        prop_assert_eq!(sink.written(), Some(&bytes[..]));
        let mut small = vec![0u8; bytes.len() - 1];
        let mut sink = SliceSink::new(&mut small);
        encode_tracer(&tracer, &device(&tracer), &mut sink);
        prop_assert_eq!((sink.written(), sink.needed()), (None, bytes.len()));
    }

    /// Every truncation and every single changed byte of real files is refused.
    #[test]
    fn truncated_or_flipped_files_are_refused(
        s in snapshot(),
        allocs in allocs(),
        at in any::<prop::sample::Index>(),
        xor in 1u8..=255,
    ) {
        let mut arrays = Arrays::new();
        let tracer = arrays.tracer(&allocs);
        for bytes in [s.dump_bytes(), device_bytes(&tracer)] {
            for len in 0..bytes.len() {
                prop_assert!(Snapshot::load_bytes(&bytes[..len]).is_err());
            }
            let mut flipped = bytes.clone();
            let i = at.index(bytes.len());
            flipped[i] ^= xor;
            let err = Snapshot::load_bytes(&flipped).unwrap_err();
            match i {
                0..=5 => prop_assert_eq!(err, DecodeError::BadMagic),
                // Another version this crate reads: then the checksum tells.
                6 if (OLDEST_VERSION..=VERSION).contains(&flipped[6]) => {
                    prop_assert!(matches!(err, DecodeError::Checksum { .. }), "{:?}", err)
                }
                6 => prop_assert!(matches!(err, DecodeError::UnsupportedVersion(_)), "{:?}", err),
                _ => prop_assert!(matches!(err, DecodeError::Checksum { .. }), "{:?}", err),
            }
        }
    }

    /// A decode given a memory limit allocates no more than it, and refuses the file when it
    /// would need more: checked on each file at the smallest limit that loads it.
    #[test]
    fn decoding_stays_within_its_memory_limit(s in snapshot(), allocs in allocs()) {
        let mut arrays = Arrays::new();
        let tracer = arrays.tracer(&allocs);
        for bytes in [s.dump_bytes(), device_bytes(&tracer)] {
            let (least, peak) = least_memory_limit(&bytes);
            prop_assert!(peak <= least, "took {} B within a limit of {} B", peak, least);
            // The charges are estimates, not wild ones: a limit of a quarter of them would do.
            prop_assert!(least <= 4 * peak + 256, "limit {} B for {} B taken", least, peak);
            if least > 0 {
                let err = Snapshot::load_bytes_within(&bytes, least - 1).unwrap_err();
                prop_assert_eq!(err, DecodeError::TooLarge { limit: least as u64 - 1 });
            }
        }
    }

    /// Naming a device snapshot's addresses, given a memory limit, grows the heap by no more
    /// than it, and is refused when it would need more.
    #[test]
    fn resolving_stays_within_its_memory_limit(allocs in allocs()) {
        let mut arrays = Arrays::new();
        let tracer = arrays.tracer(&allocs);
        let decoded = Snapshot::load_bytes(&device_bytes(&tracer)).unwrap();
        let (least, peak) = least_resolving_limit(&decoded, FakeSymbols);
        prop_assert!(peak <= least, "took {} B within a limit of {} B", peak, least);
        prop_assert!(least <= 4 * peak + 256, "limit {} B for {} B taken", least, peak);
        if least > 0 {
            let err = decoded
                .clone()
                .resolve_raw_addresses_within(&mut FakeSymbols, least - 1)
                .unwrap_err();
            prop_assert_eq!(err, OverMemoryLimit { limit: least as u64 - 1 });
        }
    }

    /// Several changed bytes anywhere never make the decoder panic.
    #[test]
    fn damaged_files_never_panic(
        s in snapshot(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..16),
    ) {
        let mut bytes = s.dump_bytes();
        for (at, value) in flips {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        let _ = Snapshot::load_bytes(&bytes);
    }
}

/// The smallest limit under which `bytes` loads, and the heap the load took under it.
fn least_memory_limit(bytes: &[u8]) -> (usize, usize) {
    least_limit(
        || (),
        |(), limit| match Snapshot::load_bytes_within(bytes, limit) {
            Ok(_) => true,
            Err(DecodeError::TooLarge { .. }) => false,
            Err(e) => panic!("{e}"),
        },
    )
}

/// The smallest limit under which `run` (given what `prepare` made, outside the measure)
/// fits, and the heap it took under that limit.
fn least_limit<S>(prepare: impl Fn() -> S, run: impl Fn(S, usize) -> bool) -> (usize, usize) {
    let (mut low, mut high) = (0usize, 1usize << 30);
    assert!(run(prepare(), high));
    while low < high {
        let mid = low + (high - low) / 2;
        if run(prepare(), mid) {
            high = mid;
        } else {
            low = mid + 1;
        }
    }
    let prepared = prepare();
    let (fits, peak) = heap::peak_growth(|| run(prepared, low));
    assert!(fits);
    (low, peak)
}

/// The smallest limit under which `snapshot`'s raw addresses resolve with `resolver`, and the
/// heap that took.
fn least_resolving_limit(snapshot: &Snapshot, resolver: impl Resolver + Copy) -> (usize, usize) {
    least_limit(
        || snapshot.clone(),
        |mut s, limit| {
            let mut resolver = resolver;
            s.resolve_raw_addresses_within(&mut resolver, limit).is_ok()
        },
    )
}

/// Files that describe far more than they hold: each byte of one of them is worth tens of
/// bytes decoded. Within a limit they are refused, and the decode stops before taking it.
#[test]
fn forged_files_are_refused_within_a_memory_limit() {
    const N: usize = 100_000;
    let header = |body: &mut Vec<u8>| {
        body.extend_from_slice(b"TMSNAP\x03");
        // Limit, five counters, tracer memory, sample interval, no build id, no strings.
        body.extend_from_slice(&[16, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    };
    let finish = |mut body: Vec<u8>| {
        body.push(0); // no traces
        let crc = {
            let mut c = tracemalloc_core::codec::binary::Crc32::new();
            c.update(&body);
            c.finish()
        };
        body.extend_from_slice(&crc.to_le_bytes());
        body
    };
    let varint = |body: &mut Vec<u8>, mut v: usize| {
        while v >= 0x80 {
            body.push(v as u8 | 0x80);
            v >>= 7;
        }
        body.push(v as u8);
    };
    // One traceback of N addresses, all the same (one byte each).
    let mut addresses = Vec::new();
    header(&mut addresses);
    addresses.extend_from_slice(&[1, 1, 0]); // one traceback: addresses, total_nframe 0
    varint(&mut addresses, N);
    addresses.extend(std::iter::repeat_n(0u8, N));
    let addresses = finish(addresses);
    // One traceback of N distinct addresses, each the last plus one (a zigzag delta of 2): each
    // a name and an entry in the decoder's map of names.
    let mut distinct = Vec::new();
    header(&mut distinct);
    distinct.extend_from_slice(&[1, 1, 0]);
    varint(&mut distinct, N);
    distinct.extend(std::iter::repeat_n(2u8, N));
    let distinct = finish(distinct);
    // N empty tracebacks (two bytes each).
    let mut empty = Vec::new();
    header(&mut empty);
    varint(&mut empty, N);
    for _ in 0..N {
        empty.extend_from_slice(&[0, 0]);
    }
    let empty = finish(empty);

    // Named by debug info that inlines two frames at the address: the frames would double.
    let decoded = Snapshot::load_bytes(&addresses).unwrap();
    let (least, peak) = least_resolving_limit(&decoded, FakeSymbols);
    assert!(peak <= least, "took {peak} B within a limit of {least} B");
    assert!(
        least > N * 80,
        "{least} B for {N} addresses of two frames each"
    );
    let limit = 1 << 20;
    let mut resolving = decoded.clone();
    let (refused, taken) =
        heap::peak_growth(|| resolving.resolve_raw_addresses_within(&mut FakeSymbols, limit));
    assert_eq!(
        refused.unwrap_err(),
        OverMemoryLimit {
            limit: limit as u64
        }
    );
    assert!(
        taken <= limit,
        "took {taken} B before refusing at {limit} B"
    );

    for bytes in [addresses, distinct, empty] {
        let (least, peak) = least_memory_limit(&bytes);
        assert!(peak <= least, "took {peak} B within a limit of {least} B");
        assert!(
            least > 20 * bytes.len(),
            "{least} B for a file of {}",
            bytes.len()
        );
        let limit = bytes.len() * 10;
        let (refused, taken) = heap::peak_growth(|| Snapshot::load_bytes_within(&bytes, limit));
        assert_eq!(
            refused.unwrap_err(),
            DecodeError::TooLarge {
                limit: limit as u64
            }
        );
        assert!(
            taken <= limit,
            "took {taken} B before refusing at {limit} B"
        );
        assert_eq!(
            DecodeError::TooLarge {
                limit: limit as u64
            }
            .to_string(),
            format!(
                "loading this snapshot would take more than {} MiB of memory, the limit",
                limit.div_ceil(1 << 20)
            )
        );
    }
}

#[test]
fn device_snapshot_reports_store_overflow_and_unknown_stacks() {
    let mut arrays = Arrays::new();
    // 40 pool frames: the fifth 9-frame stack no longer fits, and one stack is empty.
    let mut allocs: Vec<Alloc> = (0..6)
        .map(|i| Alloc {
            domain: 0,
            addr: 16 * (i + 1),
            size: 10,
            stack: (0..9).map(|f| 0x0800_0000 + 0x100 * i + f).collect(),
        })
        .collect();
    allocs.push(Alloc {
        domain: 0,
        addr: 0x1000,
        size: 7,
        stack: Vec::new(),
    });
    let mut t = Tracer::new(TracerStorage {
        slots: &mut arrays.slots,
        tracebacks: TracebackStorage {
            entries: &mut arrays.entries,
            index: &mut arrays.index,
            frames: &mut arrays.frames,
        },
    });
    for a in &allocs {
        t.record_alloc(a.domain, a.addr, a.size, &a.stack, a.stack.len() as u16);
    }
    let decoded = Snapshot::load_bytes(&device_bytes(&t)).unwrap();
    let stats: Vec<String> = decoded
        .statistics(KeyType::Filename, false)
        .unwrap()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert!(
        stats.contains(&"<traceback store full>:0: size=20 B, count=2, average=10 B".to_string()),
        "{stats:?}"
    );
    assert!(stats.contains(&"<unknown>:0: size=7 B, count=1, average=7 B".to_string()));
}
