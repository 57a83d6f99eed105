//! The language-independent cases of CPython's `Lib/test/test_tracemalloc.py`, on the same
//! data and with the same expected results.
#![cfg(feature = "alloc")]

use tracemalloc_core::snapshot::snapshot_from_traces;
use tracemalloc_core::{
    DomainFilter, Filter, Frame, KeyType, Slot, Snapshot, Statistic, StatisticDiff, StatsError,
    TraceFilter, Traceback, TracebackEntry, TracebackStorage, Tracer, TracerStorage,
};

type Raw<'a> = (u32, u64, &'a [(&'a str, u32)], u16);
/// A trace in Python's raw form, owned: (domain, size, frames, total_nframe).
type OwnedRaw = (u32, u64, Vec<(String, u32)>, u16);

/// Python's raw traces: frames most recent first.
fn snapshot(traceback_limit: u16, raw: &[Raw<'_>]) -> Snapshot {
    snapshot_from_traces(
        traceback_limit,
        raw.iter().map(|&(domain, size, frames, total_nframe)| {
            let frames = frames.iter().map(|&(f, l)| Frame::new(f, l)).collect();
            (
                domain,
                size,
                Traceback {
                    frames,
                    total_nframe,
                },
            )
        }),
    )
}

/// Python's `create_snapshots()`.
fn create_snapshots() -> (Snapshot, Snapshot) {
    let ab: &[(&str, u32)] = &[("a.py", 2), ("b.py", 4)];
    let a5b: &[(&str, u32)] = &[("a.py", 5), ("b.py", 4)];
    let s1 = snapshot(
        2,
        &[
            (0, 10, ab, 3),
            (0, 10, ab, 3),
            (0, 10, ab, 3),
            (1, 2, a5b, 3),
            (2, 66, &[("b.py", 1)], 1),
            (3, 7, &[("<unknown>", 0)], 1),
        ],
    );
    let s2 = snapshot(
        2,
        &[
            (0, 10, ab, 3),
            (0, 10, ab, 3),
            (0, 10, ab, 3),
            (2, 2, a5b, 3),
            (2, 5000, a5b, 3),
            (4, 400, &[("c.py", 578)], 1),
        ],
    );
    (s1, s2)
}

/// The snapshot's traces back in Python's raw form.
fn raw(s: &Snapshot) -> Vec<OwnedRaw> {
    s.traces
        .iter()
        .map(|t| {
            let tb = s.traceback_of(t);
            let frames = tb
                .frames
                .iter()
                .map(|f| (f.filename.to_string(), f.lineno))
                .collect();
            (t.domain, t.size, frames, tb.total_nframe)
        })
        .collect()
}

fn expect(list: &[Raw<'_>]) -> Vec<OwnedRaw> {
    list.iter()
        .map(|&(d, s, f, n)| {
            (
                d,
                s,
                f.iter().map(|&(f, l)| (f.to_string(), l)).collect(),
                n,
            )
        })
        .collect()
}

/// Python's `traceback(*frames)`: frames most recent first.
fn traceback(frames: &[(&str, u32)]) -> Traceback {
    Traceback::new(frames.iter().map(|&(f, l)| Frame::new(f, l)).collect())
}

fn lineno(f: &str, l: u32) -> Traceback {
    traceback(&[(f, l)])
}

fn filename(f: &str) -> Traceback {
    traceback(&[(f, 0)])
}

fn stat(traceback: Traceback, size: u64, count: u64) -> Statistic {
    Statistic {
        traceback,
        size,
        count,
    }
}

fn diff(
    traceback: Traceback,
    size: u64,
    size_diff: i64,
    count: u64,
    count_diff: i64,
) -> StatisticDiff {
    StatisticDiff {
        traceback,
        size,
        size_diff,
        count,
        count_diff,
    }
}

const AB: &[(&str, u32)] = &[("a.py", 2), ("b.py", 4)];
const A5B: &[(&str, u32)] = &[("a.py", 5), ("b.py", 4)];

#[test]
fn filter_traces_excludes_then_includes_lines() {
    let (s, _) = create_snapshots();
    let exclude_b = TraceFilter::from(Filter::new(false, "b.py"));
    let a2 = TraceFilter::from(Filter::new(true, "a.py").with_lineno(2));
    let a5 = TraceFilter::from(Filter::new(true, "a.py").with_lineno(5));
    let original = raw(&s);

    let s3 = s.filter_traces(&[exclude_b]);
    assert_eq!(
        raw(&s3),
        expect(&[
            (0, 10, AB, 3),
            (0, 10, AB, 3),
            (0, 10, AB, 3),
            (1, 2, A5B, 3),
            (3, 7, &[("<unknown>", 0)], 1),
        ])
    );
    assert_eq!(
        raw(&s),
        original,
        "filter_traces must not touch the original"
    );

    let s4 = s3.filter_traces(&[a2, a5]);
    assert_eq!(
        raw(&s4),
        expect(&[
            (0, 10, AB, 3),
            (0, 10, AB, 3),
            (0, 10, AB, 3),
            (1, 2, A5B, 3)
        ])
    );

    let s5 = s.filter_traces(&[]);
    assert_eq!(raw(&s5), original);
    assert_eq!(s5.traceback_limit, 2);
}

#[test]
fn filter_traces_with_a_domain() {
    let (s, _) = create_snapshots();
    let exclude = TraceFilter::from(Filter::new(false, "a.py").with_domain(1));
    let include = TraceFilter::from(Filter::new(true, "a.py").with_domain(1));
    let s3 = s.filter_traces(&[exclude]);
    assert_eq!(
        raw(&s3),
        expect(&[
            (0, 10, AB, 3),
            (0, 10, AB, 3),
            (0, 10, AB, 3),
            (2, 66, &[("b.py", 1)], 1),
            (3, 7, &[("<unknown>", 0)], 1),
        ])
    );
    assert_eq!(raw(&s.filter_traces(&[include])), expect(&[(1, 2, A5B, 3)]));
}

#[test]
fn domain_filters_include_or_exclude_one_domain() {
    let (s, _) = create_snapshots();
    let s3 = s.filter_traces(&[DomainFilter::new(false, 3).into()]);
    assert_eq!(
        raw(&s3),
        expect(&[
            (0, 10, AB, 3),
            (0, 10, AB, 3),
            (0, 10, AB, 3),
            (1, 2, A5B, 3),
            (2, 66, &[("b.py", 1)], 1),
        ])
    );
    let s3 = s.filter_traces(&[DomainFilter::new(true, 3).into()]);
    assert_eq!(raw(&s3), expect(&[(3, 7, &[("<unknown>", 0)], 1)]));
}

#[test]
fn filtered_snapshot_keeps_only_used_tracebacks() {
    let (s, _) = create_snapshots();
    let s3 = s.filter_traces(&[DomainFilter::new(true, 0).into()]);
    assert_eq!(s3.tracebacks.len(), 1);
    assert_eq!(s3.addresses.len(), 1);
    assert!(s3.traces.iter().all(|t| t.traceback == 0));
}

#[test]
fn group_by_line() {
    let (s1, s2) = create_snapshots();
    assert_eq!(
        s1.statistics(KeyType::Lineno, false).unwrap(),
        vec![
            stat(lineno("b.py", 1), 66, 1),
            stat(lineno("a.py", 2), 30, 3),
            stat(lineno("<unknown>", 0), 7, 1),
            stat(lineno("a.py", 5), 2, 1),
        ]
    );
    assert_eq!(
        s2.statistics(KeyType::Lineno, false).unwrap(),
        vec![
            stat(lineno("a.py", 5), 5002, 2),
            stat(lineno("c.py", 578), 400, 1),
            stat(lineno("a.py", 2), 30, 3),
        ]
    );
    assert_eq!(
        s2.compare_to(&s1, KeyType::Lineno, false).unwrap(),
        vec![
            diff(lineno("a.py", 5), 5002, 5000, 2, 1),
            diff(lineno("c.py", 578), 400, 400, 1, 1),
            diff(lineno("b.py", 1), 0, -66, 0, -1),
            diff(lineno("<unknown>", 0), 0, -7, 0, -1),
            diff(lineno("a.py", 2), 30, 0, 3, 0),
        ]
    );
}

#[test]
fn group_by_file() {
    let (s1, s2) = create_snapshots();
    assert_eq!(
        s1.statistics(KeyType::Filename, false).unwrap(),
        vec![
            stat(filename("b.py"), 66, 1),
            stat(filename("a.py"), 32, 4),
            stat(filename("<unknown>"), 7, 1),
        ]
    );
    assert_eq!(
        s2.statistics(KeyType::Filename, false).unwrap(),
        vec![
            stat(filename("a.py"), 5032, 5),
            stat(filename("c.py"), 400, 1)
        ]
    );
    assert_eq!(
        s2.compare_to(&s1, KeyType::Filename, false).unwrap(),
        vec![
            diff(filename("a.py"), 5032, 5000, 5, 1),
            diff(filename("c.py"), 400, 400, 1, 1),
            diff(filename("b.py"), 0, -66, 0, -1),
            diff(filename("<unknown>"), 0, -7, 0, -1),
        ]
    );
}

#[test]
fn group_by_traceback() {
    let (s1, s2) = create_snapshots();
    let tb1 = traceback(AB);
    let tb2 = traceback(A5B);
    let tb3 = traceback(&[("b.py", 1)]);
    let tb4 = traceback(&[("<unknown>", 0)]);
    let tb5 = traceback(&[("c.py", 578)]);
    assert_eq!(
        s1.statistics(KeyType::Traceback, false).unwrap(),
        vec![
            stat(tb3.clone(), 66, 1),
            stat(tb1.clone(), 30, 3),
            stat(tb4.clone(), 7, 1),
            stat(tb2.clone(), 2, 1),
        ]
    );
    assert_eq!(
        s2.statistics(KeyType::Traceback, false).unwrap(),
        vec![
            stat(tb2.clone(), 5002, 2),
            stat(tb5.clone(), 400, 1),
            stat(tb1.clone(), 30, 3),
        ]
    );
    assert_eq!(
        s2.compare_to(&s1, KeyType::Traceback, false).unwrap(),
        vec![
            diff(tb2, 5002, 5000, 2, 1),
            diff(tb5, 400, 400, 1, 1),
            diff(tb3, 0, -66, 0, -1),
            diff(tb4, 0, -7, 0, -1),
            diff(tb1, 30, 0, 3, 0),
        ]
    );
    assert_eq!(
        s1.statistics(KeyType::Traceback, true),
        Err(StatsError::CumulativeTraceback)
    );
}

#[test]
fn group_by_cumulative() {
    let (s1, _) = create_snapshots();
    assert_eq!(
        s1.statistics(KeyType::Filename, true).unwrap(),
        vec![
            stat(filename("b.py"), 98, 5),
            stat(filename("a.py"), 32, 4),
            stat(filename("<unknown>"), 7, 1),
        ]
    );
    assert_eq!(
        s1.statistics(KeyType::Lineno, true).unwrap(),
        vec![
            stat(lineno("b.py", 1), 66, 1),
            stat(lineno("b.py", 4), 32, 4),
            stat(lineno("a.py", 2), 30, 3),
            stat(lineno("<unknown>", 0), 7, 1),
            stat(lineno("a.py", 5), 2, 1),
        ]
    );
}

#[test]
fn compare_to_cumulative_diffs_every_frame() {
    let (s1, s2) = create_snapshots();
    assert_eq!(
        s2.compare_to(&s1, KeyType::Filename, true).unwrap(),
        vec![
            diff(filename("a.py"), 5032, 5000, 5, 1),
            diff(filename("b.py"), 5032, 4934, 5, 0),
            diff(filename("c.py"), 400, 400, 1, 1),
            diff(filename("<unknown>"), 0, -7, 0, -1),
        ]
    );
    assert_eq!(
        s2.compare_to(&s1, KeyType::Lineno, true).unwrap(),
        vec![
            // Equal size diffs: the bigger size comes first.
            diff(lineno("b.py", 4), 5032, 5000, 5, 1),
            diff(lineno("a.py", 5), 5002, 5000, 2, 1),
            diff(lineno("c.py", 578), 400, 400, 1, 1),
            diff(lineno("b.py", 1), 0, -66, 0, -1),
            diff(lineno("<unknown>", 0), 0, -7, 0, -1),
            diff(lineno("a.py", 2), 30, 0, 3, 0),
        ]
    );
}

#[test]
fn compare_to_sorts_by_absolute_size_diff_then_size() {
    let old = snapshot(
        1,
        &[(0, 100, &[("x.rs", 1)], 1), (0, 50, &[("y.rs", 1)], 1)],
    );
    let new = snapshot(
        1,
        &[
            (0, 90, &[("x.rs", 1)], 1), // -10, size 90
            (0, 60, &[("y.rs", 1)], 1), // +10, size 60
            (0, 10, &[("z.rs", 1)], 1), // +10, size 10
            (0, 10, &[("w.rs", 1)], 1), // +10, size 10, count 1: tie broken by traceback
        ],
    );
    let order: Vec<String> = new
        .compare_to(&old, KeyType::Lineno, false)
        .unwrap()
        .iter()
        .map(|d| d.traceback.to_string())
        .collect();
    assert_eq!(order, ["x.rs:1", "y.rs:1", "z.rs:1", "w.rs:1"]);
}

#[test]
fn trace_and_traceback_print_the_oldest_frame() {
    let (s, _) = create_snapshots();
    let tb = s.traceback_of(&s.traces[0]);
    assert_eq!(tb.to_string(), "b.py:4");
    assert_eq!(tb.frames[1].to_string(), "b.py:4");
}

#[test]
fn statistic_format() {
    let (s, _) = create_snapshots();
    let stats = s.statistics(KeyType::Lineno, false).unwrap();
    assert_eq!(
        stats[0].to_string(),
        "b.py:1: size=66 B, count=1, average=66 B"
    );
}

#[test]
fn statistic_diff_format() {
    let (s1, s2) = create_snapshots();
    let stats = s2.compare_to(&s1, KeyType::Lineno, false).unwrap();
    assert_eq!(
        stats[0].to_string(),
        "a.py:5: size=5002 B (+5000 B), count=2 (+1), average=2501 B"
    );
}

#[test]
fn format_traceback() {
    let (s, _) = create_snapshots();
    let tb = s.traceback_of(&s.traces[0]);
    let getline = |f: &str, l: u32| Some(format!("  <{f}, {l}>"));
    let lines =
        |limit, most_recent_first| tb.format_with_source(limit, most_recent_first, &getline);
    let b4 = ["  File \"b.py\", line 4", "    <b.py, 4>"];
    let a2 = ["  File \"a.py\", line 2", "    <a.py, 2>"];
    assert_eq!(lines(None, false), [b4, a2].concat());
    assert_eq!(lines(Some(1), false), a2);
    assert_eq!(lines(Some(-1), false), b4);
    assert_eq!(lines(None, true), [a2, b4].concat());
    assert_eq!(lines(Some(1), true), a2);
    assert_eq!(lines(Some(-1), true), b4);
    assert_eq!(
        tb.format(None, false),
        ["  File \"b.py\", line 4", "  File \"a.py\", line 2"]
    );
}

#[test]
fn filter_match_frame() {
    let cases: &[(bool, Option<u32>, [bool; 6])] = &[
        (true, None, [true, true, true, false, false, false]),
        (false, None, [false, false, false, true, true, true]),
        (true, Some(5), [false, true, false, false, false, false]),
        (false, Some(5), [true, false, true, true, true, true]),
        (true, Some(0), [true, false, false, false, false, false]),
        (false, Some(0), [false, true, true, true, true, true]),
    ];
    for &(inclusive, line, expected) in cases {
        let mut f = Filter::new(inclusive, "abc");
        f.lineno = line;
        let got = [
            f.match_frame("abc", 0),
            f.match_frame("abc", 5),
            f.match_frame("abc", 10),
            f.match_frame("12356", 0),
            f.match_frame("12356", 5),
            f.match_frame("12356", 10),
        ];
        assert_eq!(got, expected, "inclusive={inclusive} lineno={line:?}");
    }
}

#[test]
fn filter_match_filename() {
    let m =
        |inclusive, name: &str, pattern: &str| Filter::new(inclusive, pattern).match_frame(name, 0);
    assert!(m(true, "abc", "abc"));
    assert!(!m(true, "12356", "abc"));
    assert!(!m(true, "<unknown>", "abc"));
    assert!(!m(false, "abc", "abc"));
    assert!(m(false, "12356", "abc"));
    assert!(m(false, "<unknown>", "abc"));
}

#[test]
fn filter_match_traceback() {
    let t1 = traceback(&[("a.py", 2), ("b.py", 3)]);
    let t2 = traceback(&[("b.py", 4), ("b.py", 5)]);
    let t3 = traceback(&[("c.py", 5), ("<unknown>", 0)]);
    let unknown = traceback(&[("<unknown>", 0)]);
    let empty = Traceback::new(Vec::new());
    let cases: &[(bool, &str, bool, [bool; 4])] = &[
        (true, "b.py", true, [true, true, false, false]),
        (true, "b.py", false, [false, true, false, false]),
        (false, "b.py", true, [false, false, true, true]),
        (false, "b.py", false, [true, false, true, true]),
        (false, "<unknown>", false, [true, true, true, false]),
        (true, "<unknown>", true, [false, false, true, true]),
        (false, "<unknown>", true, [true, true, false, false]),
    ];
    for &(inclusive, pattern, all_frames, expected) in cases {
        let f = Filter::new(inclusive, pattern).with_all_frames(all_frames);
        let got = [&t1, &t2, &t3, &unknown].map(|t| f.match_traceback(t));
        assert_eq!(got, expected, "{inclusive} {pattern} {all_frames}");
        // No frames at all reads as `<unknown>:0`.
        assert_eq!(f.match_traceback(&empty), expected[3]);
    }
}

#[test]
fn binary_dump_load_round_trip_keeps_traces() {
    let (s, _) = create_snapshots();
    let back = Snapshot::load_bytes(&s.dump_bytes()).unwrap();
    assert_eq!(raw(&back), raw(&s));
    assert_eq!(back.traceback_limit, s.traceback_limit);
}

#[cfg(feature = "json")]
#[test]
fn json_round_trip_keeps_traces() {
    let (s, _) = create_snapshots();
    let back = Snapshot::from_json(&s.to_json()).unwrap();
    assert_eq!(raw(&back), raw(&s));
    assert_eq!(back.traceback_limit, s.traceback_limit);
    assert_eq!(back.counters, s.counters);
}

#[test]
fn tracer_peak_and_reset_peak() {
    let mut slots = [Slot::EMPTY; 64];
    let mut entries = [TracebackEntry::EMPTY; 16];
    let mut index = [0u64; 32];
    let mut frames = [0usize; 64];
    let mut t = Tracer::new(TracerStorage {
        slots: &mut slots,
        tracebacks: TracebackStorage {
            entries: &mut entries,
            index: &mut index,
            frames: &mut frames,
        },
    });
    // A large temporary allocation raises the peak...
    t.record_alloc(0, 0x1000, 100_000, &[1], 1);
    t.record_alloc(0, 0x2000, 10, &[2], 1);
    t.record_free(0, 0x1000);
    let (size1, peak1) = (t.counters().current, t.counters().peak);
    assert_eq!((size1, peak1), (10, 100_010));
    // ...reset_peak() brings it down to the traced size...
    t.reset_peak();
    let (size2, peak2) = (t.counters().current, t.counters().peak);
    assert!(peak2 >= size2 && peak2 < peak1);
    // ...and it follows new allocations again.
    t.record_alloc(0, 0x3000, 1024 * 1024, &[3], 1);
    let peak3 = t.counters().peak;
    assert!(peak3 >= t.counters().current && peak3 - peak2 >= 1024 * 1024);
    // clear() resets the traced memory counters.
    t.clear();
    assert_eq!((t.counters().current, t.counters().peak), (0, 0));
}
