//! Model tests: the trace table and the tracer driven by random operation lists side by side
//! with a `BTreeMap`, compared after every step. Small tables and a small address space make
//! collisions, replacements and a full table common.

use std::collections::BTreeMap;

use proptest::prelude::*;
use tracemalloc_core::table::{InsertError, Inserted, Placement, MAX_TRACED_SIZE};
use tracemalloc_core::{
    Counters, Recorded, Slot, TraceTable, TracebackEntry, TracebackId, TracebackStorage, Tracer,
    TracerStorage,
};

/// Tracebacks 1..=6 of the table test: odd ids belong to domain 1, even ones to domain 0.
fn domain_of(id: TracebackId) -> u32 {
    id.index() & 1
}

#[derive(Clone, Debug)]
enum TableOp {
    Insert {
        addr: usize,
        size: u64,
        tb: u32,
    },
    Remove {
        domain: u32,
        addr: usize,
    },
    Realloc {
        old: usize,
        new: usize,
        size: u64,
        tb: u32,
    },
    Get {
        domain: u32,
        addr: usize,
    },
}

fn addr() -> impl Strategy<Value = usize> {
    // Mostly 16-byte aligned addresses from a small range; sometimes 0, never traceable.
    prop_oneof![20 => (1usize..24).prop_map(|a| a * 16), 1 => Just(0usize)]
}

fn size() -> impl Strategy<Value = u64> {
    prop_oneof![
        20 => 0u64..10_000,
        1 => Just(MAX_TRACED_SIZE),
        1 => Just(MAX_TRACED_SIZE + 1),
    ]
}

fn table_op() -> impl Strategy<Value = TableOp> {
    prop_oneof![
        4 => (addr(), size(), 1u32..=6).prop_map(|(addr, size, tb)| TableOp::Insert { addr, size, tb }),
        2 => (0u32..2, addr()).prop_map(|(domain, addr)| TableOp::Remove { domain, addr }),
        2 => (addr(), addr(), size(), 1u32..=6)
            .prop_map(|(old, new, size, tb)| TableOp::Realloc { old, new, size, tb }),
        1 => (0u32..2, addr()).prop_map(|(domain, addr)| TableOp::Get { domain, addr }),
    ]
}

type Model = BTreeMap<(u32, usize), (u64, u32)>;

/// The model's insert: what the table must answer, applied to the model.
fn model_insert(
    model: &mut Model,
    limit: usize,
    addr: usize,
    size: u64,
    tb: u32,
) -> Result<Inserted, InsertError> {
    if addr == 0 || size > MAX_TRACED_SIZE {
        return Err(InsertError::Unrepresentable);
    }
    let key = (tb & 1, addr);
    match model.get(&key) {
        Some(&(old_size, _)) => {
            model.insert(key, (size, tb));
            Ok(Inserted::Replaced { old_size })
        }
        None if model.len() == limit => Err(InsertError::Full),
        None => {
            model.insert(key, (size, tb));
            Ok(Inserted::New)
        }
    }
}

fn check_table(table: &TraceTable<'_>, model: &Model) {
    assert_eq!(table.len(), model.len());
    for (&(domain, addr), &(size, tb)) in model {
        let slot = table
            .get(addr, |id| domain_of(id) == domain)
            .unwrap_or_else(|| panic!("{addr:#x} in domain {domain} lost"));
        assert_eq!((slot.size(), slot.traceback().index()), (size, tb));
    }
    let mut live: Vec<_> = table
        .iter()
        .map(|s| {
            (
                (domain_of(s.traceback()), s.addr()),
                (s.size(), s.traceback().index()),
            )
        })
        .collect();
    live.sort();
    assert_eq!(
        live,
        model.iter().map(|(k, v)| (*k, *v)).collect::<Vec<_>>()
    );
}

