#!/usr/bin/env bash
# Prepares the kernel matrix's other kernels: qemu, a static busybox, and Debian's cloud kernels
# unpacked (not installed) under /var/cache/otel-sendmmsg/kernels, each the newest of its line:
#   debian-6.1    Debian 12's kernel          (bookworm: the machine's own apt sources)
#   debian-6.12   Debian 12's newer kernel    (bookworm point releases: the same sources)
#   debian-5.10   Debian 11's kernel          (bullseye: an index of its own under the cache,
#                                              the system's apt sources untouched)
#   debian-6.1-arm64   Debian 12's arm64 kernels, for qemu-system-aarch64 (bookworm's arm64
#   debian-6.12-arm64  packages: an index of its own under the cache, arm64 never added to
#                      dpkg's architectures); with them busybox-arm64, an arm64 static busybox,
#                      and what the aarch64 cross build of the sidecar needs: Debian's cross gcc
#                      and libc, and rustup's aarch64-unknown-linux-gnu standard library.
# Idempotent; the path of each vmlinuz (busybox) is written to
# /var/cache/otel-sendmmsg/kernels/<name>.
set -euo pipefail
log() { printf 'setup-kernels: %s\n' "$*" >&2; }

CACHE=/var/cache/otel-sendmmsg/kernels
PACKAGES=(qemu-system-x86 busybox-static cpio)
# arm64: the emulator, and the cross linker and C compiler (aws-lc-sys, zstd-sys build C) with
# arm64's glibc to link against; the guest gets its shared libraries from /usr/aarch64-linux-gnu.
PACKAGES+=(qemu-system-arm gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
RUST_TARGET_ARM64=aarch64-unknown-linux-gnu

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Apt run against bullseye only, with its lists kept under the cache.
bullseye=(-o "Dir::Etc::SourceList=$CACHE/bullseye.sources.list" -o Dir::Etc::SourceParts=/dev/null
          -o "Dir::State::Lists=$CACHE/bullseye-lists" -o Dir::Cache::Archives=/tmp)
bullseye_apt() {
  mkdir -p "$CACHE/bullseye-lists/partial"
  echo "deb http://deb.debian.org/debian bullseye main" >"$CACHE/bullseye.sources.list"
  [ -n "$(ls "$CACHE/bullseye-lists" | grep -v partial || true)" ] || apt-get "${bullseye[@]}" update -qq
}

# Apt run against bookworm's arm64 packages only (the suites the machine's sources name), with
# its own lists under the cache: arm64 packages are downloaded and unpacked, never installed.
arm64=(-o "Dir::Etc::SourceList=$CACHE/arm64.sources.list" -o Dir::Etc::SourceParts=/dev/null
       -o "Dir::State::Lists=$CACHE/arm64-lists" -o Dir::Cache::Archives=/tmp
       -o APT::Architecture=arm64 -o APT::Architectures=arm64)
arm64_apt() {
  mkdir -p "$CACHE/arm64-lists/partial"
  cat >"$CACHE/arm64.sources.list" <<'SOURCES'
deb [arch=arm64] http://deb.debian.org/debian bookworm main
deb [arch=arm64] http://deb.debian.org/debian bookworm-updates main
deb [arch=arm64] http://deb.debian.org/debian-security bookworm-security main
SOURCES
  [ -n "$(ls "$CACHE/arm64-lists" | grep -v partial || true)" ] || apt-get "${arm64[@]}" update -qq
}

# fetch NAME PATTERN [apt options...]: the newest package matching PATTERN, unpacked, its
# vmlinuz's path written to $CACHE/NAME. With FILE set, the path of that file of the package
# (a glob under its root) instead; with DIR, unpacked there rather than under the package's name.
fetch() {
  local name=$1 pattern=$2; shift 2
  if [ -s "$CACHE/$name" ] && [ -f "$(cat "$CACHE/$name")" ]; then
    return 0
  fi
  # The ABI number moves with every Debian point release: take the newest one the archive offers.
  [ -n "$(apt-cache "$@" search --names-only "$pattern")" ] || apt-get "$@" update -qq
  local package="" candidate policy
  for candidate in $(apt-cache "$@" search --names-only "$pattern" | cut -d' ' -f1 | sort -rV); do
    # Not `| grep -q`: with pipefail, grep's early exit fails the pipeline through SIGPIPE.
    policy=$(apt-cache "$@" policy "$candidate")
    if [[ $policy == *"Candidate: "[0-9]* ]]; then package=$candidate; break; fi
  done
  [ -n "$package" ] || { log "no $name ($pattern) in the apt sources"; exit 1; }
  local dir="$CACHE/${DIR:-$package}"
  mkdir -p "$dir"
  log "downloading and unpacking $package"
  (cd "$dir" && apt-get "$@" download -qq "$package" && dpkg-deb -x ./*.deb root && rm -f ./*.deb)
  local file
  file=$(ls "$dir"/root/${FILE:-boot/vmlinuz-*} | head -1)
  echo "$file" >"$CACHE/$name"
  log "$name: $file"
}

mkdir -p "$CACHE"
fetch debian-6.1 'linux-image-6\.1\.0-[0-9]+-cloud-amd64-unsigned'
fetch debian-6.12 'linux-image-6\.12\.[0-9]+\+deb12-cloud-amd64-unsigned'
bullseye_apt
fetch debian-5.10 'linux-image-5\.10\.0-[0-9]+-cloud-amd64-unsigned' "${bullseye[@]}"

arm64_apt
fetch debian-6.1-arm64 'linux-image-6\.1\.0-[0-9]+-cloud-arm64-unsigned' "${arm64[@]}"
fetch debian-6.12-arm64 'linux-image-6\.12\.[0-9]+\+deb12-cloud-arm64-unsigned' "${arm64[@]}"
FILE=bin/busybox DIR=busybox-static-arm64 fetch busybox-arm64 '^busybox-static$' "${arm64[@]}"

export PATH="$HOME/.cargo/bin:$PATH"
if ! rustup target list --installed | grep -x "$RUST_TARGET_ARM64" >/dev/null; then
  log "adding rustup's $RUST_TARGET_ARM64 standard library"
  rustup target add "$RUST_TARGET_ARM64"
fi
