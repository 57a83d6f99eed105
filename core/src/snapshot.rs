//! Snapshots: a copy of the tracer's state, taken fast, analysed later.
//!
//! Taking a snapshot has two steps so that the adapter's lock is held only for a memory copy:
//! [`RawSnapshot::add`] copies the trace slots and traceback arrays of a tracer verbatim (a
//! sharded adapter adds each shard), then [`RawSnapshot::resolve`], outside any lock, drops empty
//! slots, merges equal tracebacks across parts and turns addresses into [`Frame`]s through a
//! [`Resolver`], each distinct address once.

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::cmp::Ordering;
use core::hash::{Hash, Hasher};

use hashbrown::hash_map::Entry;
use hashbrown::{HashMap, HashSet};

use crate::sampling::scaled_total;
use crate::table::Slot;
use crate::traceback::{TracebackEntry, TracebackId, TracebackStore};
use crate::tracer::{Counters, Tracer};

/// A source location: Python's `tracemalloc.Frame`, plus the function name when known.
///
/// Equality, hashing and ordering use `(filename, lineno)` only, as in Python, so two inlined
/// functions on one line group together.
#[derive(Clone, Debug)]
pub struct Frame {
    /// Source file, relative to the workspace when it lies inside it.
    pub filename: Arc<str>,
    /// Line number; 0 when unknown.
    pub lineno: u32,
    /// Demangled function name, without the hash suffix, when known.
    pub function: Option<Arc<str>>,
}

impl Frame {
    /// A frame at `filename:lineno` with no function name.
    pub fn new(filename: &str, lineno: u32) -> Frame {
        Frame {
            filename: Arc::from(filename),
            lineno,
            function: None,
        }
    }

    /// The frame reported for an address no resolver could name: `0x…` as the file, line 0.
    pub fn unresolved(address: usize) -> Frame {
        Frame::new(&alloc::format!("{address:#x}"), 0)
    }

    /// Heap bytes its names take, counted as if it held the only reference to each.
    fn name_bytes(&self) -> usize {
        let function = self
            .function
            .as_deref()
            .map_or(0, |f| shared_str_bytes(f.len()));
        shared_str_bytes(self.filename.len()).saturating_add(function)
    }

    /// The frame CPython reports when a traceback is unknown: `<unknown>:0`.
    pub fn unknown() -> Frame {
        Frame::new("<unknown>", 0)
    }

    /// The frame reported for blocks whose stack arrived after the traceback store filled up.
    pub fn store_full() -> Frame {
        Frame::new("<traceback store full>", 0)
    }
}

impl PartialEq for Frame {
    fn eq(&self, other: &Frame) -> bool {
        self.lineno == other.lineno && self.filename == other.filename
    }
}

impl Eq for Frame {}

impl Hash for Frame {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.filename.hash(state);
        self.lineno.hash(state);
    }
}

impl PartialOrd for Frame {
    fn partial_cmp(&self, other: &Frame) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Frame {
    fn cmp(&self, other: &Frame) -> Ordering {
        (&*self.filename, self.lineno).cmp(&(&*other.filename, other.lineno))
    }
}

/// A call stack: Python's `tracemalloc.Traceback`.
///
/// Frames are stored most recent call first, as CPython's raw traces and our files hold them.
/// Python's `Traceback` sequence is oldest first; [`Traceback::oldest_first`] gives that order.
/// As in Python, two tracebacks are equal (and hash and order alike) when their frames are:
/// `total_nframe` says how deep the stack was, not where the block was allocated.
#[derive(Clone, Debug)]
pub struct Traceback {
    /// Frames, most recent call first.
    pub frames: Vec<Frame>,
    /// Depth of the stack before the traceback limit cut it: the frames shown before the cut
    /// (inlined calls included, hidden plumbing not) and those past the capture.
    pub total_nframe: u16,
}

impl Traceback {
    /// A traceback of `frames` (most recent first) with `total_nframe` equal to their number.
    pub fn new(frames: Vec<Frame>) -> Traceback {
        let total_nframe = frames.len().min(u16::MAX as usize) as u16;
        Traceback {
            frames,
            total_nframe,
        }
    }

