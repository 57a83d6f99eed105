//! The binary snapshot format: small, streamable, checked.
//!
//! A device has no room to build a snapshot in memory, so [`encode_tracer`] writes one straight
//! from a live tracer into a [`Sink`] (a UART, defmt, semihosting) without allocating: every
//! section starts with a count the tracer already knows, and the checksum is a trailer computed
//! as the bytes go out. The host decodes it with `Snapshot::load_bytes` and resolves the raw
//! addresses later with the firmware's debug info (`Snapshot::resolve_addresses`).
//! `Snapshot::dump_bytes` writes the same format with resolved frames added.
//!
//! Layout, version 3 (every number an unsigned LEB128 varint unless noted; versions 1 and 2,
//! still read, have no `build_id`, and version 1 no `sample_interval`):
//!
//! ```text
//! magic "TMSNAP" (6 bytes), version (1 byte)
//! traceback_limit
//! counters: current, peak, traces, untraced_blocks, untraced_bytes
//! tracer_memory
//! sample_interval (0: every block traced)
//! build_id:   byte length (0: not known; at most 255), then the bytes (see `crate::build_id`)
//! strings:    count, then per string: byte length, UTF-8 bytes
//! tracebacks: count, then per traceback:
//!     flags (1 = addresses, 2 = frames, 4 = the "traceback store full" entry)
//!     total_nframe
//!     if addresses: count, then each address as the zigzag of its difference from the
//!                   previous one (0 before the first), most recent call first
//!     if frames:    count, then per frame: filename string index, lineno,
//!                   function string index + 1 (0: no function name)
//! traces:     count, then per trace: domain, size, traceback index
//! CRC-32 (IEEE) of all bytes before it, 4 bytes little-endian
//! ```
//!
//! Decoding never panics and never trusts a count: each is checked against the bytes left
//! before anything is allocated for it.

use core::fmt;

use crate::tracer::Tracer;

/// The first bytes of every snapshot file.
pub const MAGIC: &[u8; 6] = b"TMSNAP";
/// The format version this crate writes.
pub const VERSION: u8 = 3;
/// The oldest format version this crate reads: version 1 files, written before sampling, load
/// as snapshots of full tracing.
pub const OLDEST_VERSION: u8 = 1;
/// The first version whose header carries the sample interval.
#[cfg_attr(not(feature = "alloc"), allow(dead_code))]
const SAMPLED_SINCE: u8 = 2;
/// The first version whose header carries the build id.
#[cfg_attr(not(feature = "alloc"), allow(dead_code))]
const BUILD_ID_SINCE: u8 = 3;

const FLAG_ADDRESSES: u64 = 1;
#[cfg_attr(not(feature = "alloc"), allow(dead_code))]
const FLAG_FRAMES: u64 = 2;
const FLAG_STORE_FULL: u64 = 4;

/// Where encoded bytes go: a buffer, a serial port, a debug probe.
pub trait Sink {
    /// Writes all of `bytes`.
    fn write(&mut self, bytes: &[u8]);
}

impl<S: Sink + ?Sized> Sink for &mut S {
    fn write(&mut self, bytes: &[u8]) {
        (**self).write(bytes);
    }
}

