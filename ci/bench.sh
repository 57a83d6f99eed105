#!/usr/bin/env bash
# Issue 5's benchmark: builds every variant of tracemalloc-bench (untraced, traced with tracing
# off / nframe 1 / nframe 16, mod-alloc, dhat-rs, and untraced and traced at nframe 16 around
# mimalloc), runs them interleaved (7 rounds by default;
# heaptrack too when /usr/bin/heaptrack exists), then the nframe sweep (its chart goes to
# target/bench/BENCHMARKS-overhead.svg) and the memory / snapshot-at-scale measurements. Prints
# Markdown and keeps a copy in target/bench/report.md. `--publish` also copies the chart over
# the committed BENCHMARKS-overhead.svg, when every run succeeded: for a full run whose figures
# go into BENCHMARKS.md, not a quick one. Other arguments go to the driver, e.g.
#   ci/bench.sh --rounds 3 --workloads hashmap,tree --no-memory
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$(dirname "${BASH_SOURCE[0]}")/bench-env.sh"
require_frame_pointers ci/bench.sh
publish=false
args=()
for arg in "$@"; do
  if [[ $arg == --publish ]]; then
    publish=true
  else
    args+=("$arg")
  fi
done
cd "$root"
cargo build --release -p tracemalloc-bench
target="${CARGO_TARGET_DIR:-$root/target}"
mkdir -p "$target/bench"
svg="$target/bench/BENCHMARKS-overhead.svg"
rm -f "$svg" # so that --publish never copies an older run's chart
{
  echo "<!-- $(date -u +%Y-%m-%dT%H:%MZ), $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' + uncommitted changes'), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs) -->"
  "$target/release/compare" --svg "$svg" ${args[@]+"${args[@]}"}
} | tee "$target/bench/report.md"
# Reached only when compare succeeded (pipefail): a run with failed runs publishes nothing.
if $publish; then
  if [[ ! -f $svg ]]; then
    echo "ci/bench.sh: --publish: this run drew no chart (--no-sweep?)" >&2
    exit 1
  fi
  cp "$svg" "$root/BENCHMARKS-overhead.svg"
  echo "ci/bench.sh: chart copied to BENCHMARKS-overhead.svg" >&2
fi
