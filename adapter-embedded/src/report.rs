//! On-device statistics: the top allocation sites and their change since a baseline.
//!
//! A site is one interned traceback (Python's `'traceback'` key): on the device there are no
//! file names or lines, so sites show as call-site addresses and the host names them later
//! (`tracemalloc stats --elf`). Totals are tallied per traceback id into an array the caller
//! owns, one [`SiteTotals`] (8 bytes) per traceback entry; a baseline is a copy of that array,
//! so "change since the baseline" is exact for every site, however many there are, within a
//! RAM budget fixed at compile time. Tallying walks the trace table once: O(slots).

use core::cmp::Reverse;

use heapless::Vec;
use tracemalloc_core::{Counters, TracebackId, Tracer};

/// Live bytes and blocks of one site.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SiteTotals {
    /// Bytes in live blocks (saturating).
    pub size: u32,
    /// Live blocks.
    pub count: u32,
}

impl SiteTotals {
    /// No bytes, no blocks.
    pub const ZERO: SiteTotals = SiteTotals { size: 0, count: 0 };
}

/// Sums the live blocks of `tracer` per traceback id into `totals` (indexed by id). Ids beyond
/// `totals` are not counted.
pub fn tally(tracer: &Tracer<'_>, totals: &mut [SiteTotals]) {
    totals.fill(SiteTotals::ZERO);
    for slot in tracer.table().iter() {
        if let Some(t) = totals.get_mut(slot.traceback().index() as usize) {
            let size = u32::try_from(slot.size()).unwrap_or(u32::MAX);
            t.size = t.size.saturating_add(size);
            t.count = t.count.saturating_add(1);
        }
    }
}

/// How [`top_sites`] ranks sites.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Order {
    /// Largest live size first (Python's `statistics()`), then most blocks.
    Size,
    /// Largest absolute size change since the baseline first, then size, then absolute block
    /// change (Python's `compare_to()`).
    Growth,
}

/// One allocation site in a report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Site<const NFRAME: usize> {
    /// The site's traceback id (valid until tracing stops).
    pub traceback: TracebackId,
    /// Call sites, most recent first (see [`crate::stack`] for the address convention).
    pub frames: Vec<usize, NFRAME>,
    /// Depth of the stack before the traceback limit cut it.
    pub total_nframe: u16,
    /// Bytes in live blocks.
    pub size: u32,
    /// Live blocks.
    pub count: u32,
    /// Change of `size` since the baseline.
    pub size_diff: i64,
    /// Change of `count` since the baseline.
    pub count_diff: i64,
}

/// A report: the counters and the top sites, as the device prints it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report<const N: usize, const NFRAME: usize> {
    /// How `sites` are ranked.
    pub order: Order,
    /// The tracer's counters.
    pub counters: Counters,
    /// Bytes the wrapped heap says are in use.
    pub heap_used: usize,
    /// Bytes of tracer storage (trace table, tracebacks, site totals).
    pub tracer_memory: usize,
    /// Sites that qualified for the ranking (nonzero size, or nonzero change for growth).
    pub site_count: usize,
    /// The top sites, best first.
    pub sites: Vec<Site<NFRAME>, N>,
}

type Key = (u64, u64, u64, u64, Reverse<u32>);

fn key(order: Order, now: SiteTotals, diff: (i64, i64), id: u32) -> Key {
    match order {
        Order::Size => (now.size.into(), now.count.into(), 0, 0, Reverse(id)),
        Order::Growth => (
            diff.0.unsigned_abs(),
            now.size.into(),
            diff.1.unsigned_abs(),
            now.count.into(),
            Reverse(id),
        ),
    }
}