#[cfg(feature = "alloc")]
impl Sink for alloc::vec::Vec<u8> {
    fn write(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

/// A sink over a fixed buffer, for devices that send the snapshot after taking it. Bytes past
/// the end are counted, not written, so [`SliceSink::needed`] tells how big the buffer must be.
pub struct SliceSink<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl<'a> SliceSink<'a> {
    /// A sink writing into `buf` from its start.
    pub fn new(buf: &'a mut [u8]) -> SliceSink<'a> {
        SliceSink { buf, len: 0 }
    }

    /// Bytes the encoding needs, written or not.
    pub fn needed(&self) -> usize {
        self.len
    }

    /// The bytes written, or `None` when the buffer was too small.
    pub fn written(&self) -> Option<&[u8]> {
        self.buf.get(..self.len)
    }
}

impl Sink for SliceSink<'_> {
    fn write(&mut self, bytes: &[u8]) {
        let end = self.len.saturating_add(bytes.len());
        if let Some(dst) = self.buf.get_mut(self.len..end) {
            dst.copy_from_slice(bytes);
        }
        self.len = end;
    }
}

/// CRC-32 (IEEE 802.3, reflected), a nibble at a time: a 64-byte table suits a microcontroller.
/// The trailer of every file is this checksum of what precedes it (public for tools that frame
/// a body themselves, such as the fuzz targets in `core/fuzz`).
#[derive(Clone, Copy, Debug)]
pub struct Crc32(u32);

const CRC_TABLE: [u32; 16] = {
    let mut table = [0u32; 16];
    let mut i = 0;
    while i < 16 {
        let mut c = i as u32;
        let mut bit = 0;
        while bit < 4 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0xEDB8_8320
            } else {
                c >> 1
            };
            bit += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

impl Default for Crc32 {
    fn default() -> Crc32 {
        Crc32::new()
    }
}

impl Crc32 {
    /// A checksum of no bytes yet.
    pub fn new() -> Crc32 {
        Crc32(!0)
    }

    /// Adds `bytes`.
    pub fn update(&mut self, bytes: &[u8]) {
        let mut c = self.0;
        for &b in bytes {
            c ^= u32::from(b);
            c = (c >> 4) ^ CRC_TABLE[(c & 15) as usize];
            c = (c >> 4) ^ CRC_TABLE[(c & 15) as usize];
        }
        self.0 = c;
    }

    /// The checksum of every byte added.
    pub fn finish(self) -> u32 {
        !self.0
    }
}

/// Writes varints into a sink while checksumming them.
struct Writer<S: Sink> {
    sink: S,
    crc: Crc32,
}

impl<S: Sink> Writer<S> {
    fn new(sink: S) -> Writer<S> {
        let mut w = Writer {
            sink,
            crc: Crc32::new(),
        };
        w.bytes(MAGIC);
        w.bytes(&[VERSION]);
        w
    }

    fn bytes(&mut self, bytes: &[u8]) {
        self.crc.update(bytes);
        self.sink.write(bytes);
    }

    fn varint(&mut self, mut v: u64) {
        let mut buf = [0u8; 10];
        let mut n = 0;
        loop {
            let byte = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                buf[n] = byte;
                n += 1;
                break;
            }
            buf[n] = byte | 0x80;
            n += 1;
        }
        self.bytes(&buf[..n]);
    }

    fn header(
        &mut self,
        traceback_limit: u16,
        c: &crate::tracer::Counters,
        memory: u64,
        sample_interval: u64,
        build_id: &[u8],
    ) {
        self.varint(u64::from(traceback_limit));
        for v in [
            c.current,
            c.peak,
            c.traces,
            c.untraced_blocks,
            c.untraced_bytes,
            memory,
            sample_interval,
        ] {
            self.varint(v);
        }
        let build_id = if build_id.len() <= crate::build_id::MAX_LEN {
            build_id
        } else {
            &[]
        };
        self.varint(build_id.len() as u64);
        self.bytes(build_id);
    }

    fn addresses(&mut self, addresses: &[usize]) {
        self.varint(addresses.len() as u64);
        let mut prev = 0u64;
        for &a in addresses {
            let delta = (a as u64).wrapping_sub(prev) as i64;
            self.varint(((delta << 1) ^ (delta >> 63)) as u64);
            prev = a as u64;
        }
    }

    fn finish(mut self) {
        let crc = self.crc.finish().to_le_bytes();
        self.sink.write(&crc);
    }
}

/// What a device says about itself in the header of its snapshots ([`encode_tracer`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeviceInfo<'a> {
    /// The traceback limit the adapter captures stacks with.
    pub traceback_limit: u16,
    /// The running program's GNU build id; empty when it has none (see [`crate::build_id`]).
    pub build_id: &'a [u8],
    /// Bytes of RAM the tracer uses, as the adapter counts them (Python's
    /// `get_tracemalloc_memory()`): the tracer's storage ([`Tracer::memory_bytes`]) and
    /// whatever the adapter keeps beside it, such as per-site totals.
    pub tracer_memory: usize,
}

/// Streams a snapshot of `tracer` into `sink` without allocating: Python's `take_snapshot()`
/// followed by `dump()`, for a device described by `device`. Tracebacks carry raw addresses
/// only; decode with `Snapshot::load_bytes` and resolve them on the host with the debug info of
/// the build `device.build_id` names.
///
/// The caller holds the tracer's lock for the whole call, so the sink should be fast or the
/// snapshot taken into a [`SliceSink`] first.
///
/// ```
/// use tracemalloc_core::codec::DeviceInfo;
/// use tracemalloc_core::{encode_tracer, Slot, SliceSink, TracebackEntry, TracebackStorage};
/// use tracemalloc_core::{Tracer, TracerStorage};
///
/// let (mut slots, mut entries) = ([Slot::EMPTY; 16], [TracebackEntry::EMPTY; 8]);
/// let (mut index, mut frames) = ([0u64; 16], [0usize; 32]);
/// let mut tracer = Tracer::new(TracerStorage {
///     slots: &mut slots,
///     tracebacks: TracebackStorage { entries: &mut entries, index: &mut index, frames: &mut frames },
/// });
/// tracer.record_alloc(0, 0x2000_0100, 64, &[0x0800_1234, 0x0800_0400], 2);
///
/// let device = DeviceInfo {
///     traceback_limit: 16,
///     build_id: &[0x0f, 0x99, 0x7a],
///     tracer_memory: tracer.memory_bytes(),
/// };
/// let mut buf = [0u8; 256];
/// let mut sink = SliceSink::new(&mut buf);
/// encode_tracer(&tracer, &device, &mut sink);
/// let bytes = sink.written().expect("buffer large enough");
/// assert_eq!(&bytes[..6], b"TMSNAP");
/// ```
pub fn encode_tracer<S: Sink>(tracer: &Tracer<'_>, device: &DeviceInfo<'_>, sink: S) {
    let mut w = Writer::new(sink);
    // A device traces every block: sample interval 0.
    w.header(
        device.traceback_limit,
        tracer.counters(),
        device.tracer_memory as u64,
        0,
        device.build_id,
    );
    w.varint(0); // no strings: frames are resolved on the host
    let store = tracer.tracebacks();
    let (entries, pool) = store.raw_parts();
    w.varint(entries.len() as u64);
    for (i, entry) in entries.iter().enumerate() {
        let frames = pool
            .get(entry.start()..entry.start() + entry.len())
            .unwrap_or(&[]);
        // Entry 0 is the store's overflow traceback.
        let mut flags = if i == 0 { FLAG_STORE_FULL } else { 0 };
        if !frames.is_empty() {
            flags |= FLAG_ADDRESSES;
        }
        w.varint(flags);
        w.varint(u64::from(entry.total_nframe()));
        if !frames.is_empty() {
            w.addresses(frames);
        }
    }
    let table = tracer.table();
    w.varint(table.len() as u64);
    for slot in table.iter() {
        let id = slot.traceback();
        w.varint(u64::from(store.domain_of(id)));
        w.varint(slot.size());
        w.varint(u64::from(id.index()));
    }
    w.finish();
}

/// Why a snapshot file could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// The data ends at byte `at` in the middle of the file.
    Truncated {
        /// Offset where more bytes were needed.
        at: usize,
    },
    /// The data does not start with [`MAGIC`]: not a snapshot file.
    BadMagic,
    /// A snapshot file of a format version this crate does not read.
    UnsupportedVersion(u8),
    /// The file is damaged: its checksum does not match its contents.
    Checksum {
        /// The checksum the file's trailer holds.
        expected: u32,
        /// The checksum of the bytes read.
        found: u32,
    },
    /// The checksum matches but a value makes no sense (a writer bug or a forged file).
    Invalid {
        /// Offset of the value.
        at: usize,
        /// What is wrong with it.
        what: &'static str,
    },
    /// Decoding would take more memory than the caller allows
    /// (`Snapshot::load_bytes_within`); refused before taking it.
    TooLarge {
        /// The limit, in bytes.
        limit: u64,
    },
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Truncated { at } => write!(f, "snapshot file truncated at byte {at}"),
            DecodeError::BadMagic => f.write_str("not a tracemalloc snapshot file (bad magic)"),
            DecodeError::UnsupportedVersion(v) => {
                write!(
                    f,
                    "unsupported snapshot format version {v} (this build reads {OLDEST_VERSION} to {VERSION})"
                )
            }
            DecodeError::Checksum { expected, found } => write!(
                f,
                "snapshot file damaged or cut short: checksum {found:#010x}, file says {expected:#010x}"
            ),
            DecodeError::Invalid { at, what } => {
                write!(f, "invalid snapshot file at byte {at}: {what}")
            }
            DecodeError::TooLarge { limit } => write!(
                f,
                "loading this snapshot would take more than {} MiB of memory, the limit",
                limit.div_ceil(1 << 20)
            ),
        }
    }
}

