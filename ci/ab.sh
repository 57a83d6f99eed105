#!/usr/bin/env bash
# A/B run of the tracer (issue 5's "record what each change bought"): this checkout's `traced`
# against REV's, interleaved in the same rounds with this checkout's `untraced`, ratios taken
# round by round (`compare --against`, bench/src/bin/compare.rs). REV is built in a git
# worktree with a target directory of its own under target/ab, kept between runs so that
# only what changed rebuilds. Arguments after REV go to `compare`, e.g.
#   ci/ab.sh b228376 --rounds 9 --workloads tree,json
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$(dirname "${BASH_SOURCE[0]}")/bench-env.sh"
require_frame_pointers ci/ab.sh
rev="${1:?usage: ci/ab.sh REV [compare arguments]}"
shift
target="${CARGO_TARGET_DIR:-$root/target}"
work="$target/ab/worktree"

git -C "$root" worktree remove --force "$work" 2>/dev/null || true
git -C "$root" worktree add --detach "$work" "$rev" > /dev/null
trap 'git -C "$root" worktree remove --force "$work"' EXIT

(cd "$work" && CARGO_TARGET_DIR="$target/ab/target" cargo build --release -p tracemalloc-bench --bin traced)
(cd "$root" && cargo build --release -p tracemalloc-bench)
"$target/release/compare" --against "$target/ab/target/release" "$@"
