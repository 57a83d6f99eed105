//! Medians, Markdown tables and the hand-written SVG chart of the `compare` driver.
//!
//! Benchmarks on a shared 2-core machine are noisy, so every figure is a median: the median wall
//! time of a variant over the rounds, and the median over rounds of the per-round ratio against
//! the baseline run in the same round (which cancels slow drifts in machine load). Each such
//! median comes with a 95 % interval taken from the rounds' order alone, so that a verdict or
//! an A/B change is claimed only when the noise cannot explain it.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::{RunResult, FRAME_POINTERS};

/// The median of the finite values, or `None` when there are none.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    })
}

/// The median over rounds of `times[r] / baseline[r]`, skipping rounds where either failed.
pub fn median_ratio(times: &[f64], baseline: &[f64]) -> Option<f64> {
    let ratios: Vec<f64> = times
        .iter()
        .zip(baseline)
        .map(|(t, b)| t / b)
        .filter(|r| r.is_finite())
        .collect();
    median(&ratios)
}

/// The median over rounds of `times[r] - baseline[r]`, skipping rounds where either failed: the
/// same round-by-round pairing as [`median_ratio`], so that a table of both agrees.
pub fn median_difference(times: &[f64], baseline: &[f64]) -> Option<f64> {
    let differences: Vec<f64> = times.iter().zip(baseline).map(|(t, b)| t - b).collect();
    median(&differences)
}

/// A distribution-free 95 % confidence interval for the median over rounds of
/// `times[r] / baseline[r]`: the k-th smallest and k-th largest ratio, with k the largest rank
/// whose two tails (each a binomial(n, 1/2) probability that at most k - 1 of the n ratios fall
/// below the true median) add up to at most 5 %. No assumption on the noise's shape, which on
/// a shared machine is skewed. `None` below 6 rounds, where no such interval exists (with 5,
/// all five on one side of the median has probability 1/16 > 5 %).
pub fn ratio_interval(times: &[f64], baseline: &[f64]) -> Option<(f64, f64)> {
    let mut ratios: Vec<f64> = times
        .iter()
        .zip(baseline)
        .map(|(t, b)| t / b)
        .filter(|r| r.is_finite())
        .collect();
    ratios.sort_by(f64::total_cmp);
    let k = median_interval_rank(ratios.len())?;
    Some((ratios[k - 1], ratios[ratios.len() - k]))
}

/// The largest k with 2 * P(Binomial(n, 1/2) <= k - 1) <= 0.05, if any.
fn median_interval_rank(n: usize) -> Option<usize> {
    // P(B <= j) summed term by term: C(n, j) / 2^n, in floating point (n is a few dozen).
    let mut term = 0.5f64.powi(n as i32); // C(n, 0) / 2^n
    let mut below = 0.0; // P(B <= k - 1)
    let mut k = 0;
    while k < n / 2 {
        below += term;
        if 2.0 * below > 0.05 {
            break;
        }
        k += 1;
        term *= (n - (k - 1)) as f64 / k as f64; // C(n, k) from C(n, k - 1)
    }
    (k > 0).then_some(k)
}

/// A median ratio over rounds and its 95 % interval, when there are enough rounds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Estimate {
    /// The median over rounds; `None` when no round gave both times.
    pub median: Option<f64>,
    /// Its 95 % interval ([`ratio_interval`]); `None` below 6 rounds.
    pub interval: Option<(f64, f64)>,
    /// Rounds run.
    pub rounds: usize,
    /// Rounds in which either run failed, which give no ratio.
    pub failed: usize,
}

/// Rounds an interval, and so a verdict, needs ([`median_interval_rank`]).
pub const ROUNDS_FOR_A_VERDICT: usize = 6;

impl Estimate {
    /// Of `times` over `baseline`, round by round.
    pub fn of(pair: Option<(&Vec<f64>, &Vec<f64>)>) -> Estimate {
        let (rounds, failed) = pair.map_or((0, 0), |(t, b)| {
            let ratios = t.iter().zip(b).map(|(t, b)| t / b);
            (ratios.len(), ratios.filter(|r| !r.is_finite()).count())
        });
        Estimate {
            median: pair.and_then(|(t, b)| median_ratio(t, b)),
            interval: pair.and_then(|(t, b)| ratio_interval(t, b)),
            rounds,
            failed,
        }
    }
}