    /// Frames in Python's sequence order: oldest call first.
    pub fn oldest_first(&self) -> impl DoubleEndedIterator<Item = &Frame> + '_ {
        self.frames.iter().rev()
    }
}

impl PartialOrd for Traceback {
    fn partial_cmp(&self, other: &Traceback) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Traceback {
    /// Python compares the oldest-first frame tuples.
    fn cmp(&self, other: &Traceback) -> Ordering {
        self.oldest_first().cmp(other.oldest_first())
    }
}

impl PartialEq for Traceback {
    fn eq(&self, other: &Traceback) -> bool {
        self.frames == other.frames
    }
}

impl Eq for Traceback {}

impl Hash for Traceback {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.frames.hash(state);
    }
}

/// The `total_nframe` of a stack of `total` frames, once its `captured` raw addresses resolved
/// into `shown` frames (inlined calls added, the allocator's and the runtime's plumbing hidden):
/// the frames shown, plus those past the capture, which were never seen. As in Python, a
/// traceback the limit did not cut has a `total_nframe` equal to its length.
pub fn shown_depth(shown: usize, captured: usize, total: u16) -> u16 {
    let past = usize::from(total).saturating_sub(captured);
    shown.saturating_add(past).min(usize::from(u16::MAX)) as u16
}

/// One live block: Python's `tracemalloc.Trace`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Trace {
    /// The heap the block belongs to.
    pub domain: u32,
    /// The block's size in bytes.
    pub size: u64,
    /// Index into [`Snapshot::tracebacks`].
    pub traceback: u32,
}

/// Turns code addresses into source locations.
pub trait Resolver {
    /// Pushes the frames at `address` onto `out`, innermost (inlined) first, and returns true;
    /// pushing none hides the address (tracer or allocator plumbing). Returns false, pushing
    /// nothing, when the address is unknown: the snapshot then shows [`Frame::unresolved`].
    fn resolve(&mut self, address: usize, out: &mut Vec<Frame>) -> bool;

    /// Pushes the frames a traceback shows for `address`: what [`Resolver::resolve`] finds, or
    /// [`Frame::unresolved`] when it knows nothing.
    fn frames_at(&mut self, address: usize, out: &mut Vec<Frame>) {
        let before = out.len();
        if !self.resolve(address, out) {
            out.truncate(before);
            out.push(Frame::unresolved(address));
        }
    }
}

/// A resolver that knows nothing: every frame shows as its address.
pub struct AddressesOnly;

impl Resolver for AddressesOnly {
    fn resolve(&mut self, _address: usize, _out: &mut Vec<Frame>) -> bool {
        false
    }
}

/// A snapshot of traced memory: Python's `tracemalloc.Snapshot`, analysed in [`crate::stats`]
/// and [`crate::filter`].
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Live blocks.
    pub traces: Vec<Trace>,
    /// Distinct tracebacks the traces point into.
    pub tracebacks: Vec<Traceback>,
    /// Raw code addresses of each traceback (parallel to `tracebacks`), most recent first; empty
    /// for snapshots that never had addresses (JSON files). Kept so that a snapshot taken on a
    /// device can be resolved later on the host.
    pub addresses: Vec<Vec<usize>>,
    /// The traceback limit tracing ran with (Python's `Snapshot.traceback_limit`).
    pub traceback_limit: u16,
    /// The tracer's counters when the snapshot was taken.
    pub counters: Counters,
    /// Bytes the tracer itself used (Python's `get_tracemalloc_memory()`).
    pub tracer_memory: u64,
    /// Mean bytes allocated between two sampled blocks; 0 when every block was traced. With
    /// sampling, statistics are estimates (see [`crate::sampling`]).
    pub sample_interval: u64,
    /// The GNU build id of the program whose code `addresses` point into (see
    /// [`crate::build_id`]), written by devices that know theirs; empty when not known. Only
    /// that build's debug info names the addresses rightly.
    pub build_id: Vec<u8>,
}