#[cfg(feature = "alloc")]
mod with_alloc {
    use alloc::sync::Arc;
    use alloc::vec::Vec;

    use hashbrown::hash_map::Entry;
    use hashbrown::HashMap;

    use super::*;
    use crate::snapshot::{
        hash_map_entry_bytes, shared_str_bytes, Frame, MemoryBudget, Snapshot, Trace, Traceback,
    };
    use crate::tracer::Counters;

    impl Snapshot {
        /// The snapshot in the binary format, resolved frames included: Python's `dump()`
        /// without the file.
        pub fn dump_bytes(&self) -> Vec<u8> {
            let mut out = Vec::new();
            self.write_to(&mut out);
            out
        }

        /// Writes [`Snapshot::dump_bytes`] into `sink`.
        pub fn write_to<S: Sink>(&self, sink: S) {
            let mut w = Writer::new(sink);
            w.header(
                self.traceback_limit,
                &self.counters,
                self.tracer_memory,
                self.sample_interval,
                &self.build_id,
            );

            let mut table = StringTable::default();
            // (filename, lineno, function + 1) per frame, in traceback order.
            let mut frames: Vec<(u64, u64, u64)> = Vec::new();
            for traceback in &self.tracebacks {
                for frame in &traceback.frames {
                    let file = table.intern(&frame.filename);
                    let function = frame.function.as_deref().map_or(0, |f| table.intern(f) + 1);
                    frames.push((file, u64::from(frame.lineno), function));
                }
            }
            w.varint(table.order.len() as u64);
            for s in &table.order {
                w.varint(s.len() as u64);
                w.bytes(s.as_bytes());
            }

            w.varint(self.tracebacks.len() as u64);
            let mut next = frames.iter();
            for (i, traceback) in self.tracebacks.iter().enumerate() {
                let addresses = self.addresses.get(i).map_or(&[][..], |a| &a[..]);
                let flags = if addresses.is_empty() {
                    FLAG_FRAMES
                } else {
                    FLAG_FRAMES | FLAG_ADDRESSES
                };
                w.varint(flags);
                w.varint(u64::from(traceback.total_nframe));
                if !addresses.is_empty() {
                    w.addresses(addresses);
                }
                w.varint(traceback.frames.len() as u64);
                for &(file, lineno, function) in next.by_ref().take(traceback.frames.len()) {
                    w.varint(file);
                    w.varint(lineno);
                    w.varint(function);
                }
            }

            w.varint(self.traces.len() as u64);
            for trace in &self.traces {
                w.varint(u64::from(trace.domain));
                w.varint(trace.size);
                w.varint(u64::from(trace.traceback));
            }
            w.finish();
        }

