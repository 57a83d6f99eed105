//! Python-identical text: `Display` for [`Frame`], [`Traceback`], [`Statistic`] and
//! [`StatisticDiff`], [`Traceback::format`], and [`format_size`].
//!
//! Users compare our output with CPython's and paste it into the same dashboards, so every
//! string is what `str()` prints in `Lib/tracemalloc.py`, rounding included: Python's `%.1f` and
//! `%.0f` round the exact binary value half to even, and so does Rust's `{:.1}`.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use crate::snapshot::{Frame, Traceback};
use crate::stats::{Statistic, StatisticDiff};

/// Python's `tracemalloc._format_size`: `size` bytes with a binary unit, three significant
/// digits below 100 of a unit (`30.0 KiB`), whole numbers otherwise (`5002 B`, `1234 MiB`);
/// with `sign`, a `+` or `-` in front.
pub fn format_size(size: f64, sign: bool) -> String {
    let mut size = size;
    for unit in ["B", "KiB", "MiB", "GiB", "TiB"] {
        if size.abs() < 100.0 && unit != "B" {
            return if sign {
                format!("{size:+.1} {unit}")
            } else {
                format!("{size:.1} {unit}")
            };
        }
        if size.abs() < 10.0 * 1024.0 || unit == "TiB" {
            return if sign {
                format!("{size:+.0} {unit}")
            } else {
                format!("{size:.0} {unit}")
            };
        }
        size /= 1024.0;
    }
    unreachable!("the TiB branch always returns")
}

impl fmt::Display for Frame {
    /// `filename:lineno`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.filename, self.lineno)
    }
}

impl fmt::Display for Traceback {
    /// Python prints `self[0]` of its oldest-first sequence: the *oldest* frame, which for the
    /// one-frame tracebacks of `filename` and `lineno` statistics is the only one. An empty
    /// traceback prints as `<unknown>:0`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.frames.last() {
            Some(frame) => frame.fmt(f),
            None => Frame::unknown().fmt(f),
        }
    }
}

fn average(size: u64, count: u64) -> String {
    format_size(size as f64 / count as f64, false)
}

impl fmt::Display for Statistic {
    /// `src/cache.rs:42: size=30.0 KiB, count=1, average=30.0 KiB`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: size={}, count={}",
            self.traceback,
            format_size(self.size as f64, false),
            self.count
        )?;
        if self.count != 0 {
            write!(f, ", average={}", average(self.size, self.count))?;
        }
        Ok(())
    }
}

impl fmt::Display for StatisticDiff {
    /// `src/cache.rs:42: size=30.0 KiB (+30.0 KiB), count=1 (+1), average=30.0 KiB`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: size={} ({}), count={} ({:+})",
            self.traceback,
            format_size(self.size as f64, false),
            format_size(self.size_diff as f64, true),
            self.count,
            self.count_diff
        )?;
        if self.count != 0 {
            write!(f, ", average={}", average(self.size, self.count))?;
        }
        Ok(())
    }
}

impl Traceback {
    /// Python's `Traceback.format(limit, most_recent_first)` without source lines: one
    /// `  File "src/a.rs", line 3` line per frame, oldest first unless `most_recent_first`.
    ///
    /// A positive `limit` keeps the `limit` most recent frames, a negative one drops the
    /// `-limit` most recent frames, and 0 keeps none, as Python slices `self[-limit:]` and
    /// `self[:limit]`.
    pub fn format(&self, limit: Option<i64>, most_recent_first: bool) -> Vec<String> {
        self.format_with_source(limit, most_recent_first, &|_, _| None)
    }