/// The verbatim copy of one tracer's arrays.
#[derive(Clone, Debug, Default)]
struct RawPart {
    slots: Vec<Slot>,
    entries: Vec<TracebackEntry>,
    frames: Vec<usize>,
    /// Copied by [`RawSnapshot::add_sharing`]: [`RawSnapshot::leave_out`] applies.
    shared: bool,
}

/// The state of one or more tracers, copied under their locks and not yet analysed.
#[derive(Clone, Debug, Default)]
pub struct RawSnapshot {
    parts: Vec<RawPart>,
    /// Buffers reserved (and already paged in) before the locks are taken; see
    /// [`RawSnapshot::reserve`].
    spare: RawPart,
    traceback_limit: u16,
    counters: Counters,
    tracer_memory: u64,
    sample_interval: u64,
    /// Addresses [`RawSnapshot::leave_out`] drops from the shared parts.
    left_out: HashSet<usize>,
}

impl RawSnapshot {
    /// An empty raw snapshot of tracing with `traceback_limit` frames.
    pub fn new(traceback_limit: u16) -> RawSnapshot {
        RawSnapshot {
            traceback_limit,
            ..RawSnapshot::default()
        }
    }

    /// Copies `tracer`'s arrays: a memcpy of its slots and used traceback arrays, nothing more.
    pub fn add(&mut self, tracer: &Tracer<'_>) {
        let (entries, frames) = tracer.tracebacks().raw_parts();
        self.parts.push(RawPart {
            slots: tracer.table().slots().to_vec(),
            entries: entries.to_vec(),
            frames: frames.to_vec(),
            shared: false,
        });
        self.counters.merge(tracer.counters());
        self.tracer_memory += tracer.memory_bytes() as u64;
    }

    /// Reserves room for the next part's `slots`, `entries` and `frames`, and touches it, so
    /// that the copy made under the tracers' locks neither allocates nor takes page faults.
    /// With a million traces, page faults on fresh memory were most of the lock-held time.
    pub fn reserve(&mut self, slots: usize, entries: usize, frames: usize) {
        fn touched<T: Copy>(fill: T, n: usize) -> Vec<T> {
            let mut v = alloc::vec![fill; n];
            v.clear();
            v
        }
        self.spare = RawPart {
            slots: touched(Slot::EMPTY, slots),
            entries: touched(TracebackEntry::EMPTY, entries),
            frames: touched(0, frames),
            shared: false,
        };
    }

