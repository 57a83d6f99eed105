#!/usr/bin/env bash
# Issue 5's benchmark: builds every variant of tracemalloc-bench (untraced, traced with tracing
# off / nframe 1 / nframe 16, mod-alloc, dhat-rs, and untraced and traced at nframe 16 around
# mimalloc), runs them interleaved (7 rounds by default;
# heaptrack too when /usr/bin/heaptrack exists), then the nframe sweep (writing
# BENCHMARKS-overhead.svg) and the memory / snapshot-at-scale measurements. Prints Markdown and
# keeps a copy in target/bench/report.md. Arguments go to the driver, e.g.
#   ci/bench.sh --rounds 3 --workloads hashmap,tree --no-memory
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# RUSTFLAGS (or CARGO_ENCODED_RUSTFLAGS), even empty, replaces .cargo/config.toml's flags: without
# frame pointers the tracer unwinds, ~100x slower a frame, and the figures are not the tracer's.
for flags in RUSTFLAGS CARGO_ENCODED_RUSTFLAGS; do
  if [[ -n "${!flags+set}" && "${!flags}" != *force-frame-pointers=yes* ]]; then
    echo "ci/bench.sh: $flags is set without -C force-frame-pointers=yes, and it replaces the" \
      "workspace's flags (.cargo/config.toml): add the flag to it or unset it" >&2
    exit 2
  fi
done
cd "$root"
cargo build --release -p tracemalloc-bench
target="${CARGO_TARGET_DIR:-$root/target}"
mkdir -p "$target/bench"
{
  echo "<!-- $(date -u +%Y-%m-%dT%H:%MZ), $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' + uncommitted changes'), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs) -->"
  "$target/release/compare" --svg "$root/BENCHMARKS-overhead.svg" "$@"
} | tee "$target/bench/report.md"