/// The `N` best sites of `tracer` by `order`, from `totals` (just tallied) and `baseline` (a
/// tally taken earlier, or zeros). Returns them with the number of qualifying sites.
pub fn top_sites<const N: usize, const NFRAME: usize>(
    tracer: &Tracer<'_>,
    totals: &[SiteTotals],
    baseline: &[SiteTotals],
    order: Order,
) -> (Vec<Site<NFRAME>, N>, usize) {
    let ids = tracer.tracebacks().len().min(totals.len());
    // Best first; the worst kept is last.
    let mut best: Vec<(Key, u32), N> = Vec::new();
    let mut qualifying = 0;
    for (id, &now) in totals.iter().enumerate().take(ids) {
        let then = baseline.get(id).copied().unwrap_or_default();
        let diff = (
            i64::from(now.size) - i64::from(then.size),
            i64::from(now.count) - i64::from(then.count),
        );
        let qualifies = match order {
            Order::Size => now.count > 0,
            Order::Growth => diff != (0, 0),
        };
        if !qualifies {
            continue;
        }
        qualifying += 1;
        let k = key(order, now, diff, id as u32);
        if best.is_full() {
            match best.last() {
                Some((worst, _)) if k > *worst => {
                    best.pop();
                }
                _ => continue,
            }
        }
        let at = best
            .iter()
            .position(|(other, _)| k > *other)
            .unwrap_or(best.len());
        // Cannot fail: there is room after the pop above.
        let _ = best.insert(at, (k, id as u32));
    }
    let mut sites = Vec::new();
    for (_, id) in best {
        let id = id as usize;
        let traceback = TracebackId::from_index(id as u32);
        let tb = tracer.tracebacks().get(traceback);
        let now = totals[id];
        let then = baseline.get(id).copied().unwrap_or_default();
        let mut frames = Vec::new();
        for &f in tb.frames.iter().take(NFRAME) {
            let _ = frames.push(f);
        }
        let _ = sites.push(Site {
            traceback,
            frames,
            total_nframe: tb.total_nframe,
            size: now.size,
            count: now.count,
            size_diff: i64::from(now.size) - i64::from(then.size),
            count_diff: i64::from(now.count) - i64::from(then.count),
        });
    }
    (sites, qualifying)
}

#[cfg(feature = "defmt")]
mod log {
    use super::{Order, Report, Site};

    /// A signed number printed with its sign, as Python prints diffs (`+12 B`).
    struct Signed(i64);

    impl defmt::Format for Signed {
        fn format(&self, f: defmt::Formatter<'_>) {
            let sign = if self.0 >= 0 { "+" } else { "" };
            defmt::write!(f, "{=str}{=i64}", sign, self.0);
        }
    }

    impl<const NFRAME: usize> defmt::Format for Site<NFRAME> {
        fn format(&self, f: defmt::Formatter<'_>) {
            defmt::write!(
                f,
                "size={=u32} B ({}) count={=u32} ({}) frames={=[?]:#x}",
                self.size,
                Signed(self.size_diff),
                self.count,
                Signed(self.count_diff),
                self.frames.as_slice(),
            );
        }
    }