    /// Copies tracers that record ids interned in one shared `tracebacks` store (see
    /// [`Tracer::record_alloc_with`]): their slots form one part with that store.
    pub fn add_sharing<'t>(
        &mut self,
        tracers: impl IntoIterator<Item = &'t Tracer<'t>>,
        tracebacks: &TracebackStore<'_>,
    ) {
        self.add_sharing_with(Vec::new(), tracers, tracebacks);
    }

    /// [`RawSnapshot::add_sharing`], with `traces` kept outside any tracer (the std adapter's
    /// shadow memory) in the same part: their ids are interned in `tracebacks` too, so the
    /// store must be read after them (ids are only ever appended). Their counts come from the
    /// traces themselves when the snapshot is resolved. The tracers' slots are appended to
    /// `traces`, so it should have room for them.
    pub fn add_sharing_with<'t>(
        &mut self,
        traces: Vec<Slot>,
        tracers: impl IntoIterator<Item = &'t Tracer<'t>>,
        tracebacks: &TracebackStore<'_>,
    ) {
        let (entries, frames) = tracebacks.raw_parts();
        let mut part = core::mem::take(&mut self.spare);
        if traces.capacity() > 0 {
            part.slots = traces; // else the buffer of `reserve`, already paged in
        }
        part.entries.extend_from_slice(entries);
        part.frames.extend_from_slice(frames);
        for tracer in tracers {
            part.slots.extend_from_slice(tracer.table().slots());
            self.counters.merge(tracer.counters());
            self.tracer_memory += tracer.memory_bytes() as u64;
        }
        self.tracer_memory += tracebacks.memory_bytes() as u64;
        part.shared = true;
        self.parts.push(part);
    }

    /// Leaves the blocks at `addrs` out of the parts copied by [`RawSnapshot::add_sharing`]:
    /// blocks the program has freed while their traces were still in the table when it was
    /// copied (an adapter that applies frees in batches), so that the snapshot shows what the
    /// program holds.
    pub fn leave_out(&mut self, addrs: &[usize]) {
        self.left_out.extend(addrs);
    }

    /// Overrides the summed peak (shards' peaks add up to more than the real peak; a sharded
    /// adapter keeps the exact one itself). The current size is always the sum of the traces.
    pub fn set_peak(&mut self, peak: u64) {
        self.counters.peak = peak;
    }

    /// Records that blocks were sampled, one per `interval` bytes on average.
    pub fn set_sample_interval(&mut self, interval: u64) {
        self.sample_interval = interval;
    }

    /// Adds bytes the adapter uses beyond the tracers' storage.
    pub fn add_tracer_memory(&mut self, bytes: u64) {
        self.tracer_memory += bytes;
    }

    /// Drops empty slots, merges tracebacks and resolves addresses into frames.
    pub fn resolve(self, resolver: &mut dyn Resolver) -> Snapshot {
        let mut snapshot = Snapshot {
            traceback_limit: self.traceback_limit,
            counters: self.counters,
            tracer_memory: self.tracer_memory,
            sample_interval: self.sample_interval,
            ..Snapshot::default()
        };
        // (domain, total_nframe, frames, overflow) -> index into snapshot.tracebacks
        let mut merged: HashMap<(u32, u16, &[usize], bool), u32> = HashMap::new();
        for part in &self.parts {
            // Entry id -> merged index, filled on first use.
            let mut map: Vec<u32> = alloc::vec![u32::MAX; part.entries.len()];
            for slot in part.slots.iter().filter(|s| s.is_occupied()) {
                if part.shared && !self.left_out.is_empty() && self.left_out.contains(&slot.addr())
                {
                    continue; // freed by the program
                }
                let id = slot.traceback().index() as usize;
                let Some(entry) = part.entries.get(id) else {
                    continue; // cannot happen: slots and entries were copied under one lock
                };
                if map[id] == u32::MAX {
                    let frames = &part.frames[entry.start()..entry.start() + entry.len()];
                    let overflow = id == TracebackId::OVERFLOW.index() as usize;
                    let key = (entry.domain(), entry.total_nframe(), frames, overflow);
                    let next = snapshot.tracebacks.len() as u32;
                    map[id] = *merged.entry(key).or_insert_with(|| {
                        let placeholder = match (overflow, frames.is_empty()) {
                            (true, _) => alloc::vec![Frame::store_full()],
                            (false, true) => alloc::vec![Frame::unknown()],
                            (false, false) => Vec::new(), // resolved below
                        };
                        snapshot.tracebacks.push(Traceback {
                            frames: placeholder,
                            total_nframe: entry.total_nframe(),
                        });
                        snapshot.addresses.push(frames.to_vec());
                        next
                    });
                }
                snapshot.traces.push(Trace {
                    domain: entry.domain(),
                    size: slot.size(),
                    traceback: map[id],
                });
            }
        }
        // The counters describe the traces kept, whatever the tracers' running sums said: those
        // may still count blocks left out above, or miss another thread's latest changes.
        let counters = &mut snapshot.counters;
        counters.traces = snapshot.traces.len() as u64;
        counters.current =
            scaled_total(snapshot.traces.iter().map(|t| t.size), self.sample_interval);
        counters.peak = counters.peak.max(counters.current);
        snapshot.resolve_addresses(resolver);
        snapshot
    }
}