/// One target's line: met or not when the 95 % interval lies on one side of the limit, within
/// noise otherwise; no verdict below [`ROUNDS_FOR_A_VERDICT`] rounds with a ratio, nor when
/// every round failed. `None` when the variants were not run at all.
pub fn verdict(
    what: &str,
    estimate: Estimate,
    limit: f64,
    lower_is_better: bool,
) -> Option<String> {
    if estimate.rounds == 0 {
        return None;
    }
    let (rounds, failed) = (estimate.rounds, estimate.failed);
    let Some(x) = estimate.median else {
        return Some(format!(
            "{what}: no verdict: {failed} of {rounds} rounds failed"
        ));
    };
    let meets = |v: f64| {
        if lower_is_better {
            v <= limit
        } else {
            v >= limit
        }
    };
    // Failed rounds are left out of the figures; say so beside them.
    let failures = if failed > 0 {
        format!(", {failed} of {rounds} rounds failed")
    } else {
        String::new()
    };
    let (outcome, interval) = match estimate.interval {
        Some((lo, hi)) => {
            let outcome = match (meets(lo), meets(hi)) {
                (true, true) => "met".to_string(),
                (false, false) => "NOT met".to_string(),
                _ => "within noise of the limit".to_string(),
            };
            (outcome, format!(", 95 % interval {lo:.2}–{hi:.2}"))
        }
        // The median alone cannot tell noise from a change.
        None => (
            format!(
                "too few rounds for a verdict ({} < {ROUNDS_FOR_A_VERDICT})",
                rounds - failed
            ),
            String::new(),
        ),
    };
    let sign = if lower_is_better { "<=" } else { ">=" };
    Some(format!(
        "{what} = {x:.2}{interval} (target {sign} {limit}{failures}): {outcome}"
    ))
}

/// The runs that failed, per variant, for the line that says so under the tables: a failed
/// run has no time, so the medians leave it out and would otherwise hide it.
#[derive(Debug, Default)]
pub struct Failures {
    /// Per variant, in the order first run: its runs, and why each failed one failed.
    variants: Vec<(String, usize, Vec<String>)>,
}

impl Failures {
    /// Counts one run of `variant`, failed when `outcome` says why.
    pub fn record<T>(&mut self, variant: &str, outcome: &Result<T, String>) {
        let index = match self.variants.iter().position(|(v, ..)| v == variant) {
            Some(i) => i,
            None => {
                self.variants.push((variant.to_string(), 0, Vec::new()));
                self.variants.len() - 1
            }
        };
        let (_, runs, reasons) = &mut self.variants[index];
        *runs += 1;
        if let Err(reason) = outcome {
            reasons.push(reason.clone());
        }
    }

    /// Adds `other`'s runs, whose variants are other than these (another workload's).
    pub fn extend(&mut self, other: Failures) {
        self.variants.extend(other.variants);
    }

    /// Whether any run failed.
    pub fn any(&self) -> bool {
        self.variants
            .iter()
            .any(|(_, _, reasons)| !reasons.is_empty())
    }

    /// `failed runs: mod-alloc 7 of 7 (exit status: 101), …`, each distinct reason once with
    /// how often it came; `None` when every run succeeded.
    pub fn summary(&self) -> Option<String> {
        let parts: Vec<String> = self
            .variants
            .iter()
            .filter(|(_, _, reasons)| !reasons.is_empty())
            .map(|(variant, runs, reasons)| {
                let mut distinct: Vec<(&str, usize)> = Vec::new();
                for reason in reasons {
                    match distinct.iter_mut().find(|(r, _)| r == reason) {
                        Some((_, n)) => *n += 1,
                        None => distinct.push((reason, 1)),
                    }
                }
                let why: Vec<String> = distinct
                    .iter()
                    .map(|&(reason, n)| {
                        if n == reasons.len() {
                            reason.to_string()
                        } else {
                            format!("{n}x {reason}")
                        }
                    })
                    .collect();
                format!("{variant} {} of {runs} ({})", reasons.len(), why.join("; "))
            })
            .collect();
        (!parts.is_empty()).then(|| format!("failed runs: {}", parts.join(", ")))
    }
}

