//! One 64-byte alloc+free pair: `System` directly, through the tracing wrapper with tracing off,
//! and traced with nframe 1 and 16 (frame-pointer capture).

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};

#[global_allocator]
static ALLOC: tracemalloc::TracingAllocator = tracemalloc::TracingAllocator::system();

const LAYOUT: Layout = match Layout::from_size_align(64, 8) {
    Ok(l) => l,
    Err(_) => panic!("valid layout"),
};

/// An alloc+free pair through the global allocator, as `Box` and `Vec` make it.
#[inline(never)]
fn global_pair() {
    // SAFETY: LAYOUT has a non-zero size; the block is freed with the layout it was made with.
    unsafe {
        let p = std::alloc::alloc(LAYOUT);
        black_box(p);
        std::alloc::dealloc(p, LAYOUT);
    }
}

fn alloc_free(c: &mut Criterion) {
    let mut group = c.benchmark_group("alloc_free_64B");
    group.bench_function("system", |b| {
        b.iter(|| {
            // SAFETY: as in `global_pair`, directly on `System`.
            unsafe {
                let p = System.alloc(LAYOUT);
                black_box(p);
                System.dealloc(p, LAYOUT);
            }
        })
    });
    group.bench_function("tracing_off", |b| b.iter(global_pair));
    for nframe in [1, 16] {
        tracemalloc::start(nframe).expect("start tracing");
        group.bench_function(format!("traced_nframe_{nframe}"), |b| b.iter(global_pair));
        tracemalloc::stop();
    }
    group.finish();
}

criterion_group!(benches, alloc_free);
criterion_main!(benches);