        /// Reads a snapshot written by [`Snapshot::dump_bytes`] or [`encode_tracer`]: Python's
        /// `Snapshot.load()` without the file. Tracebacks that came without frames (a device
        /// snapshot) show each address as [`Frame::unresolved`] until
        /// [`Snapshot::resolve_addresses`] names them.
        ///
        /// A file of `n` bytes may describe up to about `100 * n` bytes of snapshot (a frame
        /// takes one or two bytes in the file and 40 in memory): for files from elsewhere,
        /// [`Snapshot::load_bytes_within`] bounds that.
        pub fn load_bytes(data: &[u8]) -> Result<Snapshot, DecodeError> {
            Snapshot::load_bytes_within(data, usize::MAX)
        }

        /// [`Snapshot::load_bytes`], refusing with [`DecodeError::TooLarge`] a file whose
        /// snapshot would take more than `max_memory` bytes of heap, counted in glibc's blocks
        /// (each allocation's header and rounding included). The refusal comes before the
        /// memory is taken: each array is charged against the limit before it is allocated, so
        /// a forged file cannot exhaust memory (and end the program, or wake the kernel's OOM
        /// killer) on its way to an error.
        pub fn load_bytes_within(data: &[u8], max_memory: usize) -> Result<Snapshot, DecodeError> {
            let header = MAGIC.len() + 1;
            if data.len() < MAGIC.len() {
                return Err(if MAGIC.starts_with(data) {
                    DecodeError::Truncated { at: data.len() }
                } else {
                    DecodeError::BadMagic
                });
            }
            if &data[..MAGIC.len()] != MAGIC {
                return Err(DecodeError::BadMagic);
            }
            let Some(&version) = data.get(MAGIC.len()) else {
                return Err(DecodeError::Truncated { at: data.len() });
            };
            if !(OLDEST_VERSION..=VERSION).contains(&version) {
                return Err(DecodeError::UnsupportedVersion(version));
            }
            if data.len() < header + 4 {
                return Err(DecodeError::Truncated { at: data.len() });
            }
            let (content, trailer) = data.split_at(data.len() - 4);
            let expected = u32::from_le_bytes([trailer[0], trailer[1], trailer[2], trailer[3]]);
            let mut crc = Crc32::new();
            crc.update(content);
            let found = crc.finish();
            if found != expected {
                return Err(DecodeError::Checksum { expected, found });
            }
            decode_body(&content[header..], header, version, max_memory)
        }
    }

