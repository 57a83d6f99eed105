//! tracemalloc for Rust applications (work in progress).
