//! Statistics and diffs: Python's `Snapshot.statistics()` and `Snapshot.compare_to()`.
//!
//! Traces are grouped by the most recent frame's file ([`KeyType::Filename`], reported as line
//! 0), by the most recent frame ([`KeyType::Lineno`]) or by the whole traceback
//! ([`KeyType::Traceback`]), and sorted exactly as CPython sorts them: biggest first, ties broken
//! by count and then by traceback, all descending. A trace without frames groups under
//! `<unknown>:0`, as CPython reports it.
//!
//! Grouping first sums sizes and counts per distinct traceback (an array indexed by traceback,
//! no hashing) and only then maps each traceback to its key, so a million traces from a few
//! thousand call sites cost a million additions and a few thousand hash lookups.
//!
//! **One deliberate difference from CPython:** in cumulative mode a trace counts once per key.
//! CPython adds a trace to a file's total once per frame of the trace in that file (and to a
//! line's total once per recursive call on it), so the cumulative sizes can add up to more than
//! everything allocated; here a trace whose stack passes through `src/a.rs` three times adds its
//! size and a count of one to `src/a.rs` once.

use alloc::vec::Vec;
use core::fmt;
use core::hash::{Hash, Hasher};
use core::str::FromStr;

use hashbrown::HashMap;

use crate::sampling::sample_weight;
use crate::snapshot::{Frame, Snapshot, Traceback};

/// How traces are grouped: Python's `key_type` argument.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyType {
    /// By the most recent frame's file (`'filename'`).
    Filename,
    /// By the most recent frame's file and line (`'lineno'`).
    Lineno,
    /// By the whole traceback (`'traceback'`); not allowed in cumulative mode.
    Traceback,
}

impl KeyType {
    /// Python's name for the key type.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyType::Filename => "filename",
            KeyType::Lineno => "lineno",
            KeyType::Traceback => "traceback",
        }
    }
}

impl FromStr for KeyType {
    type Err = StatsError;

    /// Parses Python's names: `filename`, `lineno`, `traceback`.
    fn from_str(s: &str) -> Result<KeyType, StatsError> {
        match s {
            "filename" => Ok(KeyType::Filename),
            "lineno" => Ok(KeyType::Lineno),
            "traceback" => Ok(KeyType::Traceback),
            _ => Err(StatsError::UnknownKeyType),
        }
    }
}

/// Why statistics could not be computed: Python's `ValueError`s.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatsError {
    /// Cumulative mode only works with [`KeyType::Filename`] and [`KeyType::Lineno`].
    CumulativeTraceback,
    /// A key type name other than `filename`, `lineno` or `traceback`.
    UnknownKeyType,
}

impl fmt::Display for StatsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StatsError::CumulativeTraceback => {
                f.write_str("cumulative mode cannot be used with key type 'traceback'")
            }
            StatsError::UnknownKeyType => {
                f.write_str("unknown key type: expected 'filename', 'lineno' or 'traceback'")
            }
        }
    }
}

/// Memory allocated at one key: Python's `tracemalloc.Statistic`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Statistic {
    /// The key: one frame (line 0 for [`KeyType::Filename`]) or a whole traceback.
    pub traceback: Traceback,
    /// Bytes of the traces grouped here.
    pub size: u64,
    /// Number of traces grouped here.
    pub count: u64,
}

/// The change at one key between two snapshots: Python's `tracemalloc.StatisticDiff`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct StatisticDiff {
    /// The key: one frame (line 0 for [`KeyType::Filename`]) or a whole traceback.
    pub traceback: Traceback,
    /// Bytes in the new snapshot.
    pub size: u64,
    /// Bytes in the new snapshot minus bytes in the old one.
    pub size_diff: i64,
    /// Traces in the new snapshot.
    pub count: u64,
    /// Traces in the new snapshot minus traces in the old one.
    pub count_diff: i64,
}

/// A group key borrowing the snapshot's frames. Equality follows Python: files by name, lines
/// and tracebacks by `(filename, lineno)` of each frame.
#[derive(Clone, Copy, Debug)]
enum Key<'a> {
    File(&'a Frame),
    Line(&'a Frame),
    Stack(&'a [Frame]),
}

impl PartialEq for Key<'_> {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Key::File(a), Key::File(b)) => a.filename == b.filename,
            (Key::Line(a), Key::Line(b)) => a == b,
            (Key::Stack(a), Key::Stack(b)) => a == b,
            _ => false,
        }
    }
}

impl Eq for Key<'_> {}

impl Hash for Key<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        match self {
            Key::File(frame) => frame.filename.hash(state),
            Key::Line(frame) => frame.hash(state),
            Key::Stack(frames) => frames.hash(state),
        }
    }
}

