# Sourced by ci/bench.sh and ci/ab.sh: checks that the build keeps frame pointers.
#
# RUSTFLAGS, CARGO_ENCODED_RUSTFLAGS, CARGO_BUILD_RUSTFLAGS or CARGO_TARGET_<TRIPLE>_RUSTFLAGS,
# even empty, replaces .cargo/config.toml's flags: without frame pointers the tracer unwinds,
# ~100x slower a frame, and the figures are not the tracer's (`compare` also rejects such runs
# by the capture they report).
require_frame_pointers() {
  local script=$1 name value
  for name in RUSTFLAGS CARGO_ENCODED_RUSTFLAGS CARGO_BUILD_RUSTFLAGS \
    $(compgen -v | grep -E '^CARGO_TARGET_.+_RUSTFLAGS$' || true); do
    [[ -n "${!name+set}" ]] || continue
    value=${!name}
    if [[ "$value" != *force-frame-pointers* || "$value" =~ force-frame-pointers=(no|n|off|false) ]]; then
      echo "$script: $name is set without -C force-frame-pointers=yes, and it replaces the" \
        "workspace's flags (.cargo/config.toml): add the flag to it or unset it" >&2
      exit 2
    fi
  done
}