impl Snapshot {
    /// The traceback of a trace.
    pub fn traceback_of(&self, trace: &Trace) -> &Traceback {
        &self.tracebacks[trace.traceback as usize]
    }

    /// Resolves the raw addresses again with `resolver` (a device snapshot read on the host with
    /// the firmware's debug info). Tracebacks without addresses are kept as they are.
    pub fn resolve_addresses(&mut self, resolver: &mut dyn Resolver) {
        // Unlimited: cannot fail.
        let _ = self.resolve_where(resolver, |_, _| true, usize::MAX);
    }

    /// Resolves with `resolver` the tracebacks that still show their raw addresses only, each
    /// frame [`Frame::unresolved`] (a device snapshot read on the host, with the firmware's debug
    /// info), and keeps the others: those were resolved when the snapshot was taken, and their
    /// addresses are a process's, at load addresses the resolver does not know. Returns how
    /// many distinct addresses were looked up and how many of them got a source line, so that a
    /// caller can tell a resolver that knows none of them (the wrong firmware).
    pub fn resolve_raw_addresses(&mut self, resolver: &mut dyn Resolver) -> (usize, usize) {
        self.resolve_where(resolver, shows_raw_addresses, usize::MAX)
            .unwrap_or_default()
    }

    /// [`Snapshot::resolve_raw_addresses`], refused with [`OverMemoryLimit`] once the frames
    /// would grow the snapshot by more than `max_memory` bytes: an address can stand for
    /// several inlined frames, and a forged file can repeat one address millions of times. The
    /// refusal comes before the memory is taken, and leaves the snapshot partly resolved.
    pub fn resolve_raw_addresses_within(
        &mut self,
        resolver: &mut dyn Resolver,
        max_memory: usize,
    ) -> Result<(usize, usize), OverMemoryLimit> {
        self.resolve_where(resolver, shows_raw_addresses, max_memory)
    }

    /// The distinct addresses that [`Snapshot::resolve_raw_addresses`] would look up, in the
    /// order they first appear.
    pub fn raw_addresses(&self) -> Vec<usize> {
        let mut seen = HashSet::new();
        self.tracebacks
            .iter()
            .zip(&self.addresses)
            .filter(|(traceback, addresses)| shows_raw_addresses(traceback, addresses))
            .flat_map(|(_, addresses)| addresses.iter().copied())
            .filter(|&address| seen.insert(address))
            .collect()
    }

    /// Whether some traceback still shows its raw addresses only (what
    /// [`Snapshot::resolve_raw_addresses`] would resolve).
    pub fn has_raw_addresses(&self) -> bool {
        self.tracebacks
            .iter()
            .zip(&self.addresses)
            .any(|(traceback, addresses)| {
                !addresses.is_empty() && shows_raw_addresses(traceback, addresses)
            })
    }