impl Key<'_> {
    fn to_traceback(self) -> Traceback {
        match self {
            Key::File(frame) => Traceback::new(alloc::vec![Frame {
                filename: frame.filename.clone(),
                lineno: 0,
                function: None,
            }]),
            Key::Line(frame) => Traceback::new(alloc::vec![frame.clone()]),
            Key::Stack(frames) => Traceback::new(frames.to_vec()),
        }
    }
}

struct Group<'a> {
    key: Key<'a>,
    size: u64,
    count: u64,
    /// The last traceback counted here, so a cumulative trace counts once per key.
    last_traceback: usize,
}

#[derive(Default)]
struct Grouped<'a> {
    groups: Vec<Group<'a>>,
    index: HashMap<Key<'a>, usize>,
}

impl<'a> Grouped<'a> {
    fn add(&mut self, key: Key<'a>, traceback: usize, size: u64, count: u64) {
        let groups = &mut self.groups;
        let i = *self.index.entry(key).or_insert_with(|| {
            groups.push(Group {
                key,
                size: 0,
                count: 0,
                last_traceback: usize::MAX,
            });
            groups.len() - 1
        });
        let group = &mut groups[i];
        if group.last_traceback != traceback {
            group.last_traceback = traceback;
            group.size = group.size.saturating_add(size);
            group.count = group.count.saturating_add(count);
        }
    }
}

/// Python's `Snapshot._group_by`, with each trace counted once per key in cumulative mode.
fn group_by<'a>(
    snapshot: &'a Snapshot,
    key_type: KeyType,
    cumulative: bool,
    unknown: &'a [Frame],
) -> Result<Grouped<'a>, StatsError> {
    if cumulative && key_type == KeyType::Traceback {
        return Err(StatsError::CumulativeTraceback);
    }
    let per_traceback = totals_per_traceback(snapshot);
    let mut grouped = Grouped::default();
    for (i, (traceback, &(size, count))) in
        snapshot.tracebacks.iter().zip(&per_traceback).enumerate()
    {
        if count == 0 {
            continue;
        }
        let frames: &'a [Frame] = if traceback.frames.is_empty() {
            unknown
        } else {
            &traceback.frames
        };
        if cumulative {
            for frame in frames {
                let key = match key_type {
                    KeyType::Filename => Key::File(frame),
                    _ => Key::Line(frame),
                };
                grouped.add(key, i, size, count);
            }
        } else {
            let key = match key_type {
                KeyType::Filename => Key::File(&frames[0]),
                KeyType::Lineno => Key::Line(&frames[0]),
                KeyType::Traceback => Key::Stack(frames),
            };
            grouped.add(key, i, size, count);
        }
    }
    Ok(grouped)
}

/// Bytes and blocks per traceback: exact sums, or, for a sampled snapshot, the estimates the
/// sampled traces stand for (rounded once per traceback).
fn totals_per_traceback(snapshot: &Snapshot) -> Vec<(u64, u64)> {
    let n = snapshot.tracebacks.len();
    // An index past the tracebacks cannot come out of a snapshot or a decoder; such traces are
    // skipped rather than panicking.
    if snapshot.sample_interval == 0 {
        let mut totals = alloc::vec![(0u64, 0u64); n];
        for trace in &snapshot.traces {
            if let Some(sum) = totals.get_mut(trace.traceback as usize) {
                sum.0 = sum.0.saturating_add(trace.size);
                sum.1 += 1;
            }
        }
        return totals;
    }
    let mut estimates = alloc::vec![(0f64, 0f64); n];
    for trace in &snapshot.traces {
        if let Some(sum) = estimates.get_mut(trace.traceback as usize) {
            let weight = sample_weight(trace.size, snapshot.sample_interval);
            sum.0 += trace.size as f64 * weight;
            sum.1 += weight;
        }
    }
    // `as` saturates, and +0.5 rounds the non-negative estimates to the nearest integer.
    estimates
        .into_iter()
        .map(|(size, count)| ((size + 0.5) as u64, (count + 0.5) as u64))
        .collect()
}

fn diff(new: u64, old: u64) -> i64 {
    (i128::from(new) - i128::from(old)).clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
}

