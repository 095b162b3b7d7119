#!/usr/bin/env bash
# Prepares the kernel matrix's other kernels: qemu, a static busybox, and Debian's cloud kernels
# unpacked (not installed) under /var/cache/otel-sendmmsg/kernels, each the newest of its line:
#   debian-6.1    Debian 12's kernel          (bookworm: the machine's own apt sources)
#   debian-6.12   Debian 12's newer kernel    (bookworm point releases: the same sources)
#   debian-5.10   Debian 11's kernel          (bullseye: an index of its own under the cache,
#                                              the system's apt sources untouched)
# Idempotent; the path of each vmlinuz is written to /var/cache/otel-sendmmsg/kernels/<name>.
set -euo pipefail
log() { printf 'setup-kernels: %s\n' "$*" >&2; }

CACHE=/var/cache/otel-sendmmsg/kernels
PACKAGES=(qemu-system-x86 busybox-static cpio)

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

# fetch NAME PATTERN [apt options...]: the newest package matching PATTERN, unpacked, its
# vmlinuz's path written to $CACHE/NAME.
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
  [ -n "$package" ] || { log "no $name cloud kernel ($pattern) in the apt sources"; exit 1; }
  local dir="$CACHE/$package"
  mkdir -p "$dir"
  log "downloading and unpacking $package"
  (cd "$dir" && apt-get "$@" download -qq "$package" && dpkg-deb -x ./*.deb root && rm -f ./*.deb)
  local vmlinuz
  vmlinuz=$(ls "$dir"/root/boot/vmlinuz-* | head -1)
  echo "$vmlinuz" >"$CACHE/$name"
  log "kernel $name: $vmlinuz"
}

mkdir -p "$CACHE"
fetch debian-6.1 'linux-image-6\.1\.0-[0-9]+-cloud-amd64-unsigned'
fetch debian-6.12 'linux-image-6\.12\.[0-9]+\+deb12-cloud-amd64-unsigned'
bullseye_apt
fetch debian-5.10 'linux-image-5\.10\.0-[0-9]+-cloud-amd64-unsigned' "${bullseye[@]}"