    /// [`Traceback::format`] with the source line of each frame, from `source(filename,
    /// lineno)`, trimmed and indented under its `File` line as Python's `linecache` lines are.
    /// Frames whose line is unknown or blank get no second line.
    pub fn format_with_source(
        &self,
        limit: Option<i64>,
        most_recent_first: bool,
        source: &dyn Fn(&str, u32) -> Option<String>,
    ) -> Vec<String> {
        let mut lines = Vec::new();
        let done: Result<(), core::convert::Infallible> =
            self.try_for_each_line(limit, most_recent_first, source, |line| {
                lines.push(line);
                Ok(())
            });
        let Ok(()) = done;
        lines
    }

    /// The lines of [`Traceback::format_with_source`] handed to `emit` one by one, which stops
    /// at its first error: a report of a traceback with many long frames (a forged file) is
    /// written out as it goes rather than built whole in memory.
    pub fn try_for_each_line<E>(
        &self,
        limit: Option<i64>,
        most_recent_first: bool,
        source: &dyn Fn(&str, u32) -> Option<String>,
        mut emit: impl FnMut(String) -> Result<(), E>,
    ) -> Result<(), E> {
        let n = self.frames.len();
        // Bounds in Python's oldest-first sequence, whose index i is frames[n - 1 - i].
        let (start, end) = match limit {
            None => (0, n),
            Some(limit) if limit > 0 => (n.saturating_sub(clamp_len(limit)), n),
            Some(0) => (0, 0),
            Some(limit) => (0, n.saturating_sub(clamp_len(limit.saturating_neg()))),
        };
        let oldest_first = self.frames[n - end..n - start].iter().rev();
        let frames: alloc::boxed::Box<dyn Iterator<Item = &Frame>> = if most_recent_first {
            alloc::boxed::Box::new(oldest_first.rev())
        } else {
            alloc::boxed::Box::new(oldest_first)
        };
        for frame in frames {
            emit(format!(
                "  File \"{}\", line {}",
                frame.filename, frame.lineno
            ))?;
            if let Some(line) = source(&frame.filename, frame.lineno) {
                let line = line.trim();
                if !line.is_empty() {
                    emit(format!("    {line}"))?;
                }
            }
        }
        Ok(())
    }
}