    /// Distinct strings in first-use order.
    #[derive(Default)]
    struct StringTable<'s> {
        index: HashMap<&'s str, u64>,
        order: Vec<&'s str>,
    }

    impl<'s> StringTable<'s> {
        fn intern(&mut self, s: &'s str) -> u64 {
            let order = &mut self.order;
            *self.index.entry(s).or_insert_with(|| {
                order.push(s);
                order.len() as u64 - 1
            })
        }
    }

    struct Reader<'a> {
        data: &'a [u8],
        pos: usize,
        /// Offset of `data` in the file, for error positions.
        base: usize,
        /// Heap the snapshot may still take (`load_bytes_within`).
        budget: MemoryBudget,
    }

    /// Bytes a heap allocator takes for an allocation of `size` bytes: glibc's block, a header
    /// word and the size rounded up to 16 bytes, at least 32. Charged for every allocation,
    /// since a forged file's many small ones cost mostly this.
    fn heap_block(size: usize) -> usize {
        size.saturating_add(core::mem::size_of::<usize>() + 15) / 16 * 16
    }

    impl<'a> Reader<'a> {
        fn at(&self) -> usize {
            self.base + self.pos
        }

        fn invalid(&self, what: &'static str) -> DecodeError {
            DecodeError::Invalid {
                at: self.at(),
                what,
            }
        }

        fn remaining(&self) -> usize {
            self.data.len() - self.pos
        }

        fn varint(&mut self) -> Result<u64, DecodeError> {
            let start = self.at();
            let mut value = 0u64;
            for shift in (0..70).step_by(7) {
                let Some(&byte) = self.data.get(self.pos) else {
                    return Err(DecodeError::Truncated { at: self.at() });
                };
                self.pos += 1;
                if shift == 63 && byte > 1 {
                    return Err(DecodeError::Invalid {
                        at: start,
                        what: "varint overflows 64 bits",
                    });
                }
                value |= u64::from(byte & 0x7f) << shift;
                if byte & 0x80 == 0 {
                    return Ok(value);
                }
            }
            Err(DecodeError::Invalid {
                at: start,
                what: "varint longer than 10 bytes",
            })
        }

        fn number<T: TryFrom<u64>>(&mut self, what: &'static str) -> Result<T, DecodeError> {
            let at = self.at();
            let v = self.varint()?;
            T::try_from(v).map_err(|_| DecodeError::Invalid { at, what })
        }

        /// A count of items taking at least `min_size` bytes each, checked against the bytes
        /// left so that a forged count cannot make us allocate.
        fn count(&mut self, min_size: usize, what: &'static str) -> Result<usize, DecodeError> {
            let at = self.at();
            let n = self.varint()?;
            match usize::try_from(n) {
                Ok(n) if n <= self.remaining() / min_size => Ok(n),
                _ => Err(DecodeError::Invalid { at, what }),
            }
        }

        /// Takes `bytes` of heap from the budget, or refuses the file.
        fn charge(&mut self, bytes: usize) -> Result<(), DecodeError> {
            self.budget
                .take(bytes)
                .map_err(|over| DecodeError::TooLarge { limit: over.limit })
        }

        /// [`Reader::charge`]s an allocation of `n` elements of `T` (none when `n` is 0).
        fn charge_array<T>(&mut self, n: usize) -> Result<(), DecodeError> {
            if n == 0 {
                return Ok(());
            }
            let bytes = n.checked_mul(core::mem::size_of::<T>());
            self.charge(bytes.map_or(usize::MAX, |b| heap_block(b).max(32)))
        }

        /// [`Reader::charge`]s a string shared through an `Arc<str>` of `len` bytes.
        fn charge_shared_str(&mut self, len: usize) -> Result<(), DecodeError> {
            self.charge_array::<u8>(shared_str_bytes(len))
        }

        fn bytes(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
            let Some(bytes) = self.data.get(self.pos..self.pos.saturating_add(n)) else {
                return Err(DecodeError::Truncated { at: self.at() });
            };
            self.pos += n;
            Ok(bytes)
        }
    }

    fn decode_body(
        data: &[u8],
        base: usize,
        version: u8,
        max_memory: usize,
    ) -> Result<Snapshot, DecodeError> {
        let mut r = Reader {
            data,
            pos: 0,
            base,
            budget: MemoryBudget::new(max_memory),
        };
        let traceback_limit = r.number("traceback limit above 65535")?;
        let counters = Counters {
            current: r.varint()?,
            peak: r.varint()?,
            traces: r.varint()?,
            untraced_blocks: r.varint()?,
            untraced_bytes: r.varint()?,
        };
        let tracer_memory = r.varint()?;
        let sample_interval = if version >= SAMPLED_SINCE {
            r.varint()?
        } else {
            0
        };
        let build_id = if version >= BUILD_ID_SINCE {
            let at = r.at();
            let len = r.count(1, "build id length exceeds the file")?;
            if len > crate::build_id::MAX_LEN {
                return Err(DecodeError::Invalid {
                    at,
                    what: "build id longer than 255 bytes",
                });
            }
            r.charge_array::<u8>(len)?;
            r.bytes(len)?.to_vec()
        } else {
            Vec::new()
        };

        let n = r.count(1, "string count exceeds the file")?;
        r.charge_array::<Arc<str>>(n)?;
        let mut strings: Vec<Arc<str>> = Vec::with_capacity(n);
        for _ in 0..n {
            let len = r.count(1, "string length exceeds the file")?;
            let at = r.at();
            let bytes = r.bytes(len)?;
            let s = core::str::from_utf8(bytes).map_err(|_| DecodeError::Invalid {
                at,
                what: "string is not UTF-8",
            })?;
            r.charge_shared_str(len)?;
            strings.push(Arc::from(s));
        }
        let string = |r: &Reader<'_>, i: u64| -> Result<Arc<str>, DecodeError> {
            usize::try_from(i)
                .ok()
                .and_then(|i| strings.get(i))
                .cloned()
                .ok_or_else(|| r.invalid("string index out of range"))
        };

        let n = r.count(2, "traceback count exceeds the file")?;
        r.charge_array::<Traceback>(n)?;
        r.charge_array::<Vec<usize>>(n)?;
        let mut tracebacks = Vec::with_capacity(n);
        let mut all_addresses = Vec::with_capacity(n);
        // One `0x…` name per distinct address: tracebacks share their outer frames, and a
        // forged file repeating one address would otherwise cost a string per byte. The
        // frames standing for no location are shared as well.
        let mut unresolved: HashMap<usize, Frame> = HashMap::new();
        let mut placeholders: [Option<Frame>; 2] = [None, None];
        for _ in 0..n {
            let flags = r.varint()?;
            if flags & !(FLAG_ADDRESSES | FLAG_FRAMES | FLAG_STORE_FULL) != 0 {
                return Err(r.invalid("unknown traceback flags"));
            }
            let total_nframe = r.number("total_nframe above 65535")?;
            let mut addresses = Vec::new();
            if flags & FLAG_ADDRESSES != 0 {
                let n = r.count(1, "address count exceeds the file")?;
                r.charge_array::<usize>(n)?;
                addresses.reserve_exact(n);
                let mut prev = 0u64;
                for _ in 0..n {
                    let z = r.varint()?;
                    let delta = ((z >> 1) as i64) ^ -((z & 1) as i64);
                    prev = prev.wrapping_add(delta as u64);
                    let addr = usize::try_from(prev)
                        .map_err(|_| r.invalid("address wider than this host's pointers"))?;
                    addresses.push(addr);
                }
            }
            let frames = if flags & FLAG_FRAMES != 0 {
                let n = r.count(3, "frame count exceeds the file")?;
                r.charge_array::<Frame>(n)?;
                let mut frames = Vec::with_capacity(n);
                for _ in 0..n {
                    let file = r.varint()?;
                    let filename = string(&r, file)?;
                    let lineno = r.number("line number above u32")?;
                    let function = match r.varint()? {
                        0 => None,
                        i => Some(string(&r, i - 1)?),
                    };
                    frames.push(Frame {
                        filename,
                        lineno,
                        function,
                    });
                }
                frames
            } else if !addresses.is_empty() && flags & FLAG_STORE_FULL == 0 {
                r.charge_array::<Frame>(addresses.len())?;
                let mut frames = Vec::with_capacity(addresses.len());
                for &a in &addresses {
                    let frame = match unresolved.entry(a) {
                        Entry::Occupied(known) => known.into_mut(),
                        Entry::Vacant(new) => {
                            // The map's entry, and the name: `0x` and the address's hex digits.
                            r.charge(hash_map_entry_bytes::<usize, Frame>())?;
                            r.charge_shared_str(2 + 2 * core::mem::size_of::<usize>())?;
                            new.insert(Frame::unresolved(a))
                        }
                    };
                    frames.push(frame.clone());
                }
                frames
            } else {
                r.charge_array::<Frame>(1)?;
                let full = flags & FLAG_STORE_FULL != 0;
                let shared = placeholders[usize::from(full)].get_or_insert_with(|| {
                    if full {
                        Frame::store_full()
                    } else {
                        Frame::unknown()
                    }
                });
                alloc::vec![shared.clone()]
            };
            tracebacks.push(Traceback {
                frames,
                total_nframe,
            });
            all_addresses.push(addresses);
        }

        let n = r.count(3, "trace count exceeds the file")?;
        r.charge_array::<Trace>(n)?;
        let mut traces = Vec::with_capacity(n);
        for _ in 0..n {
            let domain = r.number("domain above u32")?;
            let size = r.varint()?;
            let at = r.at();
            let traceback: u32 = r.number("traceback index above u32")?;
            if traceback as usize >= tracebacks.len() {
                return Err(DecodeError::Invalid {
                    at,
                    what: "traceback index out of range",
                });
            }
            traces.push(Trace {
                domain,
                size,
                traceback,
            });
        }
        if r.remaining() != 0 {
            return Err(r.invalid("bytes after the last trace"));
        }
        Ok(Snapshot {
            traces,
            tracebacks,
            addresses: all_addresses,
            traceback_limit,
            counters,
            tracer_memory,
            sample_interval,
            build_id,
        })
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use crate::snapshot::{snapshot_from_traces, Resolver};
        use alloc::string::ToString;
        use proptest::prelude::*;

        fn sample() -> Snapshot {
            let mut tb = Traceback::new(alloc::vec![
                Frame {
                    function: Some(Arc::from("app::b")),
                    ..Frame::new("src/b.rs", 2)
                },
                Frame::new("src/a.rs", 1),
            ]);
            tb.total_nframe = 7;
            let mut s = snapshot_from_traces(
                16,
                [
                    (0, 1000, tb.clone()),
                    (
                        3,
                        24,
                        Traceback::new(alloc::vec![Frame::new("src/a.rs", 9)]),
                    ),
                    (0, 5, tb),
                ],
            );
            s.addresses[0] = alloc::vec![0x0800_1234, 0x0800_1000];
            s.counters.untraced_blocks = 2;
            s.counters.untraced_bytes = 300;
            s.tracer_memory = 4096;
            s.sample_interval = 65536;
            s.build_id = alloc::vec![0x0f, 0x99, 0x7a, 0xaf];
            s
        }

        fn with_crc(content: &[u8]) -> Vec<u8> {
            let mut crc = Crc32::new();
            crc.update(content);
            let mut out = content.to_vec();
            out.extend_from_slice(&crc.finish().to_le_bytes());
            out
        }

        #[test]
        fn crc32_matches_the_standard_check_value() {
            let mut crc = Crc32::new();
            crc.update(b"1234");
            crc.update(b"56789");
            assert_eq!(crc.finish(), 0xCBF4_3926);
        }

        #[test]
        fn round_trip_keeps_every_field() {
            let s = sample();
            let bytes = s.dump_bytes();
            assert_eq!(&bytes[..7], b"TMSNAP\x03");
            let back = Snapshot::load_bytes(&bytes).unwrap();
            assert_eq!(back.traces, s.traces);
            assert_eq!(back.tracebacks, s.tracebacks);
            // Tracebacks are equal by their frames: the depth is compared on its own.
            let depths = |s: &Snapshot| {
                s.tracebacks
                    .iter()
                    .map(|t| t.total_nframe)
                    .collect::<Vec<_>>()
            };
            assert_eq!(depths(&back), [7, 1]);
            assert_eq!(back.addresses, s.addresses);
            assert_eq!(back.traceback_limit, 16);
            assert_eq!(back.counters, s.counters);
            assert_eq!(back.tracer_memory, 4096);
            assert_eq!(back.sample_interval, s.sample_interval);
            assert_eq!(back.build_id, s.build_id);
            let f = &back.tracebacks[0].frames[0];
            assert_eq!(f.function.as_deref(), Some("app::b"));
            assert_eq!(back.tracebacks[0].frames[1].function, None);
        }

        #[test]
        fn addresses_use_zigzag_deltas() {
            let mut w = Writer {
                sink: Vec::new(),
                crc: Crc32::new(),
            };
            w.addresses(&[1000, 998, 1003]);
            // count 3; +1000 -> 2000 (2 bytes); -2 -> 3; +5 -> 10
            assert_eq!(w.sink, alloc::vec![3, 0xd0, 0x0f, 3, 10]);
        }

        #[test]
        fn older_versions_load_without_the_fields_they_lack() {
            let mut s = sample();
            s.sample_interval = 0; // full tracing, as every version 1 file was
            s.build_id.clear(); // not known, as in every file before version 3
            let v3 = s.dump_bytes();
            // Where the header's `n`-th varint starts.
            let field = |n: usize| {
                let mut at = MAGIC.len() + 1;
                for _ in 0..n {
                    while v3[at] & 0x80 != 0 {
                        at += 1;
                    }
                    at += 1;
                }
                at
            };
            // Version 2 is version 3 without the build id, the header's ninth varint (its
            // length, 0, and no bytes); version 1 also lacks the sample interval, the eighth.
            let (sample_interval, build_id) = (field(7), field(8));
            assert_eq!((v3[sample_interval], v3[build_id]), (0, 0));
            let mut v2 = v3[..v3.len() - 4].to_vec();
            v2.remove(build_id);
            v2[MAGIC.len()] = 2;
            let mut v1 = v2.clone();
            v1.remove(sample_interval);
            v1[MAGIC.len()] = 1;
            for old in [v1, v2] {
                let loaded = Snapshot::load_bytes(&with_crc(&old)).unwrap();
                // Written again, it is the version 3 file: every field came through.
                assert_eq!(loaded.dump_bytes(), v3);
            }
        }

        #[test]
        fn header_errors_are_typed() {
            let bytes = sample().dump_bytes();
            assert_eq!(
                Snapshot::load_bytes(b"").unwrap_err(),
                DecodeError::Truncated { at: 0 }
            );
            assert_eq!(
                Snapshot::load_bytes(b"TMS").unwrap_err(),
                DecodeError::Truncated { at: 3 }
            );
            assert_eq!(
                Snapshot::load_bytes(b"PK\x03\x04").unwrap_err(),
                DecodeError::BadMagic
            );
            assert_eq!(
                Snapshot::load_bytes(b"TMSNAP").unwrap_err(),
                DecodeError::Truncated { at: 6 }
            );
            for version in [0, VERSION + 1] {
                let mut other = bytes.clone();
                other[6] = version;
                assert_eq!(
                    Snapshot::load_bytes(&other).unwrap_err(),
                    DecodeError::UnsupportedVersion(version)
                );
            }
            let mut flipped = bytes.clone();
            flipped[12] ^= 0x10;
            assert!(matches!(
                Snapshot::load_bytes(&flipped),
                Err(DecodeError::Checksum { .. })
            ));
            let mut trailing = bytes[..bytes.len() - 4].to_vec();
            trailing.push(0);
            assert!(matches!(
                Snapshot::load_bytes(&with_crc(&trailing)),
                Err(DecodeError::Invalid {
                    what: "bytes after the last trace",
                    ..
                })
            ));
        }

        #[test]
        fn forged_counts_are_refused_before_allocating() {
            // Header fields, then a string count of 2^40.
            let mut body = b"TMSNAP\x02".to_vec();
            body.extend_from_slice(&[16, 0, 0, 0, 0, 0, 0, 0]);
            body.extend_from_slice(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x20]);
            let err = Snapshot::load_bytes(&with_crc(&body)).unwrap_err();
            assert_eq!(
                err,
                DecodeError::Invalid {
                    at: 15,
                    what: "string count exceeds the file"
                }
            );
            assert_eq!(
                err.to_string(),
                "invalid snapshot file at byte 15: string count exceeds the file"
            );
        }

        #[test]
        fn a_forged_build_id_length_is_refused_before_reading() {
            let mut body = b"TMSNAP\x03".to_vec();
            body.extend_from_slice(&[16, 0, 0, 0, 0, 0, 0, 0]);
            body.extend_from_slice(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x20]);
            assert_eq!(
                Snapshot::load_bytes(&with_crc(&body)).unwrap_err(),
                DecodeError::Invalid {
                    at: 15,
                    what: "build id length exceeds the file"
                }
            );
        }

        #[test]
        fn a_build_id_longer_than_any_linker_writes_is_refused() {
            let mut s = sample();
            s.build_id = alloc::vec![7; crate::build_id::MAX_LEN];
            assert_eq!(
                Snapshot::load_bytes(&s.dump_bytes()).unwrap().build_id,
                s.build_id
            );
            // One byte more is written as not known, and read as forged.
            s.build_id.push(7);
            assert!(Snapshot::load_bytes(&s.dump_bytes())
                .unwrap()
                .build_id
                .is_empty());
            let mut body = b"TMSNAP\x03".to_vec();
            body.extend_from_slice(&[16, 0, 0, 0, 0, 0, 0, 0, 0x80, 0x02]);
            body.extend_from_slice(&[7; 256]);
            body.extend_from_slice(&[0, 0, 0]);
            assert_eq!(
                Snapshot::load_bytes(&with_crc(&body)).unwrap_err(),
                DecodeError::Invalid {
                    at: 15,
                    what: "build id longer than 255 bytes"
                }
            );
        }

        #[test]
        fn a_device_file_carries_its_build_id() {
            let back = Snapshot::load_bytes(&device_file(&[0x0800_1234])).unwrap();
            assert_eq!(back.build_id, sample().build_id);
        }

        /// What a device sends: one traceback of `addresses` and no frames, one 64-byte trace.
        fn device_file(addresses: &[usize]) -> Vec<u8> {
            let s = sample();
            let mut bytes = Vec::new();
            let mut w = Writer::new(&mut bytes);
            w.header(
                s.traceback_limit,
                &s.counters,
                s.tracer_memory,
                0,
                &s.build_id,
            );
            w.varint(0);
            w.varint(1);
            w.varint(FLAG_ADDRESSES);
            w.varint(2);
            w.addresses(addresses);
            w.varint(1);
            w.varint(0);
            w.varint(64);
            w.varint(0);
            w.finish();
            bytes
        }

        #[test]
        fn unresolved_addresses_share_one_name_each() {
            let back = Snapshot::load_bytes(&device_file(&[0x0800_1234; 1000])).unwrap();
            let frames = &back.tracebacks[0].frames;
            assert_eq!(frames.len(), 1000);
            assert_eq!(frames[999].to_string(), "0x8001234:0");
            assert!(frames
                .iter()
                .all(|f| Arc::ptr_eq(&f.filename, &frames[0].filename)));
        }

        #[test]
        fn unresolved_device_tracebacks_resolve_later() {
            let mut back = Snapshot::load_bytes(&device_file(&sample().addresses[0])).unwrap();
            assert_eq!(back.tracebacks[0].frames[0].to_string(), "0x8001234:0");
            struct Map;
            impl Resolver for Map {
                fn resolve(&mut self, address: usize, out: &mut Vec<Frame>) -> bool {
                    out.push(Frame::new("src/dev.rs", address as u32 & 0xfff));
                    true
                }
            }
            back.resolve_addresses(&mut Map);
            assert_eq!(
                back.tracebacks[0].frames,
                alloc::vec![Frame::new("src/dev.rs", 0x234), Frame::new("src/dev.rs", 0)]
            );
        }

        #[test]
        fn only_raw_tracebacks_resolve_again() {
            /// Names addresses below 0x0800_2000 (a firmware's code), nothing else.
            struct Firmware;
            impl Resolver for Firmware {
                fn resolve(&mut self, address: usize, out: &mut Vec<Frame>) -> bool {
                    if address >= 0x0800_2000 {
                        return false;
                    }
                    out.push(Frame::new("src/dev.rs", address as u32 & 0xfff));
                    true
                }
            }
            // A device snapshot: addresses only. Its two addresses get a line each.
            let mut device =
                Snapshot::load_bytes(&device_file(&[0x0800_1234, 0x0800_1010])).unwrap();
            assert!(device.has_raw_addresses());
            assert_eq!(device.resolve_raw_addresses(&mut Firmware), (2, 2));
            assert!(!device.has_raw_addresses());
            assert_eq!(
                device.tracebacks[0].frames[0],
                Frame::new("src/dev.rs", 0x234)
            );
            // Resolved now: a second pass finds nothing raw.
            assert_eq!(device.resolve_raw_addresses(&mut Firmware), (0, 0));
            // The wrong firmware names none of them, and says so by its count.
            let mut device = Snapshot::load_bytes(&device_file(&[0x0900_0000])).unwrap();
            assert_eq!(device.resolve_raw_addresses(&mut Firmware), (1, 0));
            assert_eq!(
                device.tracebacks[0].frames,
                alloc::vec![Frame::unresolved(0x0900_0000)]
            );
            // A host snapshot, resolved when taken, keeps its frames though it has addresses.
            let mut host = sample();
            assert!(!host.has_raw_addresses());
            let before = host.tracebacks.clone();
            assert_eq!(host.resolve_raw_addresses(&mut Firmware), (0, 0));
            assert_eq!(host.tracebacks, before);
        }

        proptest! {
            /// A body with any bytes changed, under a valid checksum, decodes or fails cleanly.
            #[test]
            fn corrupt_bodies_under_a_valid_checksum_never_panic(
                flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
                cut in any::<usize>(),
            ) {
                let bytes = sample().dump_bytes();
                let mut content = bytes[..bytes.len() - 4].to_vec();
                for (at, value) in flips {
                    let at = 7 + at % (content.len() - 7);
                    content[at] = value;
                }
                let keep = 7 + cut % (content.len() - 6);
                content.truncate(keep);
                let _ = Snapshot::load_bytes(&with_crc(&content));
            }
        }
    }
}
