#!/usr/bin/env bash
# Draws one trace of the demo as an SVG for the README: the app's publish-batch span and the
# sendmmsg span the sidecar made under it, in a batch where a message failed (scripts/trace_picture.py,
# from what Jaeger's query API answers; this Jaeger has no UI to take a screenshot of).
#   scripts/trace-picture.sh [--out FILE]
#       as root: runs scripts/local-demo.sh (Jaeger, the Collector, the demo app, the sidecar) until
#       such a trace is in Jaeger, draws it to FILE (default docs/trace.svg), and stops the stack
#   scripts/trace-picture.sh --jaeger URL [--service NAME] [--out FILE]
#       from a Jaeger that already runs (service default my-app)
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
out=$root/docs/trace.svg jaeger= service=my-app
log() { printf 'trace-picture: %s\n' "$*" >&2; }
usage() { sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

while (($#)); do
  case $1 in
    --out) (($# >= 2)) || usage; out=$2; shift 2 ;;
    --jaeger) (($# >= 2)) || usage; jaeger=$2; shift 2 ;;
    --service) (($# >= 2)) || usage; service=$2; shift 2 ;;
    *) usage ;;
  esac
done
mkdir -p "$(dirname "$out")"
draw() { python3 "$root/scripts/trace_picture.py" --jaeger "$1" --service "$service" --out "$out"; }

if [[ -n $jaeger ]]; then
  draw "$jaeger"
  log "wrote $out"
  exit 0
fi

query=http://127.0.0.1:16686
if ((EUID != 0)); then
  log "run as root (the sidecar loads BPF programs), or pass --jaeger URL"
  exit 1
fi
# A Jaeger already there would answer in place of the one the demo starts (which could not bind).
if curl -fs -o /dev/null "$query/api/services"; then
  log "something already answers on $query: stop it, or draw from it with --jaeger $query"
  exit 1
fi

logs=$(mktemp -d /tmp/otel-sendmmsg-picture.XXXXXX)
# In a session of its own, so that stopping it reaches all it started: the sleep it waits in (bash
# runs its TERM trap only once that ends), a cargo build, Jaeger, the Collector, the app, the sidecar.
DEMO_SECONDS=60 DEMO_LOGS=$logs setsid "$root/scripts/local-demo.sh" >"$logs/local-demo.log" 2>&1 &
demo=$!
stop_demo() {
  trap - EXIT INT TERM
  kill -TERM -- "-$demo" 2>/dev/null || true
  # Its trap waits for each of its children; what has not ended after 20 s is killed.
  for _ in $(seq 200); do
    kill -0 -- "-$demo" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL -- "-$demo" 2>/dev/null && log "killed what was left of the demo stack"
  wait "$demo" 2>/dev/null || true
}
trap stop_demo EXIT
trap 'exit 130' INT TERM

log "starting the demo stack (setup, cargo builds, then the services; logs in $logs)"
# The start-up has no deadline of its own here: local-demo.sh gives up by itself when something does
# not come up, and ends DEMO_SECONDS after the app starts. Once Jaeger answers, the first batch with
# a failed message is due within seconds (every 10th, one every 500 ms, exported every second).
deadline=
until draw "$query" 2>"$logs/trace_picture.err"; do
  if ! kill -0 "$demo" 2>/dev/null; then
    log "the demo stack stopped before Jaeger had such a trace (logs in $logs):"
    tail -n 20 "$logs/local-demo.log" >&2
    cat "$logs/trace_picture.err" >&2
    exit 1
  fi
  if [[ -z $deadline ]] && curl -fs -o /dev/null "$query/api/services"; then
    deadline=$((SECONDS + 90))
    log "Jaeger answers; waiting for a batch with a failed message"
  fi
  if [[ -n $deadline ]] && ((SECONDS > deadline)); then
    log "no trace with a failed message after 90 s:"
    cat "$logs/trace_picture.err" >&2
    exit 1
  fi
  sleep 1
done
stop_demo
rm -rf "$logs"
log "wrote $out"
