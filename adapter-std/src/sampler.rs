//! Poisson sampling, for tracing that stays on in production.
//!
//! With a sample interval of N bytes, each thread counts down the bytes it allocates and
//! records only the allocation that crosses zero, then draws the next gap from an exponential
//! distribution of mean N (as tcmalloc and Go's heap profiler do). Unsampled allocations cost a
//! thread-local subtraction. Snapshots carry N, and statistics scale each sampled block by the
//! number of blocks it stands for (`tracemalloc_core::sampling`).
//!
//! Frees must not look up the trace table for every block, most of which were never sampled:
//! a small counting filter over pages (64 Ki one-byte buckets, 64 KiB) says "certainly not
//! sampled" for almost all of them, and only the rest take the traced path. Buckets follow the
//! page number, so frees of neighbouring blocks read the same byte: a filter hashed per block
//! missed the cache on most frees, and that miss was most of what sampling cost. A page holding
//! a sampled block sends its other frees down the traced path too: at the default interval one
//! page in 128 of the live heap holds a sample, so about 1 % of frees, until the live heap
//! nears 64 Ki samples (32 GiB at 512 KiB) and most buckets are marked.

use core::cell::Cell;
use core::sync::atomic::{AtomicU64, AtomicU8, Ordering::Relaxed};

/// Mean bytes between samples; 0 records every block.
static INTERVAL: AtomicU64 = AtomicU64::new(0);

/// Longest interval honoured (1 TiB, the largest traced block): a block then stands for at
/// most about this many bytes, so sums of them stay far from `i64` overflow.
pub(crate) const MAX_INTERVAL: u64 = 1 << 40;

const BUCKETS: usize = 1 << 16;
#[allow(clippy::declare_interior_mutable_const)]
const ZERO: AtomicU8 = AtomicU8::new(0);
/// How many live sampled blocks hash to each bucket (saturating: a full bucket stays "maybe").
static MAYBE_SAMPLED: [AtomicU8; BUCKETS] = [ZERO; BUCKETS];

/// Counts the intervals configured: the allocator's state byte names the current one while
/// sampling ([`state`]), and a thread's countdown remembers the one it was drawn for.
static CONFIGURATION: AtomicU8 = AtomicU8::new(0);

/// A thread's place in its sampling: bytes left before the next sample, the generator's state
/// (0: not seeded yet), and the state byte of the configuration the gap was drawn for. A gap
/// drawn for another configuration is drawn again: a thread that drew a 1 TiB gap would
/// otherwise sample nothing after a restart at 512 KiB until it had allocated that terabyte.
/// The allocator already holds the state byte, so the test costs a compare.
struct Countdown {
    left: Cell<i64>,
    rng: Cell<u64>,
    drawn_for: Cell<u8>,
}

thread_local! {
    static COUNTDOWN: Countdown = const {
        Countdown {
            left: Cell::new(0),
            rng: Cell::new(0),
            drawn_for: Cell::new(0),
        }
    };
}

/// Sets the interval (0: trace every block) and forgets every mark; a new interval starts a
/// configuration. Called only while tracing is off, so the state byte the arming stores names
/// the configuration as long as sampling lasts.
pub(crate) fn configure(interval: u64) {
    let interval = interval.min(MAX_INTERVAL);
    if INTERVAL.swap(interval, Relaxed) != interval {
        CONFIGURATION.fetch_add(1, Relaxed);
    }
    forget_marks();
}

/// Forgets every mark (`clear()`: no trace is left), keeping the interval. `clear()` does not
/// set the interval again: a start racing with it may have just set another one.
pub(crate) fn forget_marks() {
    for bucket in &MAYBE_SAMPLED {
        bucket.store(0, Relaxed);
    }
}

/// The state byte that names the current configuration while sampling: one of the 252 values
/// from `state::SAMPLING` up (a thread idle through exactly a multiple of 252 restarts keeps
/// its gap).
pub(crate) fn state() -> u8 {
    const FIRST: u8 = crate::state::SAMPLING;
    FIRST + CONFIGURATION.load(Relaxed) % (u8::MAX - FIRST + 1)
}

/// The mean bytes between samples; 0 when every block is traced.
#[inline(always)]
pub(crate) fn interval() -> u64 {
    INTERVAL.load(Relaxed)
}

/// Counts `size` bytes off this thread's countdown when that does not reach a sample point,
/// and says whether it did: the allocator's inline test while sampling. When it returns
/// false nothing changed, and [`take`] decides on the same bytes. A thread's countdown starts
/// at 0, so its first allocation (never of 0 bytes) goes to [`take`], which seeds it; so does
/// its first after the interval changed, as the allocator's `state` byte then names another
/// configuration than the one the countdown was drawn for.
#[inline(always)]
pub(crate) fn skip(size: usize, state: u8) -> bool {
    COUNTDOWN
        .try_with(|countdown| {
            let left = countdown.left.get().wrapping_sub(size as i64);
            let skip = left > 0 && countdown.drawn_for.get() == state;
            if skip {
                countdown.left.set(left);
            }
            skip
        })
        .unwrap_or(true)
}

/// Whether this allocation of `size` bytes is to be recorded.
#[inline(always)]
pub(crate) fn take(size: usize) -> bool {
    let interval = interval();
    if interval == 0 {
        return true;
    }
    COUNTDOWN
        .try_with(|countdown| {
            let (rng, current) = (countdown.rng.get(), state());
            // A thread's first allocation, or its first since the configuration changed,
            // starts a countdown.
            let fresh = rng == 0 || countdown.drawn_for.get() != current;
            let left = (!fresh).then(|| countdown.left.get());
            if let Some(left) = left.filter(|&left| left - size as i64 > 0) {
                countdown.left.set(left - size as i64);
                return false;
            }
            let (crossed, left, rng) = count_down(left, size, rng, interval);
            countdown.left.set(left);
            countdown.rng.set(rng);
            countdown.drawn_for.set(current);
            crossed
        })
        .unwrap_or(false)
}

