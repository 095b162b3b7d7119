#!/usr/bin/env bash
# Builds the Go programs the tests run, from Go modules, and skips what is already built:
#   otelcol  an OpenTelemetry Collector with exactly the components collector-config/ uses
#            (the Go module tools/otelcol)
#   jaeger   Jaeger v2 (the Go module tools/jaeger; run it with tools/jaeger/config.yaml)
#   dockerfile-check  whether a Dockerfile builds with Debian's docker (tools/dockerfile-check)
# Their versions are pinned in tools/*/go.mod, nowhere else. Each
# binary is named after a hash of its module's files and the Go version, so a changed pin builds a
# new one and an unchanged one is never rebuilt; `otelcol` and `jaeger` beside them are symlinks
# to the current ones. The first run downloads the modules into the default module cache
# (`go env GOMODCACHE`) and compiles (minutes); later runs need no network.
#   scripts/setup-observability.sh          build what is missing (one log line per step)
#   nice -n 19 scripts/setup-observability.sh   the same without slowing the rest of the machine
# OTEL_SENDMMSG_BIN_DIR overrides where the binaries go (default /var/cache/otel-sendmmsg/bin).
set -euo pipefail

log() { printf 'setup: %s\n' "$*" >&2; }

root=$(cd "$(dirname "$0")/.." && pwd)
bin_dir=${OTEL_SENDMMSG_BIN_DIR:-/var/cache/otel-sendmmsg/bin}

if ! command -v go >/dev/null; then
  log "go is not installed: it builds the Collector and Jaeger the tests run"
  exit 1
fi
mkdir -p "$bin_dir"
tmp=  # a binary being built, removed if the build fails or is interrupted
trap '[[ -z $tmp ]] || rm -f "$tmp"' EXIT
go_version=$(go env GOVERSION)

# The version of module $2 that $1/go.mod requires, for the log.
required_version() { awk -v m="$2" '$1 == m { print $2; exit } $1 == "require" && $2 == m { print $3; exit }' "$1/go.mod"; }

# build NAME MODULE_DIR PACKAGE VERSION: $bin_dir/NAME-HASH unless it exists, then NAME -> it.
build() {
  local name=$1 dir=$2 pkg=$3 version=$4
  local hash files
  # What the binary is made of: the pins, the module's own Go files (tools/otelcol/*.go), the Go.
  files=("$dir/go.mod" "$dir/go.sum")
  shopt -s nullglob
  files+=("$dir"/*.go)
  shopt -u nullglob
  hash=$({ echo "$go_version"; cat "${files[@]}"; } | sha256sum | cut -c1-16)
  local out=$bin_dir/$name-$hash
  if [[ ! -x $out ]]; then
    log "building $name $version into $out (the first time: module downloads, then minutes of compiling)"
    tmp=$(mktemp "$out.XXXXXX")
    # -mod=readonly: go.mod and go.sum are the pins; a build never rewrites them. -trimpath: the
    # same pins give the same binary on every machine.
    if ! (cd "$dir" && go build -mod=readonly -trimpath -o "$tmp" "$pkg"); then
      log "building $name failed"
      exit 1
    fi
    chmod 0755 "$tmp"
    mv -f "$tmp" "$out"
    tmp=
  fi
  # Repoint the stable name in one step (a rename), so a concurrent reader never misses it.
  if [[ $(readlink "$bin_dir/$name" 2>/dev/null) != "$name-$hash" ]]; then
    log "linking $bin_dir/$name -> $name-$hash"
    ln -sfn "$name-$hash" "$bin_dir/.$name.tmp.$$"
    mv -Tf "$bin_dir/.$name.tmp.$$" "$bin_dir/$name"
  fi
}

build otelcol "$root/tools/otelcol" . \
  "$(required_version "$root/tools/otelcol" go.opentelemetry.io/collector/otelcol)"
build jaeger "$root/tools/jaeger" github.com/jaegertracing/jaeger/cmd/jaeger \
  "v2 (module $(required_version "$root/tools/jaeger" github.com/jaegertracing/jaeger))"
build dockerfile-check "$root/tools/dockerfile-check" . \
  "(Docker 20.10's Dockerfile parser, BuildKit $(required_version "$root/tools/dockerfile-check" github.com/moby/buildkit))"