/// One run of a round, as the checks across the round see it.
#[derive(Clone, Debug)]
pub struct RoundRun {
    /// The variant's label.
    pub label: String,
    /// The label of the variant whose checksum this run's must equal: the untraced run with as
    /// many threads (or itself, for that one).
    pub checksum_reference: String,
    /// What a traced run must report having run with; `None` for other variants.
    pub expectation: Option<TracedExpectation>,
    /// What the run reported, or why it failed.
    pub outcome: Result<RunResult, String>,
}

/// What a traced run must report having run with, so that its time is that of the
/// configuration it is labelled with.
#[derive(Clone, Debug, PartialEq)]
pub struct TracedExpectation {
    /// The traceback limit it was asked for.
    pub nframe: usize,
    /// Whether it must walk frame pointers (the workspace forces them wherever the tracer has a
    /// walker): a build whose flags lost them unwinds, about 100x slower a frame.
    pub frame_pointers: bool,
    /// Whether a run that does not report these passes: in an A/B run the other revision's
    /// binary may predate the fields.
    pub fields_optional: bool,
}

/// Why a traced run did not run as `expected` (its `traceback_limit=` and `capture=`), if so.
pub fn traced_run_problem(run: &RunResult, expected: &TracedExpectation) -> Option<String> {
    let field = |key: &str| match run.field(key) {
        None if expected.fields_optional => Ok(None),
        None => Err(format!("no {key}= in its RESULT line")),
        Some(value) => Ok(Some(value)),
    };
    let checked = || -> Result<(), String> {
        if let Some(limit) = field("traceback_limit")? {
            if limit.parse() != Ok(expected.nframe) {
                return Err(format!(
                    "traceback limit {limit}, asked for {}",
                    expected.nframe
                ));
            }
        }
        if expected.frame_pointers {
            if let Some(capture) = field("capture")? {
                if capture != FRAME_POINTERS {
                    return Err(format!("capture {capture}, not {FRAME_POINTERS}"));
                }
            }
        }
        Ok(())
    };
    checked().err()
}

/// Fails every run of a round whose checksum differs from the one its reference reported in
/// the same round: it did other work than its baseline, so its time says nothing about the
/// tracer (a workload changed between the revisions of an A/B run, or a variant that broke
/// it). A reference that failed checks nothing. Then fails every traced run that did not run
/// as its variant expects ([`traced_run_problem`]).
pub fn check_round(round: &mut [RoundRun]) {
    // Taken before any run is failed here, so a mismatch fails only the run that differs.
    let checksums: BTreeMap<String, u64> = round
        .iter()
        .filter_map(|r| Some((r.label.clone(), r.outcome.as_ref().ok()?.checksum)))
        .collect();
    for run in round.iter_mut() {
        let Ok(result) = &run.outcome else {
            continue;
        };
        if let Some(&expected) = checksums.get(&run.checksum_reference) {
            if result.checksum != expected {
                run.outcome = Err(format!(
                    "checksum {}, {}'s {expected}",
                    result.checksum, run.checksum_reference
                ));
            }
        }
    }
    for run in round.iter_mut() {
        let (Ok(result), Some(expected)) = (&run.outcome, &run.expectation) else {
            continue;
        };
        if let Some(problem) = traced_run_problem(result, expected) {
            run.outcome = Err(problem);
        }
    }
}

/// The fastest of `times` over the fastest of `baseline`: on a shared machine, noise only ever
/// adds time, so for a workload with one mode the best round of each is the least disturbed
/// estimate of their ratio. Not for a multimodal one (`channel`, 0.11 s or 0.35 s untraced),
/// whose two best rounds can come from different modes.
pub fn best_ratio(times: &[f64], baseline: &[f64]) -> Option<f64> {
    let best = |v: &[f64]| {
        v.iter()
            .copied()
            .filter(|x| x.is_finite())
            .min_by(f64::total_cmp)
    };
    Some(best(times)? / best(baseline)?)
}