    /// Resolves the tracebacks with addresses that `wanted` accepts, growing the snapshot by
    /// at most `max_memory` bytes; returns the distinct addresses looked up and those of them
    /// with a source line.
    fn resolve_where(
        &mut self,
        resolver: &mut dyn Resolver,
        wanted: impl Fn(&Traceback, &[usize]) -> bool,
        max_memory: usize,
    ) -> Result<(usize, usize), OverMemoryLimit> {
        let mut budget = MemoryBudget::new(max_memory);
        let frame = core::mem::size_of::<Frame>();
        let mut cache: HashMap<usize, Vec<Frame>> = HashMap::new();
        for (traceback, addresses) in self.tracebacks.iter_mut().zip(&self.addresses) {
            if addresses.is_empty() || !wanted(traceback, addresses) {
                continue;
            }
            // `total_nframe` counts raw frames until the first resolution names them (a fresh
            // copy's tracebacks have no frames yet, a device's show their raw addresses), and
            // the frames shown after: a second resolution keeps it.
            let first = traceback.frames.is_empty() || shows_raw_addresses(traceback, addresses);
            let mut count = 0usize;
            for &address in addresses {
                let resolved = match cache.entry(address) {
                    Entry::Occupied(known) => known.into_mut(),
                    Entry::Vacant(new) => {
                        // One address's frames are few (its inlining depth): charged once made,
                        // with their names (which the resolver may share: then charged more
                        // than once).
                        let mut found = Vec::new();
                        resolver.frames_at(address, &mut found);
                        let names: usize = found.iter().map(Frame::name_bytes).sum();
                        let bytes = hash_map_entry_bytes::<usize, Vec<Frame>>()
                            .saturating_add(found.capacity().saturating_mul(frame))
                            .saturating_add(names);
                        budget.take(bytes)?;
                        new.insert(found)
                    }
                };
                count = count.saturating_add(resolved.len());
            }
            // The new frames replace the old ones, which are given back once replaced.
            budget.take(count.saturating_mul(frame))?;
            let mut frames = Vec::with_capacity(count);
            for address in addresses {
                frames.extend(cache[address].iter().cloned());
            }
            let old = core::mem::replace(&mut traceback.frames, frames);
            budget.give_back(old.capacity() * frame);
            if first {
                traceback.total_nframe =
                    shown_depth(count, addresses.len(), traceback.total_nframe);
            }
        }
        let named = cache
            .values()
            .filter(|frames| frames.iter().any(|f| f.lineno != 0))
            .count();
        Ok((cache.len(), named))
    }
}

/// Heap a step may still take, counted down by code that bounds what data from elsewhere (a
/// snapshot file) makes it allocate: each allocation is taken before it is made.
pub(crate) struct MemoryBudget {
    left: usize,
    limit: usize,
}

impl MemoryBudget {
    pub(crate) fn new(limit: usize) -> MemoryBudget {
        MemoryBudget { left: limit, limit }
    }

    /// Takes `bytes`, or says they would pass the limit.
    pub(crate) fn take(&mut self, bytes: usize) -> Result<(), OverMemoryLimit> {
        self.left = self.left.checked_sub(bytes).ok_or(OverMemoryLimit {
            limit: self.limit as u64,
        })?;
        Ok(())
    }

    /// Gives back `bytes`, once freed (memory that was there before the step began too: a
    /// step bounds its growth).
    pub(crate) fn give_back(&mut self, bytes: usize) {
        self.left = self.left.saturating_add(bytes);
    }
}

/// Bytes a hash map of `K` to `V` takes per entry at worst, for a caller bounding its memory:
/// a slot and its control byte, in a table at most 7/8 full whose size is a power of two (up to
/// twice the entries), while it grows into a table twice as big: four slots in all.
pub(crate) const fn hash_map_entry_bytes<K, V>() -> usize {
    4 * core::mem::size_of::<(K, V, u8)>()
}

/// Bytes an `Arc<str>` of `len` bytes takes on the heap: the text and the two counts.
pub(crate) const fn shared_str_bytes(len: usize) -> usize {
    len.saturating_add(2 * core::mem::size_of::<usize>())
}

/// A snapshot's frames would grow by more than the memory the caller allows
/// ([`Snapshot::resolve_raw_addresses_within`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OverMemoryLimit {
    /// The limit, in bytes.
    pub limit: u64,
}

impl core::fmt::Display for OverMemoryLimit {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "naming the addresses would take more than {} MiB of memory, the limit",
            self.limit.div_ceil(1 << 20)
        )
    }
}

/// Whether `traceback` shows nothing but its raw `addresses`, each as [`Frame::unresolved`].
fn shows_raw_addresses(traceback: &Traceback, addresses: &[usize]) -> bool {
    traceback.frames.len() == addresses.len()
        && traceback
            .frames
            .iter()
            .zip(addresses)
            .all(|(frame, &address)| *frame == Frame::unresolved(address))
}

