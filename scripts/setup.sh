#!/usr/bin/env bash
# Installs everything the build needs on a fresh Debian machine, and skips what is already
# there, so every README command can call it first. Needs root (apt-get, mounts).
#   scripts/setup.sh            the build, and tracefs/bpffs mounted (to run the sidecar)
#   scripts/setup.sh --tests    also what the tests use: Debian's 5.10, 6.1 and 6.12 kernels for qemu,
#                               and arm64's 6.1 and 6.12 with the aarch64 cross toolchain
#                               (scripts/setup-kernels.sh), Jaeger v2 and an OpenTelemetry
#                               Collector built from Go modules (scripts/setup-observability.sh),
#                               docker-compose, setcap/capsh
#   scripts/setup.sh --no-mounts   the build only (image builds: nothing traces there)
set -euo pipefail

tests=0 mounts=1
for arg in "$@"; do
  case $arg in
    --tests) tests=1 ;;
    --no-mounts) mounts=0 ;;
    *) echo "usage: $0 [--tests] [--no-mounts]" >&2; exit 2 ;;
  esac
done

log() { printf 'setup: %s\n' "$*" >&2; }

# Debian's Rust 1.96 ships a prebuilt `core` for bpfel-unknown-none, which spares us a nightly
# toolchain and rust-src; LLVM 22 is what bpf-linker links against.
APT_PACKAGES=(rustc-web cargo-web libstd-rust-web-dev-bpf llvm-22-dev libpolly-22-dev libzstd-dev
              protobuf-compiler)
# The tests validate the compose file and run the sidecar with file capabilities.
((tests)) && APT_PACKAGES+=(docker-compose libcap2-bin util-linux)
# tests/hostile_processes.rs serves a FUSE file whose read never returns.
((tests)) && APT_PACKAGES+=(python3-fusepy)
# tests/tls.rs and the TLS settings' unit tests make certificates at test time.
((tests)) && APT_PACKAGES+=(openssl)
BPF_LINKER_VERSION=0.13.0

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  log "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

export PATH="$HOME/.cargo/bin:$PATH"
if ! command -v bpf-linker >/dev/null || ! bpf-linker --version 2>/dev/null | grep -q "$BPF_LINKER_VERSION"; then
  log "building bpf-linker $BPF_LINKER_VERSION against LLVM 22 (a few minutes, once)"
  LLVM_PREFIX=/usr/lib/llvm-22 cargo install --locked bpf-linker --version "$BPF_LINKER_VERSION" \
    --no-default-features --features llvm-22
fi

# `cargo +system` is Debian's rustc, used only for the BPF crate.
if ! rustup toolchain list | grep -q '^system'; then
  log "linking Debian's Rust as the rustup toolchain 'system'"
  rustup toolchain link system /usr
fi

# Probes attach through tracefs; pinned maps live in bpffs. Neither is mounted on every boot.
if ((mounts)); then
  mountpoint -q /sys/kernel/tracing || mount -t tracefs nodev /sys/kernel/tracing
  mountpoint -q /sys/fs/bpf || mount -t bpf -o mode=0700 bpf /sys/fs/bpf
fi

if ((tests)); then
  "$(dirname "$0")/setup-kernels.sh"
  # The real backends of the compose stack, built from Go modules (pinned in tools/*/go.mod).
  "$(dirname "$0")/setup-observability.sh"
fi
