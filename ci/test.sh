#!/usr/bin/env bash
# The project's test command (README, .ci/run): installs what the tests need, then runs every
# check CI runs, one function a job, in order. Stops at the first failure.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

job() { echo; echo "=== ci/test: $*"; }

# CI builds everything once: incremental caches would only double the disk it needs (a
# setting of the caller's own wins).
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
target_dir="${CARGO_TARGET_DIR:-target}"

disk() { job "disk: $1"; df -h . | tail -1 || true; du -sh "$target_dir" 2>/dev/null || true; }

# A cold run fills about 1 GB of target (README); a full disk otherwise shows up minutes later
# as an LLVM "IO failure on output stream" in whichever crate was compiling.
need_disk() {
  local free_kb
  free_kb=$(df -Pk . 2>/dev/null | awk 'NR == 2 { print $4 }') || true
  if [[ "$free_kb" =~ ^[0-9]+$ ]] && [ "$free_kb" -lt $((1536 * 1024)) ]; then
    echo "ci/test: warning: only $((free_kb / 1024)) MB free here; a cold run needs about 1 GB" >&2
  fi
}

install() { job install; bash ci/install.sh; }

# The example firmware is a workspace of its own (it links for Cortex-M only).
firmware=adapter-embedded/firmware

format() {
  job "cargo fmt --check"
  cargo fmt --all -- --check
  (cd "$firmware" && cargo fmt -- --check)
}

lint() {
  job "cargo clippy -D warnings"
  cargo clippy --workspace --all-targets -- -D warnings
  cargo clippy -p tracemalloc-core --all-targets --all-features -- -D warnings
  for features in --all-features --no-default-features; do
    (cd "$firmware" && cargo clippy -q --release "$features" -- -D warnings)
  done
}

no_std() {
  job "core builds for Cortex-M, without and with alloc"
  for target in thumbv6m-none-eabi thumbv7m-none-eabi; do
    cargo build -q -p tracemalloc-core --target "$target"
  done
  cargo build -q -p tracemalloc-core --target thumbv7m-none-eabi --features alloc
}

portable() {
  # Compiled and linted only: CI runs on x86_64 Linux (README, Platforms). Their 100 MB of
  # metadata is not kept.
  job "the std adapter builds for aarch64 Linux and macOS"
  local dir="$target_dir/portable"
  rm -rf "$dir"
  for target in aarch64-unknown-linux-gnu x86_64-apple-darwin; do
    CARGO_TARGET_DIR="$dir" \
      cargo clippy -q -p tracemalloc --all-targets --target "$target" -- -D warnings
  done
  rm -rf "$dir"
}

docs() {
  job "cargo doc, warnings denied"
  RUSTDOCFLAGS="-D warnings" cargo doc -q --no-deps -p tracemalloc -p tracemalloc-embedded
  RUSTDOCFLAGS="-D warnings" cargo doc -q --no-deps -p tracemalloc-core --all-features
}

tests() {
  # The firmware test (tests/tests/firmware_qemu.rs) builds the example firmware and runs it in
  # QEMU through ci/firmware.sh.
  job "cargo test"
  cargo test --workspace
}

demo() {
  # The README's first command, optimized as users run it (inlining changes which frames the
  # tracer must hide): its report must name the leaking line.
  job "the demo finds its leak (release build)"
  local out file=adapter-std/examples/leaky_service/cache.rs line
  line=$(grep -n "the leaking line" "$file" | cut -d: -f1)
  out=$(cargo run -q --release --example leaky_service)
  echo "$out" | grep -E "since_start #1|Leak found"
  echo "$out" | grep -q "since_start #1: $file:0: "
  echo "$out" | grep -q "Leak found: $file:$line grows fastest"
}

disk before
need_disk
install
format
lint
no_std
portable
docs
tests
demo
disk after
