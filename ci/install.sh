#!/usr/bin/env bash
# Installs what the tests need on a fresh machine. Idempotent: each step is skipped when its
# tool is already there, so a warm machine spends seconds here.
set -euo pipefail

need_apt=()
command -v qemu-system-arm >/dev/null || need_apt+=(qemu-system-arm)
command -v arm-none-eabi-size >/dev/null || need_apt+=(binutils-arm-none-eabi)
# A symbolizer test makes a separate debug file of its own binary.
command -v objcopy >/dev/null || need_apt+=(binutils)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "ci/install: apt-get install ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

# The thumb targets build the firmware; the others check that the std adapter builds where it
# is not run (ci/test.sh, `portable`). Each standard library takes 60-150 MB of disk.
for target in thumbv6m-none-eabi thumbv7m-none-eabi aarch64-unknown-linux-gnu x86_64-apple-darwin; do
  rustup target list --installed | grep -qx "$target" || rustup target add "$target"
done
rustup component list --installed | grep -q '^rustfmt' || rustup component add rustfmt
rustup component list --installed | grep -q '^clippy' || rustup component add clippy

if ! command -v defmt-print >/dev/null; then
  echo "ci/install: cargo install defmt-print (compiles for a few minutes, once per machine)"
  cargo install --locked defmt-print --version 1.2.0
fi