/// Builds a snapshot from plain data, for tests and decoders.
pub fn snapshot_from_traces(
    traceback_limit: u16,
    traces: impl IntoIterator<Item = (u32, u64, Traceback)>,
) -> Snapshot {
    let mut snapshot = Snapshot {
        traceback_limit,
        ..Snapshot::default()
    };
    // Equal tracebacks of different depths are kept apart: each trace keeps its own.
    let mut index: HashMap<(Vec<Frame>, u16), u32> = HashMap::new();
    for (domain, size, traceback) in traces {
        let next = snapshot.tracebacks.len() as u32;
        let key = (traceback.frames.clone(), traceback.total_nframe);
        let id = *index.entry(key).or_insert_with(|| {
            snapshot.tracebacks.push(traceback);
            snapshot.addresses.push(Vec::new());
            next
        });
        snapshot.counters.current = snapshot.counters.current.saturating_add(size);
        snapshot.counters.traces += 1;
        snapshot.traces.push(Trace {
            domain,
            size,
            traceback: id,
        });
    }
    snapshot.counters.peak = snapshot.counters.current;
    snapshot
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampling::scaled_size;
    use crate::TracerArrays;

    type Arrays = TracerArrays<64, 8, 32>;

    #[test]
    fn a_second_resolution_keeps_the_depth() {
        /// Each address a call with one inlined callee: two frames.
        struct Inlining;
        impl Resolver for Inlining {
            fn resolve(&mut self, address: usize, out: &mut Vec<Frame>) -> bool {
                out.push(Frame::new("inlined.rs", address as u32));
                out.push(Frame::new("caller.rs", address as u32));
                true
            }
        }
        let addresses = alloc::vec![0x100usize, 0x200];
        let mut snapshot = snapshot_from_traces(
            16,
            [(
                0,
                64,
                Traceback {
                    frames: addresses.iter().map(|&a| Frame::unresolved(a)).collect(),
                    total_nframe: 3, // one frame past the capture
                },
            )],
        );
        snapshot.addresses[0] = addresses;
        let depth = |s: &Snapshot| (s.tracebacks[0].frames.len(), s.tracebacks[0].total_nframe);
        snapshot.resolve_addresses(&mut Inlining);
        assert_eq!(depth(&snapshot), (4, 5));
        snapshot.resolve_addresses(&mut Inlining);
        assert_eq!(depth(&snapshot), (4, 5));
        snapshot.resolve_raw_addresses(&mut Inlining);
        assert_eq!(depth(&snapshot), (4, 5));
    }

    #[test]
    fn tracebacks_are_equal_by_their_frames_as_in_python() {
        let frames = alloc::vec![Frame::new("b.rs", 2), Frame::new("a.rs", 1)];
        let deep = Traceback {
            frames: frames.clone(),
            total_nframe: 10,
        };
        let shallow = Traceback::new(frames);
        assert_eq!(deep, shallow);
        assert_eq!(deep.cmp(&shallow), Ordering::Equal);
        let set: HashSet<Traceback> = [deep.clone(), shallow].into_iter().collect();
        assert_eq!(set.len(), 1);
        // A statistic's key is the trace's traceback, whatever its depth; each trace keeps its
        // own depth.
        let snapshot = snapshot_from_traces(
            2,
            [
                (0, 64, deep.clone()),
                (0, 32, Traceback::new(deep.frames.clone())),
            ],
        );
        let stats = snapshot
            .statistics(crate::KeyType::Traceback, false)
            .unwrap();
        assert_eq!(stats.len(), 1);
        assert_eq!(
            stats[0].traceback,
            *snapshot.traceback_of(&snapshot.traces[0])
        );
        let depths: Vec<u16> = snapshot
            .traces
            .iter()
            .map(|t| snapshot.traceback_of(t).total_nframe)
            .collect();
        assert_eq!(depths, [10, 2]);
    }

    #[test]
    fn left_out_blocks_leave_only_the_shared_parts() {
        // Two shards sharing one store (the std adapter's layout), and a tracer of its own.
        let (mut a, mut b, mut store_arrays, mut own) =
            (Arrays::new(), Arrays::new(), Arrays::new(), Arrays::new());
        let mut store = TracebackStore::new(store_arrays.storage().tracebacks);
        let id = store.intern(0, &[0x1000, 0x2000], 2);
        let (mut shard_a, mut shard_b) = (Tracer::new(a.storage()), Tracer::new(b.storage()));
        for (i, addr) in [0x10, 0x20, 0x30].into_iter().enumerate() {
            shard_a.record_alloc_with(0, addr, 100 + i, id);
        }
        shard_b.record_alloc_with(0, 0x40, 200, id);
        let mut foreign = Tracer::new(own.storage());
        foreign.record_alloc(7, 0x20, 300, &[0x3000], 1);

        let mut raw = RawSnapshot::new(4);
        raw.add_sharing([&shard_a, &shard_b], &store);
        raw.add(&foreign);
        raw.leave_out(&[0x40, 0x20, 0x99]);
        let snapshot = raw.resolve(&mut AddressesOnly);

        let mut sizes: Vec<(u32, u64)> =
            snapshot.traces.iter().map(|t| (t.domain, t.size)).collect();
        sizes.sort_unstable();
        // 0x20 is left out of the shards but not out of domain 7, which shares the address.
        assert_eq!(sizes, [(0, 100), (0, 102), (7, 300)]);
        assert_eq!(snapshot.counters.traces, 3);
        assert_eq!(snapshot.counters.current, 100 + 102 + 300);
    }

    #[test]
    fn counters_are_the_sums_of_the_traces_kept() {
        let (mut a, mut store_arrays) = (Arrays::new(), Arrays::new());
        let mut store = TracebackStore::new(store_arrays.storage().tracebacks);
        let id = store.intern(0, &[0x1000], 1);
        let mut shard = Tracer::new(a.storage());
        shard.record_alloc_with(0, 0x10, 64, id);
        shard.record_alloc_with(0, 0x20, 4096, id);
        let interval = 512 * 1024;
        let mut raw = RawSnapshot::new(4);
        raw.add_sharing([&shard], &store);
        raw.set_peak(1 << 30);
        raw.set_sample_interval(interval);
        raw.leave_out(&[0x20]);
        let snapshot = raw.resolve(&mut AddressesOnly);
        // Sampled: a trace stands for the bytes its sampling probability scales it to.
        assert_eq!(snapshot.counters.current, scaled_size(64, interval));
        assert_eq!(snapshot.counters.traces, 1);
        assert_eq!(
            snapshot.counters.peak,
            1 << 30,
            "the peak was reached before"
        );

        let mut raw = RawSnapshot::new(4);
        raw.add_sharing([&shard], &store);
        raw.set_peak(100);
        let snapshot = raw.resolve(&mut AddressesOnly);
        assert_eq!(snapshot.counters.current, 64 + 4096);
        assert_eq!(
            snapshot.counters.peak,
            64 + 4096,
            "never below the current size"
        );
    }

    #[test]
    fn nothing_left_out_keeps_every_trace() {
        let (mut a, mut store_arrays) = (Arrays::new(), Arrays::new());
        let mut store = TracebackStore::new(store_arrays.storage().tracebacks);
        let id = store.intern(0, &[0x1000], 1);
        let mut shard = Tracer::new(a.storage());
        for addr in 1..=40usize {
            shard.record_alloc_with(0, addr * 16, addr, id);
        }
        let mut raw = RawSnapshot::new(4);
        raw.add_sharing([&shard], &store);
        raw.leave_out(&[]);
        let snapshot = raw.resolve(&mut AddressesOnly);
        assert_eq!(snapshot.traces.len(), 40);
        assert_eq!(snapshot.counters.traces, 40);
    }
}