impl Snapshot {
    /// Statistics grouped by `key_type`, biggest first: Python's `Snapshot.statistics()`.
    ///
    /// With `cumulative`, every frame of a trace counts, not only the most recent one (each
    /// key once per trace; see the [module docs](crate::stats)). Cumulative mode with
    /// [`KeyType::Traceback`] is an error, as in Python.
    ///
    /// ```
    /// use tracemalloc_core::snapshot::snapshot_from_traces;
    /// use tracemalloc_core::{Frame, KeyType, Traceback};
    ///
    /// let at = |file: &str, line| Traceback::new(vec![Frame::new(file, line)]);
    /// let snapshot = snapshot_from_traces(
    ///     1,
    ///     [(0, 100, at("src/main.rs", 7)), (0, 30 * 1024, at("src/cache.rs", 42))],
    /// );
    /// let top = snapshot.statistics(KeyType::Lineno, false).unwrap();
    /// assert_eq!(
    ///     top[0].to_string(),
    ///     "src/cache.rs:42: size=30.0 KiB, count=1, average=30.0 KiB"
    /// );
    /// ```
    pub fn statistics(
        &self,
        key_type: KeyType,
        cumulative: bool,
    ) -> Result<Vec<Statistic>, StatsError> {
        let unknown = [Frame::unknown()];
        let grouped = group_by(self, key_type, cumulative, &unknown)?;
        let mut statistics: Vec<Statistic> = grouped
            .groups
            .into_iter()
            .map(|g| Statistic {
                traceback: g.key.to_traceback(),
                size: g.size,
                count: g.count,
            })
            .collect();
        // Python sorts by (size, count, traceback) in reverse; keys are unique, so the order is
        // total and an unstable sort gives the same list.
        statistics.sort_unstable_by(|a, b| {
            (b.size, b.count)
                .cmp(&(a.size, a.count))
                .then_with(|| b.traceback.cmp(&a.traceback))
        });
        Ok(statistics)
    }

