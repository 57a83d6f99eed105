//! Sampling mode: one block per N bytes on average is traced, and statistics scale the samples
//! back up. The estimates of each site must land within 10% of the exact figures.

use std::sync::{Mutex, MutexGuard};
use tracemalloc::{Config, DomainFilter, Filter, KeyType, TraceFilter, TracingAllocator};

use tracemalloc_tests::blocks;

#[global_allocator]
static ALLOC: TracingAllocator = TracingAllocator::system();

tracemalloc_tests::this_file!();

fn estimates(snapshot: &tracemalloc::Snapshot) -> Vec<(u32, u64, u64)> {
    snapshot
        .filter_traces(&[TraceFilter::Filter(Filter::new(true, THIS_FILE))])
        .statistics(KeyType::Lineno, false)
        .unwrap()
        .iter()
        .map(|s| (s.traceback.frames[0].lineno, s.size, s.count))
        .collect()
}

fn close(estimate: u64, exact: u64) -> bool {
    (estimate as f64 - exact as f64).abs() <= exact as f64 * 0.10
}

/// One test at a time: the tracer is process-wide.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn sampled(interval: u64) -> Config {
    Config {
        nframe: 4,
        sample_interval: interval,
        ..Config::default()
    }
}

#[test]
fn sampled_estimates_of_each_site_are_within_ten_percent() {
    let _serial = serial();
    tracemalloc::start_with(sampled(4096)).unwrap();
    let big = blocks(2_000, || vec![1u8; 10_000]); // BIG
    let mid = blocks(20_000, || vec![2u8; 1_000]); // MID
    let small = blocks(200_000, || vec![3u8; 64]); // SMALL
    let snapshot = tracemalloc::take_snapshot().unwrap();
    assert_eq!(snapshot.sample_interval, 4096);
    let stats = estimates(&snapshot);
    let sites = [
        ("BIG", 2_000u64, 10_000u64),
        ("MID", 20_000, 1_000),
        ("SMALL", 200_000, 64),
    ];
    for (site, n, size) in sites {
        let line = line_of(site);
        let &(_, bytes, count) = stats
            .iter()
            .find(|s| s.0 == line)
            .unwrap_or_else(|| panic!("{site} not sampled: {stats:?}"));
        assert!(
            close(bytes, n * size),
            "{site}: {bytes} bytes estimated, {} real",
            n * size
        );
        assert!(
            close(count, n),
            "{site}: {count} blocks estimated, {n} real"
        );
    }
    // Far fewer blocks were traced than allocated.
    assert!(
        snapshot.traces.len() < 20_000,
        "{} traces",
        snapshot.traces.len()
    );
    let (current, _) = tracemalloc::traced_memory();
    // The three sites' blocks and the three vectors that hold them.
    let holders = [&big, &mid, &small].map(|v| std::mem::size_of_val(v.as_slice()) as u64);
    let live: u64 =
        sites.iter().map(|(_, n, size)| n * size).sum::<u64>() + holders.iter().sum::<u64>();
    assert!(
        close(current as u64, live),
        "traced_memory {current} vs {live} live"
    );

    // Freed blocks leave the estimates, sampled or not.
    drop(small);
    let stats = estimates(&tracemalloc::take_snapshot().unwrap());
    assert!(!stats.iter().any(|s| s.0 == line_of("SMALL")), "{stats:?}");

    // Blocks grown by realloc are sampled on their new size, whichever of their two blocks
    // was sampled, and leave with their last free.
    // All small blocks exist before any grows, so no freed one is handed out again (which
    // would overwrite a trace left behind).
    let mut grown = blocks(20_000, || vec![4u8; 8]); // SEED
    for v in &mut grown {
        v.reserve_exact(992); // GROWN
    }
    let stats = estimates(&tracemalloc::take_snapshot().unwrap());
    let line = line_of("GROWN");
    let &(_, bytes, count) = stats.iter().find(|s| s.0 == line).expect("GROWN sampled");
    let real = grown.iter().map(Vec::capacity).sum::<usize>() as u64;
    assert!(
        close(bytes, real),
        "GROWN: {bytes} bytes estimated, {real} real"
    );
    assert!(close(count, 20_000), "GROWN: {count} blocks estimated");
    drop(grown);
    let stats = estimates(&tracemalloc::take_snapshot().unwrap());
    // Neither the grown blocks nor the small ones they were reallocated from stay behind.
    assert!(
        !stats.iter().any(|s| s.0 == line || s.0 == line_of("SEED")),
        "{stats:?}"
    );
    drop((big, mid));

    // Tracked memory is sampled like allocations, so its estimate is right too. 10 000 blocks
    // of 1000 bytes: about 2170 samples, the estimate's standard deviation 1.9 %, so the 10 %
    // bound is 5 deviations away.
    let fake = |i: usize| (0x1000_0000 + i * 1024) as *const u8;
    for i in 0..10_000 {
        assert!(tracemalloc::track(3, fake(i), 1000));
    }
    let tracked: u64 = tracemalloc::take_snapshot()
        .unwrap()
        .filter_traces(&[TraceFilter::Domain(DomainFilter::new(true, 3))])
        .statistics(KeyType::Filename, false)
        .unwrap()
        .iter()
        .map(|s| s.size)
        .sum();
    assert!(
        close(tracked, 10_000_000),
        "{tracked} bytes tracked, 10000000 real"
    );
    for i in 0..10_000 {
        tracemalloc::untrack(3, fake(i));
    }

    // Forgetting another domain's block on the page of a sampled block leaves the sampled
    // block's free to the tracer.
    let sampled = vec![5u8; 64 << 20]; // at 4096 bytes per sample, sampled for certain
    let inside = sampled.as_ptr().wrapping_add(64);
    assert!(tracemalloc::track(7, inside, 1 << 30)); // as big, sampled as surely
    assert!(tracemalloc::untrack(7, inside));
    drop(sampled);
    let snapshot = tracemalloc::take_snapshot().unwrap();
    assert!(
        !snapshot.traces.iter().any(|t| t.size == 64 << 20),
        "a freed sampled block kept its trace"
    );
    tracemalloc::stop();
}

