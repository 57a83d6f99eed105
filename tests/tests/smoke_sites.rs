//! A first end-to-end check: blocks allocated at known lines are reported at those lines.

use tracemalloc::TracingAllocator;

#[global_allocator]
static ALLOC: TracingAllocator = TracingAllocator::system();

#[inline(never)]
fn allocate_here(n: usize) -> Vec<u8> {
    vec![7u8; n] // SITE-A
}

#[test]
fn snapshot_names_the_allocating_line() {
    tracemalloc::start(4).unwrap();
    let kept = allocate_here(123_457);
    let snapshot = tracemalloc::take_snapshot().unwrap();
    let site_line = include_str!("smoke_sites.rs")
        .lines()
        .position(|l| l.contains("// SITE-A") && l.contains("vec!"))
        .unwrap() as u32
        + 1;
    let trace = snapshot
        .traces
        .iter()
        .find(|t| t.size == 123_457)
        .expect("the block is traced");
    let tb = snapshot.traceback_of(trace);
    eprintln!("{tb:#?}");
    assert_eq!(&*tb.frames[0].filename, "tests/tests/smoke_sites.rs");
    assert_eq!(tb.frames[0].lineno, site_line);
    drop(kept);
    tracemalloc::stop();
}
