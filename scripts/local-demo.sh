#!/usr/bin/env bash
# The compose stack without Docker, on this host: Jaeger (in memory), the Collector running
# collector-config/compose.yaml, the demo app (its `publish-batch` spans, every 10th batch with
# a datagram UDP refuses), a UDP sink for it, and the sidecar, each as the compose file configures
# it. Prints where to look, then runs until Ctrl-C (or for DEMO_SECONDS), and stops everything.
#   scripts/local-demo.sh                  as root (the sidecar loads BPF programs)
# Ports on 127.0.0.1: Jaeger's query API 16686, the Collector's OTLP 4317 (gRPC) and 4318 (HTTP),
# its health 13133; Jaeger takes OTLP on 14317 (4317 is the Collector's, as in the compose file).
# The binaries come from scripts/setup.sh --tests (Jaeger, the Collector) and cargo (the rest).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
bin=${OTEL_SENDMMSG_BIN_DIR:-/var/cache/otel-sendmmsg/bin}
logs=${DEMO_LOGS:-$(mktemp -d /tmp/otel-sendmmsg-demo.XXXXXX)}
log() { printf 'local-demo: %s\n' "$*" >&2; }

if ((EUID != 0)); then
  log "run as root: the sidecar loads BPF programs"
  exit 1
fi
"$root/scripts/setup.sh" --tests
log "building the sidecar and the demo app (release)"
(cd "$root" && cargo build --release --locked --quiet --package otel-sendmmsg --bin otel-sendmmsg &&
  cargo build --release --locked --quiet --package otel-sendmmsg-demo)

pids=()
stop() {
  trap - EXIT INT TERM
  # The sidecar first, so it flushes its last spans to a Collector that still listens.
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    kill "${pids[i]}" 2>/dev/null || true
    wait "${pids[i]}" 2>/dev/null || true
  done
  log "stopped; logs in $logs"
}
trap stop EXIT
trap 'exit 130' INT TERM

# wait_for URL WHAT: until URL answers 200 (30 s).
wait_for() {
  for _ in $(seq 300); do
    curl -fs -o /dev/null "$1" && return 0
    sleep 0.1
  done
  log "$2 did not come up; see $logs"
  exit 1
}

JAEGER_OTLP_GRPC_PORT=14317 JAEGER_QUERY_HTTP_PORT=16686 JAEGER_QUERY_GRPC_PORT=16685 \
  "$bin/jaeger" --config="$root/tools/jaeger/config.yaml" >"$logs/jaeger.log" 2>&1 &
pids+=($!)
wait_for http://127.0.0.1:16686/api/services Jaeger

OTLP_GRPC_ENDPOINT=127.0.0.1:4317 OTLP_HTTP_ENDPOINT=127.0.0.1:4318 \
  HEALTH_CHECK_ENDPOINT=127.0.0.1:13133 JAEGER_ENDPOINT=127.0.0.1:14317 \
  "$bin/otelcol" --config="$root/collector-config/compose.yaml" >"$logs/collector.log" 2>&1 &
pids+=($!)
wait_for http://127.0.0.1:13133/ "the Collector"

# The compose file's udp-sink: takes the datagrams, so every one UDP can carry is delivered.
python3 -c 'import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 8125))
while True: s.recv(65536)' &
pids+=($!)

OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4317 OTEL_EXPORTER_OTLP_PROTOCOL=grpc OTEL_BSP_SCHEDULE_DELAY=1000 \
  "$root/target/release/otel-sendmmsg" >"$logs/sidecar.log" 2>&1 &
pids+=($!)
for _ in $(seq 600); do
  grep -q "ready: tracing sendmmsg" "$logs/sidecar.log" && break
  kill -0 "${pids[-1]}" 2>/dev/null || { log "the sidecar stopped:"; cat "$logs/sidecar.log" >&2; exit 1; }
  sleep 0.1
done

OTEL_SERVICE_NAME=my-app OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4317 OTEL_EXPORTER_OTLP_PROTOCOL=grpc \
  DEMO_TARGET=127.0.0.1:8125 DEMO_OVERSIZED_EVERY=10 \
  "$root/target/release/otel-sendmmsg-demo" >"$logs/app.log" 2>&1 &
pids+=($!)

cat <<EOF
The stack runs: the demo app (service my-app) sends a batch every 500 ms; every 10th has a
message UDP refuses.
  Traces, from Jaeger's query API (this Jaeger is built from Go modules and carries no UI):
    curl -s 'http://127.0.0.1:16686/api/traces?service=my-app&limit=20' | jq '.data[0]'
  A picture of the newest trace with a failed message:
    scripts/trace-picture.sh --jaeger http://127.0.0.1:16686 --out trace.svg
  The sidecar's own metrics: $logs/collector.log; every log: $logs
Ctrl-C stops everything.
EOF
if [[ -n ${DEMO_SECONDS:-} ]]; then
  sleep "$DEMO_SECONDS"
else
  wait "${pids[-1]}"
fi