fn run_table(slot_count: usize, placement: Placement, ops: &[TableOp]) {
    let mut storage = vec![Slot::EMPTY; slot_count];
    let mut table = TraceTable::with_placement(&mut storage, placement);
    let limit = table.limit();
    let mut model = Model::new();
    for op in ops {
        match *op {
            TableOp::Insert { addr, size, tb } => {
                let expected = model_insert(&mut model, limit, addr, size, tb);
                let id = TracebackId::from_index(tb);
                let got = table.insert(addr, size, id, |old| domain_of(old) == tb & 1);
                assert_eq!(got, expected, "{op:?}");
            }
            TableOp::Remove { domain, addr } => {
                let expected = model.remove(&(domain, addr));
                let got = table.remove(addr, |id| domain_of(id) == domain);
                assert_eq!(
                    got.map(|s| (s.size(), s.traceback().index())),
                    expected,
                    "{op:?}"
                );
            }
            TableOp::Realloc { old, new, size, tb } => {
                let domain = tb & 1;
                let expected = model.remove(&(domain, old));
                let got = table.remove(old, |id| domain_of(id) == domain);
                assert_eq!(got.map(|s| s.size()), expected.map(|e| e.0), "{op:?}");
                let expected = model_insert(&mut model, limit, new, size, tb);
                let id = TracebackId::from_index(tb);
                let got = table.insert(new, size, id, |old| domain_of(old) == domain);
                assert_eq!(got, expected, "{op:?}");
            }
            TableOp::Get { domain, addr } => {
                let got = table.get(addr, |id| domain_of(id) == domain);
                assert_eq!(
                    got.map(|s| (s.size(), s.traceback().index())),
                    model.get(&(domain, addr)).copied(),
                    "{op:?}"
                );
            }
        }
        check_table(&table, &model);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// 8 slots: at most 6 traces, so the full table is hit constantly.
    #[test]
    fn small_table_matches_a_btreemap(ops in proptest::collection::vec(table_op(), 1..200)) {
        for placement in [Placement::Packed, Placement::Spaced] {
            run_table(8, placement, &ops);
        }
    }

    /// 64 slots: long probe runs and backward-shift deletion across wrap-around.
    #[test]
    fn larger_table_matches_a_btreemap(ops in proptest::collection::vec(table_op(), 1..400)) {
        for placement in [Placement::Packed, Placement::Spaced] {
            run_table(64, placement, &ops);
        }
    }

    /// Migrating mid-sequence keeps every trace and the table keeps matching the model.
    #[test]
    fn migrated_table_matches_a_btreemap(
        before in proptest::collection::vec(table_op(), 1..100),
        after in proptest::collection::vec(table_op(), 1..100),
        spaced in any::<bool>(),
    ) {
        let mut small = vec![Slot::EMPTY; 8];
        let mut big = vec![Slot::EMPTY; 32];
        let placement = if spaced { Placement::Spaced } else { Placement::Packed };
        let mut table = TraceTable::with_placement(&mut small, placement);
        let mut model = Model::new();
        for op in &before {
            if let TableOp::Insert { addr, size, tb } = *op {
                let expected = model_insert(&mut model, table.limit(), addr, size, tb);
                let got = table.insert(addr, size, TracebackId::from_index(tb), |old| domain_of(old) == tb & 1);
                prop_assert_eq!(got, expected);
            }
        }
        prop_assert!(table.migrate(&mut big).is_ok());
        prop_assert_eq!(table.placement(), placement);
        check_table(&table, &model);
        let limit = table.limit();
        for op in &after {
            if let TableOp::Insert { addr, size, tb } = *op {
                let expected = model_insert(&mut model, limit, addr, size, tb);
                let got = table.insert(addr, size, TracebackId::from_index(tb), |old| domain_of(old) == tb & 1);
                prop_assert_eq!(got, expected);
            }
            check_table(&table, &model);
        }
    }
}

#[derive(Clone, Debug)]
enum TracerOp {
    Alloc {
        domain: u32,
        addr: usize,
        size: usize,
        site: usize,
    },
    Free {
        domain: u32,
        addr: usize,
    },
    Realloc {
        domain: u32,
        old: usize,
        new: usize,
        size: usize,
        site: usize,
    },
    ResetPeak,
    Clear,
}

fn tracer_op() -> impl Strategy<Value = TracerOp> {
    let size = prop_oneof![20 => 0usize..5000, 1 => Just(usize::MAX)];
    prop_oneof![
        6 => (0u32..3, addr(), size.clone(), 0usize..4)
            .prop_map(|(domain, addr, size, site)| TracerOp::Alloc { domain, addr, size, site }),
        4 => (0u32..3, addr()).prop_map(|(domain, addr)| TracerOp::Free { domain, addr }),
        3 => (0u32..3, addr(), addr(), size, 0usize..4).prop_map(|(domain, old, new, size, site)| {
            TracerOp::Realloc { domain, old, new, size, site }
        }),
        1 => Just(TracerOp::ResetPeak),
        1 => Just(TracerOp::Clear),
    ]
}

/// A trivially correct tracer.
#[derive(Default)]
struct TracerModel {
    live: BTreeMap<(u32, usize), u64>,
    counters: Counters,
    limit: usize,
}

impl TracerModel {
    fn alloc(&mut self, domain: u32, addr: usize, size: usize) -> Recorded {
        let size = size as u64;
        let untraced = addr == 0
            || size > MAX_TRACED_SIZE
            || (!self.live.contains_key(&(domain, addr)) && self.live.len() == self.limit);
        if untraced {
            // A trace at the key goes: the block replaces it, untraced.
            self.free(domain, addr);
            self.counters.untraced_blocks += 1;
            self.counters.untraced_bytes = self.counters.untraced_bytes.saturating_add(size);
            return Recorded::Untraced;
        }
        if let Some(old) = self.live.insert((domain, addr), size) {
            self.counters.current -= old;
        } else {
            self.counters.traces += 1;
        }
        self.counters.current += size;
        self.counters.peak = self.counters.peak.max(self.counters.current);
        Recorded::Traced
    }

    fn free(&mut self, domain: u32, addr: usize) -> Option<u64> {
        let size = self.live.remove(&(domain, addr))?;
        self.counters.current -= size;
        self.counters.traces -= 1;
        Some(size)
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn tracer_counters_match_a_model(ops in proptest::collection::vec(tracer_op(), 1..300)) {
        let mut slots = vec![Slot::EMPTY; 16];
        let mut entries = vec![TracebackEntry::EMPTY; 64];
        let mut index = vec![0u64; 128];
        let mut frames = vec![0usize; 256];
        let mut tracer = Tracer::new(TracerStorage {
            slots: &mut slots,
            tracebacks: TracebackStorage {
                entries: &mut entries,
                index: &mut index,
                frames: &mut frames,
            },
        });
        let mut model = TracerModel { limit: tracer.table().limit(), ..TracerModel::default() };
        let stacks: [&[usize]; 4] = [&[0x100], &[0x200, 0x100], &[0x300, 0x200, 0x100], &[]];
        for op in &ops {
            match *op {
                TracerOp::Alloc { domain, addr, size, site } => {
                    let frames = stacks[site];
                    let got = tracer.record_alloc(domain, addr, size, frames, frames.len() as u16);
                    prop_assert_eq!(got, model.alloc(domain, addr, size), "{:?}", op);
                }
                TracerOp::Free { domain, addr } => {
                    prop_assert_eq!(tracer.record_free(domain, addr), model.free(domain, addr));
                }
                TracerOp::Realloc { domain, old, new, size, site } => {
                    let frames = stacks[site];
                    let got = tracer.record_realloc(domain, old, new, size, frames, frames.len() as u16);
                    if old != new {
                        model.free(domain, old);
                    }
                    prop_assert_eq!(got, model.alloc(domain, new, size), "{:?}", op);
                    if got == Recorded::Traced {
                        let (size_now, tb) = tracer.trace(domain, new).unwrap();
                        prop_assert_eq!(size_now, size as u64);
                        prop_assert_eq!(tb.frames, frames);
                        prop_assert_eq!(tb.domain, domain);
                    }
                }
                TracerOp::ResetPeak => {
                    tracer.reset_peak();
                    model.counters.peak = model.counters.current;
                }
                TracerOp::Clear => {
                    tracer.clear();
                    model.live.clear();
                    model.counters = Counters::default();
                }
            }
            prop_assert_eq!(*tracer.counters(), model.counters, "after {:?}", op);
            prop_assert_eq!(tracer.table().len(), model.live.len());
            prop_assert_eq!(tracer.table_is_full(), model.live.len() == model.limit);
            for (&(domain, addr), &size) in &model.live {
                prop_assert_eq!(tracer.trace(domain, addr).map(|t| t.0), Some(size));
            }
        }
    }
}
