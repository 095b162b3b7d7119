#!/usr/bin/env bash
# Prepares the kernel matrix's other kernel: qemu, a static busybox, and Debian's newest 6.1
# cloud kernel unpacked (not installed) under /var/cache/otel-sendmmsg/kernels. Idempotent; the
# path of the vmlinuz is written to /var/cache/otel-sendmmsg/kernels/debian-6.1.
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

if [ -s "$CACHE/debian-6.1" ] && [ -f "$(cat "$CACHE/debian-6.1")" ]; then
  exit 0
fi
# The ABI number moves with every Debian point release: take the newest one the archive offers.
[ -n "$(apt-cache search --names-only 'linux-image-6\.1\.0-[0-9]+-cloud-amd64-unsigned')" ] || apt-get update -qq
package=""
for candidate in $(apt-cache search --names-only 'linux-image-6\.1\.0-[0-9]+-cloud-amd64-unsigned' | cut -d' ' -f1 | sort -rV); do
  # Not `| grep -q`: with pipefail, grep's early exit fails the pipeline through SIGPIPE.
  policy=$(apt-cache policy "$candidate")
  if [[ $policy == *"Candidate: "[0-9]* ]]; then package=$candidate; break; fi
done
[ -n "$package" ] || { log "no linux-image-6.1 cloud kernel in the apt sources"; exit 1; }
dir="$CACHE/$package"
mkdir -p "$dir"
log "downloading and unpacking $package"
(cd "$dir" && apt-get download -qq "$package" && dpkg-deb -x ./*.deb root && rm -f ./*.deb)
vmlinuz=$(ls "$dir"/root/boot/vmlinuz-* | head -1)
echo "$vmlinuz" > "$CACHE/debian-6.1"
log "kernel: $vmlinuz"