/// A Markdown table with a header row.
pub fn markdown_table(header: &[String], rows: &[Vec<String>]) -> String {
    let mut out = String::new();
    let line = |cells: &[String]| format!("| {} |\n", cells.join(" | "));
    out.push_str(&line(header));
    let rule: Vec<String> = header
        .iter()
        .enumerate()
        .map(|(i, _)| if i == 0 { ":--" } else { "--:" }.to_string())
        .collect();
    out.push_str(&line(&rule));
    for row in rows {
        out.push_str(&line(row));
    }
    out
}

/// One horizontal reference line on the chart.
pub struct Threshold {
    /// Height, in the chart's y units.
    pub y: f64,
    /// Its label.
    pub label: String,
}

/// An SVG line chart of `points` (x, y), x on a log2 axis (nframe), y linear from 1.0, with
/// dashed threshold lines. Plain SVG text, no plotting library.
pub fn overhead_svg(title: &str, points: &[(f64, f64)], thresholds: &[Threshold]) -> String {
    const W: f64 = 640.0;
    const H: f64 = 400.0;
    const LEFT: f64 = 70.0;
    const RIGHT: f64 = 30.0;
    const TOP: f64 = 50.0;
    const BOTTOM: f64 = 60.0;
    let xs: Vec<f64> = points.iter().map(|p| p.0.log2()).collect();
    let (x_min, x_max) = (
        xs.iter().copied().fold(f64::INFINITY, f64::min),
        xs.iter()
            .copied()
            .fold(f64::NEG_INFINITY, f64::max)
            .max(1.0),
    );
    let y_top = points
        .iter()
        .map(|p| p.1)
        .chain(thresholds.iter().map(|t| t.y))
        .fold(1.0f64, f64::max);
    // Round the y range up to a multiple of 0.1 with some headroom.
    let y_max = ((y_top * 1.08) * 10.0).ceil() / 10.0;
    let y_min = 1.0;
    let px = |x: f64| LEFT + (x - x_min) / (x_max - x_min).max(1e-9) * (W - LEFT - RIGHT);
    let py = |y: f64| TOP + (y_max - y) / (y_max - y_min).max(1e-9) * (H - TOP - BOTTOM);

    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="24" text-anchor="middle" font-size="15">{}</text>"#,
        W / 2.0,
        escape(title)
    );
    // Axes.
    let (x0, x1, y0, y1) = (LEFT, W - RIGHT, H - BOTTOM, TOP);
    let _ = writeln!(
        s,
        r#"<path d="M{x0},{y1} L{x0},{y0} L{x1},{y0}" fill="none" stroke="black"/>"#
    );
    // Y ticks every 0.1 (every 0.2 or 0.5 when the range is wide).
    let span = y_max - y_min;
    let step = if span > 4.0 {
        1.0
    } else if span > 2.0 {
        0.5
    } else if span > 1.0 {
        0.2
    } else {
        0.1
    };
    let mut y = y_min;
    while y <= y_max + 1e-9 {
        let yy = py(y);
        let _ = writeln!(
            s,
            r##"<line x1="{x0}" y1="{yy:.1}" x2="{x1}" y2="{yy:.1}" stroke="#e0e0e0"/><text x="{:.1}" y="{:.1}" text-anchor="end">{y:.1}x</text>"##,
            x0 - 6.0,
            yy + 4.0
        );
        y += step;
    }
    // X ticks at each point.
    for &(x, _) in points {
        let xx = px(x.log2());
        let _ = writeln!(
            s,
            r#"<line x1="{xx:.1}" y1="{y0}" x2="{xx:.1}" y2="{:.1}" stroke="black"/><text x="{xx:.1}" y="{:.1}" text-anchor="middle">{x}</text>"#,
            y0 + 5.0,
            y0 + 20.0
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">nframe (traceback limit, log scale)</text>"#,
        (x0 + x1) / 2.0,
        H - 15.0
    );
    let _ = writeln!(
        s,
        r#"<text x="18" y="{:.1}" text-anchor="middle" transform="rotate(-90 18 {:.1})">run time / untraced (median)</text>"#,
        (y0 + y1) / 2.0,
        (y0 + y1) / 2.0
    );
    for t in thresholds {
        let yy = py(t.y);
        let _ = writeln!(
            s,
            r##"<line x1="{x0}" y1="{yy:.1}" x2="{x1}" y2="{yy:.1}" stroke="#c0392b" stroke-dasharray="6,4"/><text x="{:.1}" y="{:.1}" text-anchor="end" fill="#c0392b">{}</text>"##,
            x1 - 4.0,
            yy - 5.0,
            escape(&t.label)
        );
    }
    let polyline: Vec<String> = points
        .iter()
        .map(|&(x, y)| format!("{:.1},{:.1}", px(x.log2()), py(y)))
        .collect();
    let _ = writeln!(
        s,
        r##"<polyline points="{}" fill="none" stroke="#2c6fbb" stroke-width="2.5"/>"##,
        polyline.join(" ")
    );
    for &(x, y) in points {
        let (xx, yy) = (px(x.log2()), py(y));
        let _ = writeln!(
            s,
            r##"<circle cx="{xx:.1}" cy="{yy:.1}" r="4" fill="#2c6fbb"/><text x="{xx:.1}" y="{:.1}" text-anchor="middle" fill="#2c6fbb">{y:.2}</text>"##,
            yy - 9.0
        );
    }
    s.push_str("</svg>\n");
    s
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_skips_failed_runs_and_averages_the_middle_pair() {
        assert_eq!(median(&[3.0, f64::NAN, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[f64::NAN]), None);
    }

    #[test]
    fn ratios_are_taken_round_by_round() {
        let t = [2.0, 30.0, 4.0];
        let b = [1.0, 10.0, 2.0];
        assert_eq!(median_ratio(&t, &b), Some(2.0));
    }

    #[test]
    fn differences_are_taken_round_by_round() {
        // Not the difference of the medians (3.0 - 2.9 = 0.1): round by round 1.0, 0.1, 5.0.
        let t = [2.0, 3.0, 10.0, f64::NAN];
        let b = [1.0, 2.9, 5.0, 1.0];
        assert_eq!(median_difference(&t, &b), Some(1.0));
        assert_eq!(median_difference(&[f64::NAN], &[1.0]), None);
    }

    #[test]
    fn the_interval_takes_the_binomial_ranks() {
        // Too few rounds for 95 %: all of 5 on one side has probability 2/32.
        assert_eq!(median_interval_rank(5), None);
        // n = 6: 2/64 <= 5 %, so the extremes. n = 9: P(B <= 1) = 10/512, 2 * that = 3.9 %;
        // P(B <= 2) = 46/512, too much. n = 20: P(B <= 5) = 0.0207, P(B <= 6) = 0.0577.
        assert_eq!(median_interval_rank(6), Some(1));
        assert_eq!(median_interval_rank(9), Some(2));
        assert_eq!(median_interval_rank(20), Some(6));
        let b = [1.0; 10];
        let t = [1.5, 0.9, 1.2, 1.0, 1.1, 0.95, 1.3, f64::NAN, 1.05, 1.15];
        // Nine finite ratios: 0.9 0.95 1.0 1.05 1.1 1.15 1.2 1.3 1.5 (one round failed).
        assert_eq!(ratio_interval(&t, &b), Some((0.95, 1.3)));
        assert_eq!(ratio_interval(&t[..5], &b[..5]), None);
    }

    #[test]
    fn a_verdict_needs_the_whole_interval_on_one_side_of_the_limit() {
        let at = |median, interval| Estimate {
            median: Some(median),
            interval,
            rounds: 7,
            failed: 0,
        };
        let line = |e| verdict("x", e, 1.3, true).unwrap();
        assert!(line(at(1.2, Some((1.1, 1.28)))).ends_with(": met"));
        assert!(line(at(1.4, Some((1.31, 1.5)))).ends_with(": NOT met"));
        let noisy = line(at(1.29, Some((1.2, 1.4))));
        assert!(noisy.contains("95 % interval 1.20–1.40"), "{noisy}");
        assert!(noisy.ends_with(": within noise of the limit"), "{noisy}");
        // Higher is better for peers.
        let peer = verdict("dhat", at(12.0, Some((10.5, 14.0))), 10.0, false).unwrap();
        assert!(peer.ends_with(": met"), "{peer}");
        // Variants that were not run: no line at all.
        assert_eq!(verdict("x", Estimate::of(None), 1.3, true), None);
    }

    #[test]
    fn failed_rounds_never_make_a_verdict() {
        let b = vec![1.0; 7];
        // Every round of the peer crashed: said, not left out as if it had never run.
        let crashed = Estimate::of(Some((&vec![f64::NAN; 7], &b)));
        assert_eq!(
            verdict("mod-alloc / nframe 16", crashed, 1.0, false).as_deref(),
            Some("mod-alloc / nframe 16: no verdict: 7 of 7 rounds failed")
        );
        // Three crashed rounds leave four ratios, all under the limit: too few for an interval,
        // so no "met" from the median alone.
        let t = vec![1.1, f64::NAN, 1.2, f64::NAN, 1.1, f64::NAN, 1.0];
        let few = Estimate::of(Some((&t, &b)));
        assert_eq!((few.rounds, few.failed, few.interval), (7, 3, None));
        assert_eq!(
            verdict("x", few, 1.3, true).as_deref(),
            Some("x = 1.10 (target <= 1.3, 3 of 7 rounds failed): too few rounds for a verdict (4 < 6)")
        );
        // Enough rounds left for an interval: a verdict, with the failures beside it.
        let t = vec![1.1, 1.0, 1.2, f64::NAN, 1.1, 1.05, 1.0];
        let line = verdict("x", Estimate::of(Some((&t, &b))), 1.3, true).unwrap();
        assert!(
            line.contains("1 of 7 rounds failed") && line.ends_with(": met"),
            "{line}"
        );
        // Five good rounds: still too few.
        let line = verdict("x", Estimate::of(Some((&t[..5].to_vec(), &b))), 1.3, true).unwrap();
        assert!(
            line.ends_with("too few rounds for a verdict (4 < 6)"),
            "{line}"
        );
    }

    #[test]
    fn failures_are_counted_per_variant_with_their_reasons() {
        let mut failures = Failures::default();
        let ok: Result<(), String> = Ok(());
        let crashed: Result<(), String> = Err("exit status: 101".into());
        let wrong: Result<(), String> = Err("checksum 5, untraced's 4".into());
        for _ in 0..3 {
            failures.record("untraced", &ok);
            failures.record("mod-alloc", &crashed);
        }
        failures.record("nframe 16", &ok);
        failures.record("nframe 16", &crashed);
        failures.record("nframe 16", &wrong);
        failures.record("nframe 16", &crashed);
        assert!(failures.any());
        assert_eq!(
            failures.summary().as_deref(),
            Some(
                "failed runs: mod-alloc 3 of 3 (exit status: 101), nframe 16 3 of 4 \
                 (2x exit status: 101; 1x checksum 5, untraced's 4)"
            )
        );
        let mut clean = Failures::default();
        clean.record("untraced", &ok);
        assert!(!clean.any());
        assert_eq!(clean.summary(), None);
    }

    fn round_run(label: &str, reference: &str, checksum: Option<u64>) -> RoundRun {
        RoundRun {
            label: label.into(),
            checksum_reference: reference.into(),
            expectation: None,
            outcome: checksum
                .map(|checksum| RunResult {
                    seconds: 1.0,
                    checksum,
                    fields: BTreeMap::new(),
                })
                .ok_or_else(|| "exit status: 101".to_string()),
        }
    }

    #[test]
    fn a_checksum_unlike_its_references_fails_that_run_only() {
        let mut round = vec![
            round_run("untraced", "untraced", Some(40)),
            round_run("nframe 16", "untraced", Some(40)),
            round_run("mod-alloc", "untraced", Some(41)),
            round_run("untraced 2T", "untraced 2T", Some(80)),
            round_run("nframe 16 2T", "untraced 2T", Some(80)),
            // A/B: the other revision's run is checked against this one's, which is checked
            // against untraced; a mismatch of `after` would not hide one of `before`.
            round_run("after 16", "untraced", Some(39)),
            round_run("before 16", "after 16", Some(38)),
        ];
        check_round(&mut round);
        let outcome = |label: &str| {
            round.iter().find(|r| r.label == label).map(|r| {
                r.outcome
                    .as_ref()
                    .map(|r| r.checksum)
                    .map_err(String::as_str)
            })
        };
        assert_eq!(outcome("nframe 16"), Some(Ok(40)));
        assert_eq!(
            outcome("mod-alloc"),
            Some(Err("checksum 41, untraced's 40"))
        );
        assert_eq!(outcome("nframe 16 2T"), Some(Ok(80)));
        assert_eq!(outcome("after 16"), Some(Err("checksum 39, untraced's 40")));
        assert_eq!(
            outcome("before 16"),
            Some(Err("checksum 38, after 16's 39"))
        );
        // A reference that failed checks nothing; a failed run keeps its own reason.
        let mut round = vec![
            round_run("untraced", "untraced", None),
            round_run("nframe 16", "untraced", Some(41)),
        ];
        check_round(&mut round);
        assert!(round[0].outcome.is_err() && round[1].outcome.is_ok());
    }

    #[test]
    fn a_traced_run_must_have_run_with_the_limit_and_capture_asked_for() {
        let traced = |fields: &str| {
            RunResult::parse(&format!("RESULT seconds=1 checksum=4 mode=on {fields}")).unwrap()
        };
        let expected = TracedExpectation {
            nframe: 16,
            frame_pointers: true,
            fields_optional: false,
        };
        let problem = |fields: &str, e: &TracedExpectation| traced_run_problem(&traced(fields), e);
        let good = "nframe=16 traceback_limit=16 storage=shadow capture=frame-pointers";
        assert_eq!(problem(good, &expected), None);
        assert_eq!(
            problem(
                "nframe=16 traceback_limit=8 capture=frame-pointers",
                &expected
            )
            .as_deref(),
            Some("traceback limit 8, asked for 16")
        );
        assert_eq!(
            problem("traceback_limit=16 capture=unwinder", &expected).as_deref(),
            Some("capture unwinder, not frame-pointers")
        );
        assert_eq!(
            problem("nframe=16", &expected).as_deref(),
            Some("no traceback_limit= in its RESULT line")
        );
        // Where no walker exists, the unwinder is what the build can do.
        let unwinding = TracedExpectation {
            frame_pointers: false,
            ..expected.clone()
        };
        assert_eq!(
            problem("traceback_limit=16 capture=unwinder", &unwinding),
            None
        );
        // Another revision's binary may predate the fields, but what it does say must hold.
        let older = TracedExpectation {
            fields_optional: true,
            ..expected.clone()
        };
        assert_eq!(problem("nframe=16", &older), None);
        assert!(problem("traceback_limit=1", &older).is_some());
        // In a round, the run fails with the reason.
        let mut round = vec![round_run("untraced", "untraced", Some(4))];
        let mut wrong = round_run("nframe 16", "untraced", Some(4));
        wrong.outcome = Ok(traced("traceback_limit=16 capture=unwinder"));
        wrong.expectation = Some(expected);
        round.push(wrong);
        check_round(&mut round);
        assert_eq!(
            round[1].outcome,
            Err("capture unwinder, not frame-pointers".to_string())
        );
    }

    #[test]
    fn best_ratio_divides_the_fastest_rounds_and_skips_failed_ones() {
        assert_eq!(best_ratio(&[3.0, f64::NAN, 2.5], &[2.0, 1.25]), Some(2.0));
        assert_eq!(best_ratio(&[f64::NAN], &[1.0]), None);
    }

    #[test]
    fn the_chart_is_one_svg_with_a_polyline_through_every_point() {
        let svg = overhead_svg(
            "a & b",
            &[(1.0, 1.1), (4.0, 1.3), (16.0, 1.6)],
            &[Threshold {
                y: 1.3,
                label: "target".into(),
            }],
        );
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 1);
        assert_eq!(svg.matches("<circle").count(), 3);
        assert!(svg.contains("a &amp; b"));
    }
}
