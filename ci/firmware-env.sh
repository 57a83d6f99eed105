# Sourced by the scripts that build the QEMU firmware (ci/firmware.sh, ci/count-instructions.sh),
# after they set $root: where the firmware lives, how it builds and where its ELF lands.
fw="$root/adapter-embedded/firmware"
# The firmware, a workspace of its own, builds in its own target directory whatever the
# caller's CARGO_TARGET_DIR says: its ELF is then where these scripts look for it.
fw_cargo() { (cd "$fw" && CARGO_TARGET_DIR="$fw/target" cargo "$@"); }
fw_elf="$fw/target/thumbv7m-none-eabi/release/tracemalloc-firmware-qemu"
