#!/usr/bin/env bash
# Instructions per alloc+free pair on the Cortex-M3 build (issue 5, item 6), counted exactly in
# QEMU: one instruction per translation block (-singlestep) and every block logged
# (-d exec,nochain). The firmware's `bench` feature runs 100 pairs of Box<[u8; 32]> between
# calls of `bench_mark`; the script counts executed instructions between those calls:
#   marks 1-2  an empty loop of the same shape (subtracted)
#   marks 3-4  pairs with tracing on (8-frame r7 walk, interned stack)
#   marks 5-6  pairs with the wrapper installed but tracing stopped
# and does the same for the firmware built without tracing (bare LlffHeap).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${OUT:-$root/target/firmware-bench}"
# shellcheck source=ci/firmware-env.sh
. "$root/ci/firmware-env.sh"
pairs=100
mkdir -p "$out"

count() { # ELF -> "empty traced stopped" instruction counts between marks
  local elf="$1" mark
  mark=$(arm-none-eabi-nm "$elf" | awk '$3 == "bench_mark" { print $1 }')
  (cd "$out" && timeout 300 qemu-system-arm -cpu cortex-m3 -machine lm3s6965evb -nographic \
    -semihosting-config enable=on,target=native -singlestep -d exec,nochain -D exec.log \
    -kernel "$elf" > /dev/null 2>&1)
  # The PC is the second field of the bracket: [flags/PC/...].
  awk -v mark="$mark" '
    { split($4, f, "/"); pc = f[2] }
    pc == mark { marks++; if (marks % 2 == 0) printf "%d ", n; n = 0; next }
    { n++ }
    END { print "" }' "$out/exec.log"
  rm -f "$out/exec.log"
}

fw_cargo build -q --release --features bench
cp "$fw_elf" "$out/bench-traced.elf"
fw_cargo build -q --release --no-default-features --features bench
cp "$fw_elf" "$out/bench-untraced.elf"

read -r empty traced stopped <<< "$(count "$out/bench-traced.elf")"
read -r bare_empty bare _ <<< "$(count "$out/bench-untraced.elf")"
per() { echo $(( ($1 - $2) / pairs )); }
{
  echo "instructions per alloc+free pair (Cortex-M3, opt-level s, $pairs pairs of Box<[u8; 32]>):"
  echo "  LlffHeap alone:                      $(per "$bare" "$bare_empty")"
  echo "  TracedHeap, tracing stopped:         $(per "$stopped" "$empty")"
  echo "  TracedHeap, tracing (8-frame walk):  $(per "$traced" "$empty")"
} | tee "$out/instructions.txt"
