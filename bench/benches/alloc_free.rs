//! One alloc+free pair of 64 bytes (shadow memory's cells) and of 4 KiB (the tables, which take
//! blocks of 1 KiB and more): `System` directly, through the tracing wrapper with tracing off,
//! and traced with nframe 1 and 16 (frame-pointer capture).

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};

#[global_allocator]
static ALLOC: tracemalloc::TracingAllocator = tracemalloc::TracingAllocator::system();

/// An alloc+free pair through the global allocator, as `Box` and `Vec` make it.
#[inline(never)]
fn global_pair(layout: Layout) {
    // SAFETY: `layout` has a non-zero size; the block is freed with the layout it was made with.
    unsafe {
        let p = std::alloc::alloc(layout);
        black_box(p);
        std::alloc::dealloc(p, layout);
    }
}

fn alloc_free(c: &mut Criterion) {
    for (name, size) in [("64B", 64), ("4KiB", 4096)] {
        let layout = Layout::from_size_align(size, 8).expect("valid layout");
        let mut group = c.benchmark_group(format!("alloc_free_{name}"));
        group.bench_function("system", |b| {
            b.iter(|| {
                // SAFETY: as in `global_pair`, directly on `System`.
                unsafe {
                    let p = System.alloc(layout);
                    black_box(p);
                    System.dealloc(p, layout);
                }
            })
        });
        group.bench_function("tracing_off", |b| b.iter(|| global_pair(layout)));
        for nframe in [1, 16] {
            tracemalloc::start(nframe).expect("start tracing");
            group.bench_function(format!("traced_nframe_{nframe}"), |b| {
                b.iter(|| global_pair(layout))
            });
            tracemalloc::stop();
        }
        group.finish();
    }
}

criterion_group!(benches, alloc_free);
criterion_main!(benches);
