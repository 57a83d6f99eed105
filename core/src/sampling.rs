//! Estimates from sampled snapshots.
//!
//! An always-on tracer samples: on average one block per `interval` bytes allocated, the gaps
//! drawn from an exponential distribution, as tcmalloc and Go's heap profiler do. A block of
//! `size` bytes is then sampled with probability `1 - exp(-size / interval)`, so each sampled
//! block stands for `1 / p` blocks of its size: statistics and diffs scale every sampled trace by
//! that weight, which makes them unbiased estimates of what full tracing would report.

/// How many blocks a sampled block of `size` bytes stands for, with one sample per `interval`
/// bytes on average (`interval` 0: every block is traced, weight 1).
pub fn sample_weight(size: u64, interval: u64) -> f64 {
    if interval == 0 {
        return 1.0;
    }
    // 1 - exp(-x), computed as -expm1(-x) to stay exact for blocks far smaller than the interval.
    let p = -libm::expm1(-(size as f64) / interval as f64);
    if p > 0.0 {
        1.0 / p
    } else {
        // A zero-size block: sampled only by the gap's own randomness; count it once.
        1.0
    }
}

/// The bytes a sampled block of `size` bytes stands for, rounded (`size` itself when
/// `interval` is 0): what running totals such as the traced size add and remove for it.
#[inline]
pub fn scaled_size(size: u64, interval: u64) -> u64 {
    match interval {
        0 => size,
        interval => libm::round(size as f64 * sample_weight(size, interval)) as u64,
    }
}

/// The bytes all of `sizes` stand for, saturating: sizes come from files too, and a forged one
/// must not overflow the total.
pub fn scaled_total(sizes: impl IntoIterator<Item = u64>, interval: u64) -> u64 {
    sizes.into_iter().fold(0, |total, size| {
        total.saturating_add(scaled_size(size, interval))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn big_blocks_stand_for_themselves_and_small_ones_for_many() {
        assert_eq!(sample_weight(100, 0), 1.0);
        assert!((sample_weight(1 << 30, 512 * 1024) - 1.0).abs() < 1e-9);
        // A block 1/1000 of the interval is sampled about once in 1000.
        let w = sample_weight(512, 512 * 1000);
        assert!((w - 1000.5).abs() < 0.01, "{w}");
        assert_eq!(sample_weight(0, 4096), 1.0);
    }

    #[test]
    fn statistics_of_a_sampled_snapshot_are_scaled_estimates() {
        use crate::snapshot::snapshot_from_traces;
        use crate::{Frame, KeyType, Traceback};
        let small = Traceback::new(alloc::vec![Frame::new("src/small.rs", 1)]);
        let big = Traceback::new(alloc::vec![Frame::new("src/big.rs", 2)]);
        let mut s = snapshot_from_traces(1, [(0, 512, small), (0, 1 << 30, big)]);
        let exact = s.statistics(KeyType::Lineno, false).unwrap();
        assert_eq!((exact[1].size, exact[1].count), (512, 1));
        s.sample_interval = 512 * 1000;
        let stats = s.statistics(KeyType::Lineno, false).unwrap();
        assert_eq!((stats[0].size, stats[0].count), (1 << 30, 1));
        // One sampled 512-byte block stands for about 1000.5 of them.
        assert_eq!((stats[1].size, stats[1].count), (512_256, 1001));
    }
}