#[test]
fn a_restart_with_a_shorter_interval_samples_at_once() {
    let _serial = serial();
    // At 1 TiB a sample, this thread's next sample point is about a terabyte away.
    tracemalloc::start_with(sampled(1 << 40)).unwrap();
    drop(blocks(100, || vec![0u8; 64]));
    tracemalloc::stop();
    tracemalloc::start_with(sampled(4096)).unwrap();
    let live = blocks(10_000, || vec![6u8; 1_000]); // RESTARTED
    let stats = estimates(&tracemalloc::take_snapshot().unwrap());
    // clear_traces() keeps the interval, and sampling goes on as before.
    tracemalloc::clear_traces();
    let again = blocks(10_000, || vec![7u8; 1_000]); // CLEARED
    let after_clear = estimates(&tracemalloc::take_snapshot().unwrap());
    tracemalloc::stop();
    for (site, stats) in [("RESTARTED", &stats), ("CLEARED", &after_clear)] {
        let line = line_of(site);
        let &(_, bytes, _) = stats
            .iter()
            .find(|s| s.0 == line)
            .unwrap_or_else(|| panic!("{site}: nothing sampled: {stats:?}"));
        // About 2 170 samples: the 10 % bound is 5 standard deviations away.
        assert!(close(bytes, 10_000_000), "{site}: {bytes} bytes estimated");
    }
    drop((live, again));
}

#[test]
fn tracking_an_address_again_replaces_its_trace_even_unsampled() {
    let _serial = serial();
    tracemalloc::start_with(sampled(4096)).unwrap();
    for domain in [9, 0] {
        let addr = 0x5000_0000usize as *const u8;
        // At a gigabyte, certainly sampled; then one byte at the same address, which the
        // sampler almost certainly leaves out: either way the gigabyte's trace must go, as a
        // new allocation at an address replaces the trace there (CPython's `Track` too).
        assert!(tracemalloc::track(domain, addr, 1 << 30));
        assert!(tracemalloc::track(domain, addr, 1));
        let snapshot = tracemalloc::take_snapshot().unwrap();
        assert!(
            !snapshot
                .traces
                .iter()
                .any(|t| t.domain == domain && t.size == 1 << 30),
            "domain {domain}: the replaced trace stayed"
        );
        tracemalloc::untrack(domain, addr);
    }
    tracemalloc::stop();
}
