//! The baseline: the workload on `System`, nothing wrapped.

use std::alloc::System;

#[global_allocator]
static ALLOC: System = System;

fn main() {
    tracemalloc_bench::run_untraced("untraced");
}