    impl<const N: usize, const NFRAME: usize> Report<N, NFRAME> {
        /// Prints the report through `defmt::info!`, one line per site.
        pub fn log(&self) {
            let c = &self.counters;
            defmt::info!(
                "tracemalloc: traced current={=u64} B peak={=u64} B blocks={=u64} untraced={=u64} blocks/{=u64} B heap used={=usize} B tracer memory={=usize} B",
                c.current,
                c.peak,
                c.traces,
                c.untraced_blocks,
                c.untraced_bytes,
                self.heap_used,
                self.tracer_memory,
            );
            match self.order {
                Order::Size => defmt::info!(
                    "tracemalloc: top {=usize} of {=usize} sites by size",
                    self.sites.len(),
                    self.site_count
                ),
                Order::Growth => defmt::info!(
                    "tracemalloc: top {=usize} of {=usize} sites by growth since baseline",
                    self.sites.len(),
                    self.site_count
                ),
            }
            for (i, site) in self.sites.iter().enumerate() {
                defmt::info!("#{=usize} {}", i + 1, site);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    type Arrays = tracemalloc_core::TracerArrays<64, 16, 64>;

    #[test]
    fn tally_sums_blocks_per_traceback() {
        let mut a = Arrays::new();
        let mut t = Tracer::new(a.storage());
        t.record_alloc(0, 0x100, 10, &[0xa1], 1);
        t.record_alloc(0, 0x200, 20, &[0xa1], 1);
        t.record_alloc(0, 0x300, 5, &[0xb1, 0xc1], 2);
        let mut totals = [SiteTotals::ZERO; 16];
        tally(&t, &mut totals);
        let a1 = t.intern(0, &[0xa1], 1).index() as usize;
        let b1 = t.intern(0, &[0xb1, 0xc1], 2).index() as usize;
        assert_eq!(totals[a1], SiteTotals { size: 30, count: 2 });
        assert_eq!(totals[b1], SiteTotals { size: 5, count: 1 });
        assert_eq!(totals.iter().map(|s| s.size).sum::<u32>(), 35);
    }

    #[test]
    fn top_sites_by_size_keeps_the_n_largest_in_order() {
        let mut a = Arrays::new();
        let mut t = Tracer::new(a.storage());
        // Site k has k blocks of 10 bytes.
        let mut addr = 0x1000;
        for k in 1..=6usize {
            for _ in 0..k {
                t.record_alloc(0, addr, 10, &[k * 0x10 + 1], 1);
                addr += 0x10;
            }
        }
        let mut totals = [SiteTotals::ZERO; 16];
        tally(&t, &mut totals);
        let (sites, n) = top_sites::<3, 4>(&t, &totals, &[], Order::Size);
        assert_eq!(n, 6);
        let sizes: std::vec::Vec<u32> = sites.iter().map(|s| s.size).collect();
        assert_eq!(sizes, [60, 50, 40]);
        assert_eq!(sites[0].frames.as_slice(), &[0x61]);
        assert_eq!(sites[0].count, 6);
        assert_eq!(sites[0].size_diff, 60);
    }

    #[test]
    fn growth_ranks_by_absolute_change_since_the_baseline() {
        let mut a = Arrays::new();
        let mut t = Tracer::new(a.storage());
        let (steady, leak, shrink) = (&[0x11usize][..], &[0x21usize][..], &[0x31usize][..]);
        t.record_alloc(0, 0x100, 100, steady, 1);
        t.record_alloc(0, 0x200, 64, shrink, 1);
        t.record_alloc(0, 0x300, 64, shrink, 1);
        let mut baseline = [SiteTotals::ZERO; 16];
        tally(&t, &mut baseline);
        // Afterwards: the leak grows by 3 x 16 B, one shrink block goes, the steady one stays.
        for i in 0..3 {
            t.record_alloc(0, 0x400 + i * 0x10, 16, leak, 1);
        }
        t.record_free(0, 0x300);
        let mut totals = [SiteTotals::ZERO; 16];
        tally(&t, &mut totals);
        let (sites, n) = top_sites::<4, 2>(&t, &totals, &baseline, Order::Growth);
        assert_eq!(n, 2, "the steady site did not change");
        assert_eq!(sites[0].frames.as_slice(), &[0x31]);
        assert_eq!((sites[0].size_diff, sites[0].count_diff), (-64, -1));
        assert_eq!(sites[1].frames.as_slice(), &[0x21]);
        assert_eq!(
            (sites[1].size, sites[1].size_diff, sites[1].count_diff),
            (48, 48, 3)
        );
    }

    #[test]
    fn sites_freed_entirely_still_show_their_loss() {
        let mut a = Arrays::new();
        let mut t = Tracer::new(a.storage());
        t.record_alloc(0, 0x100, 8, &[0x11], 1);
        let mut baseline = [SiteTotals::ZERO; 16];
        tally(&t, &mut baseline);
        t.record_free(0, 0x100);
        let mut totals = [SiteTotals::ZERO; 16];
        tally(&t, &mut totals);
        let (sites, _) = top_sites::<2, 1>(&t, &totals, &baseline, Order::Growth);
        assert_eq!((sites[0].size, sites[0].size_diff), (0, -8));
        let (sites, n) = top_sites::<2, 1>(&t, &totals, &baseline, Order::Size);
        assert_eq!((sites.len(), n), (0, 0));
    }

    #[test]
    fn frames_are_cut_to_the_report_depth() {
        let mut a = Arrays::new();
        let mut t = Tracer::new(a.storage());
        t.record_alloc(0, 0x100, 8, &[1, 2, 3, 4], 9);
        let mut totals = [SiteTotals::ZERO; 16];
        tally(&t, &mut totals);
        let (sites, _) = top_sites::<1, 2>(&t, &totals, &[], Order::Size);
        assert_eq!(sites[0].frames.as_slice(), &[1, 2]);
        assert_eq!(sites[0].total_nframe, 9);
    }
}