/// The countdown past an allocation of `size` bytes that reaches or starts it (`left`: the
/// bytes that were left to the next sample point, `None` for a fresh countdown): whether the
/// allocation is sampled, the bytes left after it, and the generator's state.
///
/// An allocation that covers sample points is sampled once, and the countdown restarts after
/// its end, so a block of `size` bytes is sampled with probability exactly
/// 1 - exp(-size / interval). The gaps are memoryless: the distance from the block's end to the
/// next point is a gap of its own, one draw however many points the block covers (drawing
/// them all took seconds for a 1 TiB request at a 4 KiB interval, and forever at 1).
#[cold]
fn count_down(left: Option<i64>, size: usize, rng: u64, interval: u64) -> (bool, i64, u64) {
    let (mut rng, size) = (rng, size as i64);
    let left = match left {
        Some(left) => left - size,
        None => {
            // A fresh countdown: sampled only if a gap drawn from the block's start falls
            // inside it.
            let (gap, next) = next_gap(rng, interval);
            rng = next;
            gap - size
        }
    };
    if left > 0 {
        return (false, left, rng);
    }
    let (gap, next) = next_gap(rng, interval);
    (true, gap, next)
}

/// Draws an exponential gap of mean `interval` bytes.
#[cold]
fn next_gap(rng: u64, interval: u64) -> (i64, u64) {
    let mut state = if rng == 0 {
        // Seeded from a stack address: it differs between threads (and runs, with ASLR).
        let local = 0u8;
        (&local as *const u8 as u64) ^ 0x9E37_79B9_7F4A_7C15
    } else {
        rng
    };
    // splitmix64
    state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    // u in (0, 1]: 53 random bits, never 0 so the logarithm is finite.
    let u = ((z >> 11) + 1) as f64 / (1u64 << 53) as f64;
    let gap = -u.ln() * interval as f64;
    (gap.min(i64::MAX as f64 / 2.0) as i64 + 1, state.max(1))
}

#[inline(always)]
fn bucket(addr: usize) -> &'static AtomicU8 {
    // Consecutive pages, consecutive buckets; the fold keeps heaps 256 MiB apart from sharing
    // buckets page for page.
    let page = addr >> 12;
    &MAYBE_SAMPLED[(page ^ (page >> 16).wrapping_mul(0x9E37)) & (BUCKETS - 1)]
}

/// Notes that the block at `addr` is traced while sampling.
pub(crate) fn mark(addr: usize) {
    let _ = bucket(addr).fetch_update(Relaxed, Relaxed, |n| n.checked_add(1));
}

/// Notes that the traced block at `addr` is gone.
pub(crate) fn unmark(addr: usize) {
    let _ = bucket(addr).fetch_update(Relaxed, Relaxed, |n| match n {
        0 | u8::MAX => None,
        n => Some(n - 1),
    });
}

/// Whether the block at `addr` may be traced: always true without sampling.
#[inline(always)]
pub(crate) fn maybe_traced(addr: usize) -> bool {
    interval() == 0 || maybe_sampled(addr)
}

/// Whether the block at `addr` may have been sampled, for callers that know sampling is on.
#[inline(always)]
pub(crate) fn maybe_sampled(addr: usize) -> bool {
    bucket(addr).load(Relaxed) != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_average_the_interval() {
        let mut rng = 0;
        let mut total = 0i64;
        let n = 100_000;
        for _ in 0..n {
            let (gap, next) = next_gap(rng, 4096);
            assert!(gap >= 1);
            total += gap;
            rng = next;
        }
        let mean = total as f64 / n as f64;
        assert!((mean - 4096.0).abs() < 4096.0 * 0.02, "mean gap {mean}");
    }

    #[test]
    fn a_block_is_sampled_with_probability_one_minus_exp_of_its_size_over_the_interval() {
        for (size, interval) in [(4096usize, 4096u64), (1000, 4096), (20_000, 4096)] {
            let (mut left, mut rng, mut sampled) = (None, 0, 0u32);
            let n = 100_000;
            for _ in 0..n {
                let (crossed, next_left, next_rng) = count_down(left, size, rng, interval);
                sampled += u32::from(crossed);
                (left, rng) = (Some(next_left), next_rng);
            }
            let expected = 1.0 - (-(size as f64) / interval as f64).exp();
            let got = f64::from(sampled) / f64::from(n);
            assert!(
                (got - expected).abs() < 0.01,
                "{size} B: {got} against {expected}"
            );
        }
    }

    #[test]
    fn a_huge_block_draws_one_gap_past_its_end() {
        // 2^40 sample points inside: drawn one by one, this would not end.
        let (crossed, left, _) = count_down(Some(10), 1 << 40, 12345, 1);
        assert!(crossed);
        assert!(left >= 1);
        let (crossed, _, _) = count_down(None, 1 << 40, 0, 1);
        assert!(crossed);
    }

    #[test]
    fn the_filter_counts_and_saturates() {
        let addr = 0x7000_1230;
        assert_eq!(bucket(addr).load(Relaxed), 0);
        mark(addr);
        mark(addr);
        unmark(addr);
        assert_eq!(bucket(addr).load(Relaxed), 1);
        unmark(addr);
        unmark(addr); // never below zero
        assert_eq!(bucket(addr).load(Relaxed), 0);
    }
}
