//! Medians, Markdown tables and the hand-written SVG chart of the `compare` driver.
//!
//! Benchmarks on a shared 2-core machine are noisy, so every figure is a median: the median wall
//! time of a variant over the rounds, and the median over rounds of the per-round ratio against
//! the baseline run in the same round (which cancels slow drifts in machine load).

use std::fmt::Write as _;

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

/// The fastest of `times` over the fastest of `baseline`: on a shared machine, noise only ever
/// adds time, so the best round of each is the least disturbed estimate of their ratio.
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
