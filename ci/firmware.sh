#!/usr/bin/env bash
# Embedded CI job: builds tracemalloc-embedded for thumbv6m and thumbv7m, builds the QEMU example
# firmware with and without tracing, runs it in QEMU, decodes its defmt log, keeps its snapshots
# and records flash/RAM sizes. Everything lands in $OUT (default target/firmware/):
#   firmware.elf, firmware-untraced.elf   the two builds (debug info kept for the CLI's --elf)
#   log.defmt, log.txt                    raw and decoded defmt output of the traced run
#   baseline.tmsnap, snapshot.tmsnap      snapshots the firmware wrote through semihosting
#   sizes.txt                             arm-none-eabi-size of both builds
# Exits non-zero when a build fails or the firmware exits with failure.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${OUT:-$root/target/firmware}"
# shellcheck source=ci/firmware-env.sh
. "$root/ci/firmware-env.sh"
mkdir -p "$out"

log() { echo "ci/firmware: $*" >&2; }

build_crate() {
  for target in thumbv6m-none-eabi thumbv7m-none-eabi; do
    log "tracemalloc-embedded for $target"
    (cd "$root" && cargo build -q -p tracemalloc-embedded --target "$target" \
      --features llff,tlsf,defmt,semihosting,build-id)
  done
}

build_firmware() {
  log "firmware without tracing"
  fw_cargo build -q --release --no-default-features
  cp "$fw_elf" "$out/firmware-untraced.elf"
  log "firmware with tracing"
  fw_cargo build -q --release
  cp "$fw_elf" "$out/firmware.elf"
  (cd "$out" && arm-none-eabi-size firmware-untraced.elf firmware.elf) > "$out/sizes.txt"
  cat "$out/sizes.txt" >&2
}

run_firmware() {
  log "running in QEMU"
  rm -f "$out"/*.tmsnap
  local status=0
  # Semihosting writes the snapshot files into QEMU's working directory.
  (cd "$out" && timeout 60 qemu-system-arm -cpu cortex-m3 -machine lm3s6965evb -nographic \
    -semihosting-config enable=on,target=native -kernel firmware.elf \
    > log.defmt 2> qemu.stderr) || status=$?
  defmt-print -e "$out/firmware.elf" < "$out/log.defmt" > "$out/log.txt"
  cat "$out/log.txt" >&2
  if [ "$status" -ne 0 ]; then
    log "firmware exited with status $status"
    return "$status"
  fi
}

build_crate
build_firmware
run_firmware
log "outputs in $out"
