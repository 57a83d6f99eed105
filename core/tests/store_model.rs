//! Model test: the traceback store driven by random interns and growth, side by side with a
//! `HashMap` from stack to id. Stacks come from a small alphabet in which many share their
//! callers, so that index groups fill and spill over to the whole index; growth rebuilds the
//! index, or keeps it when growing fails.

use std::collections::HashMap;

use proptest::prelude::*;
use tracemalloc_core::traceback::{Index, TracebackStore};
use tracemalloc_core::{TracebackEntry, TracebackId, TracebackStorage};

#[derive(Clone, Debug)]
enum Op {
    Intern {
        domain: u32,
        frames: Vec<usize>,
        extra_depth: u16,
    },
    /// Grow to `factor` times the entries and frames; `fails` keeps the old index (as a growth
    /// whose index allocation failed, after entries and frames were reallocated).
    Grow { factor: usize, fails: bool },
}

/// Innermost frames vary over a few values, outer frames over fewer: stacks that differ only
/// in their top frames share a group of the index.
fn stack() -> impl Strategy<Value = Vec<usize>> {
    (
        proptest::collection::vec(0usize..6, 0..4),
        proptest::collection::vec(0usize..2, 0..5),
    )
        .prop_map(|(top, callers)| {
            let top = top.into_iter().map(|f| 0x1000 + 16 * f);
            top.chain(callers.into_iter().map(|f| 0x9000 + 16 * f))
                .collect()
        })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        12 => (0u32..2, stack(), 0u16..2).prop_map(|(domain, frames, extra_depth)| Op::Intern {
            domain,
            frames,
            extra_depth,
        }),
        1 => (2usize..4, any::<bool>()).prop_map(|(factor, fails)| Op::Grow { factor, fails }),
    ]
}

fn storage(entries: usize, frames: usize) -> TracebackStorage<'static> {
    TracebackStorage {
        entries: vec![TracebackEntry::EMPTY; entries].leak(),
        index: vec![0u64; (entries * 2).next_power_of_two()].leak(),
        frames: vec![0usize; frames].leak(),
    }
}

/// What the std adapter's growth does: entries and frames keep their contents in longer
/// arrays; the index is new (garbage, to be rebuilt) or, when growth failed, the old one.
fn grow(store: &mut TracebackStore<'static>, factor: usize, fails: bool) {
    let (old, held) = store.take_storage();
    let bigger = storage(old.entries.len() * factor, old.frames.len() * factor);
    bigger.entries[..old.entries.len()].copy_from_slice(old.entries);
    bigger.frames[..old.frames.len()].copy_from_slice(old.frames);
    if fails {
        let kept = TracebackStorage {
            index: old.index,
            ..bigger
        };
        store.put_back(kept, held, Index::Kept);
    } else {
        bigger.index.fill(u64::MAX);
        store.put_back(bigger, held, Index::Rebuild);
    }
}

type Key = (u32, Vec<usize>, u16);

fn run(ops: &[Op]) -> Result<(), TestCaseError> {
    let mut store = TracebackStore::new(storage(12, 24));
    let mut model: HashMap<Key, TracebackId> = HashMap::new();
    for op in ops {
        match op {
            Op::Intern {
                domain,
                frames,
                extra_depth,
            } => {
                let total = frames.len() as u16 + extra_depth;
                let key = (*domain, frames.clone(), total);
                let full = store.len() == store.entry_capacity()
                    || store.frame_capacity() - store.frame_count() < frames.len();
                let id = store.intern(*domain, frames, total);
                match model.get(&key) {
                    Some(&known) => prop_assert_eq!(id, known, "{:?} changed id", key),
                    None if full => prop_assert_eq!(id, TracebackId::OVERFLOW),
                    None => {
                        prop_assert_ne!(id, TracebackId::OVERFLOW, "room left for {:?}", key);
                        prop_assert!(
                            !model.values().any(|&other| other == id),
                            "{:?} got the id of another stack",
                            key
                        );
                        model.insert(key, id);
                    }
                }
            }
            // Past a few hundred stacks the alphabet has few new ones left. The arrays' own
            // size is bounded too: a failed growth keeps the index, and with it the capacity,
            // while the arrays grow (a run of such growths once took 24 GB and the OOM killer).
            Op::Grow { factor, fails }
                if store.entry_capacity() < 300 && store.frame_capacity() < 1 << 16 =>
            {
                grow(&mut store, *factor, *fails)
            }
            Op::Grow { .. } => {}
        }
        prop_assert_eq!(
            store.len(),
            model.len() + 1,
            "the overflow entry and one per stack"
        );
    }
    for ((domain, frames, total), &id) in &model {
        let got = store.get(id);
        prop_assert_eq!(
            (got.domain, got.frames, got.total_nframe),
            (*domain, &frames[..], *total)
        );
        prop_assert_eq!(store.intern(*domain, frames, *total), id);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn the_store_matches_a_hashmap(ops in proptest::collection::vec(op(), 1..300)) {
        run(&ops)?;
    }
}

/// Growths that fail, one after another, keep the capacity where it was while the arrays
/// triple each time: without a bound on the arrays, thirty of them asked for 24 × 3^30 frames.
#[test]
fn failed_growths_in_a_row_stay_bounded() {
    let mut ops = vec![
        Op::Grow {
            factor: 3,
            fails: true,
        };
        30
    ];
    ops.extend((0..6).map(|f| Op::Intern {
        domain: 0,
        frames: vec![0x1000 + 16 * f],
        extra_depth: 0,
    }));
    run(&ops).unwrap();
}