fn clamp_len(n: i64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;
    use alloc::vec;

    #[test]
    fn format_size_matches_python_values() {
        // Expected strings worked out by hand from `_format_size`'s rules.
        let cases: &[(f64, bool, &str)] = &[
            (0.0, false, "0 B"),
            (0.0, true, "+0 B"),
            (1.0, false, "1 B"),
            (-66.0, true, "-66 B"),
            (5002.0, false, "5002 B"),
            (5000.0, true, "+5000 B"),
            (10239.0, false, "10239 B"),
            (10240.0, false, "10.0 KiB"),
            (-10240.0, true, "-10.0 KiB"),
            (30720.0, true, "+30.0 KiB"),
            (102399.0, false, "100.0 KiB"), // 99.999 rounds up, yet stays in the .1f branch
            (102400.0, false, "100 KiB"),
            (10485759.0, false, "10240 KiB"), // 10239.999 KiB rounds to 10240
            (10485760.0, false, "10.0 MiB"),
            (1073741824.0, false, "1024 MiB"),
            (10.0 * 1073741824.0, false, "10.0 GiB"),
            (1099511627776.0 * 20000.0, false, "20000 TiB"),
            (2501.0, false, "2501 B"),
        ];
        for &(size, sign, expected) in cases {
            assert_eq!(format_size(size, sign), expected, "{size} {sign}");
        }
    }

    #[test]
    fn format_size_rounds_half_to_even_on_the_binary_value() {
        // 2.5 and 0.5 are exact ties: Python's %.0f gives 2 and 0.
        assert_eq!(format_size(2.5, false), "2 B");
        assert_eq!(format_size(0.5, false), "0 B");
        assert_eq!(format_size(3.5, false), "4 B");
        // 12.25 KiB (12544 B) is an exact tie at one decimal: 12.2; 12.75 -> 12.8.
        assert_eq!(format_size(12544.0, false), "12.2 KiB");
        assert_eq!(format_size(13056.0, false), "12.8 KiB");
        // 10.35 KiB is not exact in binary (10.3499999...): 10.3.
        assert_eq!(format_size(10.35 * 1024.0, false), "10.3 KiB");
        // Average 10.05 KiB over 3 blocks: 30873.6/3 = 10291.2 B = 10.05 KiB, below the tie.
        assert_eq!(format_size(30873.6 / 3.0, false), "10.0 KiB");
    }

    #[test]
    fn negative_fractions_keep_their_sign() {
        assert_eq!(format_size(-10.04 * 1024.0, true), "-10.0 KiB");
        assert_eq!(format_size(-0.4, true), "-0 B");
        assert_eq!(format_size(-0.4, false), "-0 B");
    }

    fn tb(frames: &[(&str, u32)]) -> Traceback {
        Traceback::new(frames.iter().map(|&(f, l)| Frame::new(f, l)).collect())
    }

    #[test]
    fn traceback_prints_its_oldest_frame() {
        let t = tb(&[("a.py", 2), ("b.py", 4)]);
        assert_eq!(t.to_string(), "b.py:4");
        assert_eq!(Traceback::new(Vec::new()).to_string(), "<unknown>:0");
    }

    #[test]
    fn statistic_diff_prints_like_the_issue_example() {
        let d = StatisticDiff {
            traceback: tb(&[("src/cache.rs", 42)]),
            size: 30 * 1024,
            size_diff: 30 * 1024,
            count: 1,
            count_diff: 1,
        };
        assert_eq!(
            d.to_string(),
            "src/cache.rs:42: size=30.0 KiB (+30.0 KiB), count=1 (+1), average=30.0 KiB"
        );
        let gone = StatisticDiff {
            size: 0,
            size_diff: -66,
            count: 0,
            count_diff: -1,
            ..d
        };
        assert_eq!(
            gone.to_string(),
            "src/cache.rs:42: size=0 B (-66 B), count=0 (-1)"
        );
    }

    #[test]
    fn format_limits_and_orders_like_python() {
        let t = tb(&[("a.rs", 3), ("b.rs", 2), ("c.rs", 1)]);
        let files = |lines: Vec<String>| -> Vec<String> { lines };
        let f = |name: &str, line: u32| format!("  File \"{name}\", line {line}");
        assert_eq!(
            files(t.format(None, false)),
            vec![f("c.rs", 1), f("b.rs", 2), f("a.rs", 3)]
        );
        assert_eq!(t.format(Some(2), false), vec![f("b.rs", 2), f("a.rs", 3)]);
        assert_eq!(t.format(Some(2), true), vec![f("a.rs", 3), f("b.rs", 2)]);
        assert_eq!(t.format(Some(-2), false), vec![f("c.rs", 1)]);
        assert_eq!(t.format(Some(-1), true), vec![f("b.rs", 2), f("c.rs", 1)]);
        assert_eq!(t.format(Some(0), false), Vec::<String>::new());
        assert_eq!(t.format(Some(99), false).len(), 3);
        assert_eq!(t.format(Some(-99), false), Vec::<String>::new());
        assert_eq!(t.format(Some(i64::MIN), true), Vec::<String>::new());
        assert_eq!(t.format(Some(i64::MAX), true).len(), 3);
    }

    #[test]
    fn source_lines_are_trimmed_and_blank_ones_skipped() {
        let t = tb(&[("a.rs", 3), ("b.rs", 2)]);
        let source = |file: &str, line: u32| -> Option<String> {
            match (file, line) {
                ("a.rs", 3) => Some("    let v = vec![0; 10];\n".to_string()),
                _ => Some("   ".to_string()),
            }
        };
        assert_eq!(
            t.format_with_source(None, false, &source),
            vec![
                "  File \"b.rs\", line 2".to_string(),
                "  File \"a.rs\", line 3".to_string(),
                "    let v = vec![0; 10];".to_string(),
            ]
        );
    }
}
