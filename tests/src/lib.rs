//! Cross-crate tests live in `tests/`; this library holds the helpers several of them share.

/// The 1-based line of `source` that ends with the comment `// MARKER`: tests tag the lines
/// whose allocations they look for in snapshots.
pub fn marked_line(source: &str, marker: &str) -> u32 {
    let needle = format!("// {marker}");
    source
        .lines()
        .position(|l| l.trim_end().ends_with(&needle))
        .unwrap_or_else(|| panic!("marker {marker} not found")) as u32
        + 1
}

/// `n` blocks made by `make`, kept in a Vec allocated before the first of them.
pub fn blocks<T>(n: usize, make: impl Fn() -> T) -> Vec<T> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(make());
    }
    out
}
