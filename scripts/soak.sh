#!/usr/bin/env bash
# Soak: the sidecar traces a high-rate sendmmsg workload for a long time (default 600 s) and the
# script prints its RSS and CPU every 10 s, then its closing summary. Not part of CI.
#   scripts/soak.sh [SECONDS] [VLEN]
# Spans go nowhere (OTEL_TRACES_EXPORTER=none) unless OTEL_EXPORTER_OTLP_ENDPOINT is set, so
# the numbers are the sidecar's own; point it at a collector to soak the export path too.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-600}
vlen=${2:-8}
scripts/setup.sh
cargo build --release --locked --bin otel-sendmmsg --bin sendmmsg-workload

log=$(mktemp)
if [ -z "${OTEL_EXPORTER_OTLP_ENDPOINT:-}" ]; then export OTEL_TRACES_EXPORTER=none; fi
NO_COLOR=1 target/release/otel-sendmmsg 2>"$log" &
sidecar=$!
trap 'kill -TERM $sidecar 2>/dev/null || true' EXIT
until grep -q "ready: tracing sendmmsg" "$log"; do
  kill -0 $sidecar 2>/dev/null || { cat "$log"; exit 1; }
  sleep 0.2
done
target/release/sendmmsg-workload loop "$seconds" "$vlen" > "$log.workload" &
workload=$!

ticks=$(getconf CLK_TCK)
printf '%8s %12s %12s %10s\n' seconds rss_kib hwm_kib cpu_pct
start=$(date +%s); last_cpu=0; last_t=$start
while kill -0 $workload 2>/dev/null; do
  sleep 10
  now=$(date +%s)
  rss=$(awk '/VmRSS/ {print $2}' /proc/$sidecar/status)
  hwm=$(awk '/VmHWM/ {print $2}' /proc/$sidecar/status)
  cpu=$(awk '{print $14 + $15}' /proc/$sidecar/stat)
  pct=$(( (cpu - last_cpu) * 100 / ticks / (now - last_t) ))
  printf '%8d %12d %12d %10d\n' $((now - start)) "$rss" "$hwm" "$pct"
  last_cpu=$cpu; last_t=$now
done
echo "workload: $(cat "$log.workload")"
kill -TERM $sidecar; wait $sidecar || true
trap - EXIT
grep "stopped:" "$log"
rm -f "$log" "$log.workload"