    /// Differences from an `old` snapshot grouped by `key_type`, biggest change first: Python's
    /// `Snapshot.compare_to()`. Keys only in `old` show with size and count 0.
    ///
    /// ```
    /// use tracemalloc_core::snapshot::snapshot_from_traces;
    /// use tracemalloc_core::{Frame, KeyType, Traceback};
    ///
    /// let at = |file: &str, line| Traceback::new(vec![Frame::new(file, line)]);
    /// let start = snapshot_from_traces(1, [(0, 100, at("src/main.rs", 7))]);
    /// let now = snapshot_from_traces(
    ///     1,
    ///     [(0, 100, at("src/main.rs", 7)), (0, 30 * 1024, at("src/cache.rs", 42))],
    /// );
    /// let growth = now.compare_to(&start, KeyType::Lineno, false).unwrap();
    /// assert_eq!(
    ///     growth[0].to_string(),
    ///     "src/cache.rs:42: size=30.0 KiB (+30.0 KiB), count=1 (+1), average=30.0 KiB"
    /// );
    /// ```
    pub fn compare_to(
        &self,
        old: &Snapshot,
        key_type: KeyType,
        cumulative: bool,
    ) -> Result<Vec<StatisticDiff>, StatsError> {
        let unknown = [Frame::unknown()];
        let new_groups = group_by(self, key_type, cumulative, &unknown)?;
        let old_groups = group_by(old, key_type, cumulative, &unknown)?;
        let mut seen = alloc::vec![false; old_groups.groups.len()];
        let mut statistics = Vec::with_capacity(new_groups.groups.len());
        for g in &new_groups.groups {
            let (old_size, old_count) = match old_groups.index.get(&g.key) {
                Some(&i) => {
                    seen[i] = true;
                    (old_groups.groups[i].size, old_groups.groups[i].count)
                }
                None => (0, 0),
            };
            statistics.push(StatisticDiff {
                traceback: g.key.to_traceback(),
                size: g.size,
                size_diff: diff(g.size, old_size),
                count: g.count,
                count_diff: diff(g.count, old_count),
            });
        }
        for (g, _) in old_groups.groups.iter().zip(&seen).filter(|(_, &s)| !s) {
            statistics.push(StatisticDiff {
                traceback: g.key.to_traceback(),
                size: 0,
                size_diff: diff(0, g.size),
                count: 0,
                count_diff: diff(0, g.count),
            });
        }
        statistics.sort_unstable_by(|a, b| {
            (
                b.size_diff.unsigned_abs(),
                b.size,
                b.count_diff.unsigned_abs(),
                b.count,
            )
                .cmp(&(
                    a.size_diff.unsigned_abs(),
                    a.size,
                    a.count_diff.unsigned_abs(),
                    a.count,
                ))
                .then_with(|| b.traceback.cmp(&a.traceback))
        });
        Ok(statistics)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::snapshot_from_traces;
    use alloc::vec;

    fn tb(frames: &[(&str, u32)]) -> Traceback {
        Traceback::new(frames.iter().map(|&(f, l)| Frame::new(f, l)).collect())
    }

    #[test]
    fn cumulative_counts_a_trace_once_per_key() {
        // a.rs:1 -> a.rs:2 -> a.rs:1 (recursion): CPython would count 3 traces for a.rs.
        let s = snapshot_from_traces(3, [(0, 100, tb(&[("a.rs", 1), ("a.rs", 2), ("a.rs", 1)]))]);
        let by_file = s.statistics(KeyType::Filename, true).unwrap();
        assert_eq!(by_file.len(), 1);
        assert_eq!((by_file[0].size, by_file[0].count), (100, 1));
        let by_line = s.statistics(KeyType::Lineno, true).unwrap();
        let sizes: Vec<_> = by_line
            .iter()
            .map(|s| (s.traceback.clone(), s.size, s.count))
            .collect();
        assert_eq!(
            sizes,
            vec![(tb(&[("a.rs", 2)]), 100, 1), (tb(&[("a.rs", 1)]), 100, 1)]
        );
    }

    #[test]
    fn empty_traceback_groups_as_unknown_with_explicit_unknown_frames() {
        let s = snapshot_from_traces(
            1,
            [
                (0, 5, Traceback::new(Vec::new())),
                (0, 7, tb(&[("<unknown>", 0)])),
            ],
        );
        for key in [KeyType::Filename, KeyType::Lineno, KeyType::Traceback] {
            let stats = s.statistics(key, false).unwrap();
            assert_eq!(stats.len(), 1, "{key:?}");
            assert_eq!(stats[0].traceback, tb(&[("<unknown>", 0)]));
            assert_eq!((stats[0].size, stats[0].count), (12, 2));
        }
    }

    #[test]
    fn traceback_key_merges_equal_frames_with_different_depths() {
        let mut deep = tb(&[("a.rs", 1)]);
        deep.total_nframe = 9;
        let s = snapshot_from_traces(1, [(0, 5, deep), (0, 7, tb(&[("a.rs", 1)]))]);
        assert_eq!(s.tracebacks.len(), 2);
        let stats = s.statistics(KeyType::Traceback, false).unwrap();
        assert_eq!(stats.len(), 1);
        assert_eq!((stats[0].size, stats[0].count), (12, 2));
    }

    #[test]
    fn equal_size_and_count_tie_breaks_on_traceback_descending() {
        let s = snapshot_from_traces(
            1,
            [
                (0, 8, tb(&[("a.rs", 1)])),
                (0, 8, tb(&[("c.rs", 1)])),
                (0, 8, tb(&[("b.rs", 1)])),
                (0, 8, tb(&[("b.rs", 2)])),
            ],
        );
        let order: Vec<_> = s
            .statistics(KeyType::Lineno, false)
            .unwrap()
            .into_iter()
            .map(|s| s.traceback)
            .collect();
        assert_eq!(
            order,
            vec![
                tb(&[("c.rs", 1)]),
                tb(&[("b.rs", 2)]),
                tb(&[("b.rs", 1)]),
                tb(&[("a.rs", 1)])
            ]
        );
    }

    #[test]
    fn cumulative_traceback_is_an_error() {
        let s = Snapshot::default();
        assert_eq!(
            s.statistics(KeyType::Traceback, true),
            Err(StatsError::CumulativeTraceback)
        );
        assert_eq!(
            s.compare_to(&s, KeyType::Traceback, true),
            Err(StatsError::CumulativeTraceback)
        );
    }

    #[test]
    fn key_type_parses_python_names() {
        for key in [KeyType::Filename, KeyType::Lineno, KeyType::Traceback] {
            assert_eq!(key.as_str().parse(), Ok(key));
        }
        assert_eq!("line".parse::<KeyType>(), Err(StatsError::UnknownKeyType));
    }

    #[test]
    fn many_traces_few_call_sites_group_quickly() {
        let sites: Vec<Traceback> = (0..1000)
            .map(|i| tb(&[("src/hot.rs", i % 100), ("src/main.rs", i)]))
            .collect();
        let mut s = snapshot_from_traces(2, sites.iter().cloned().map(|t| (0, 1, t)));
        let traces: Vec<_> = (0..1_000_000u32)
            .map(|i| crate::snapshot::Trace {
                domain: 0,
                size: 16,
                traceback: i % 1000,
            })
            .collect();
        s.traces = traces;
        let stats = s.statistics(KeyType::Lineno, false).unwrap();
        assert_eq!(stats.len(), 100);
        assert_eq!(stats.iter().map(|s| s.count).sum::<u64>(), 1_000_000);
        let cumulative = s.statistics(KeyType::Filename, true).unwrap();
        assert_eq!(cumulative.len(), 2);
        assert!(cumulative.iter().all(|s| s.size == 16_000_000));
    }
}
