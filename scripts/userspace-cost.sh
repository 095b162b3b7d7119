#!/usr/bin/env bash
# What the sidecar's user space costs per span (otel-sendmmsg/benches/userspace.rs: realistic
# records through decode -> span -> export queue -> OTLP protobuf bytes, no kernel or network).
#   scripts/userspace-cost.sh [VLEN...]        default: 1 64
# Prints, per VLEN, one line:
#   userspace: vlen 1: N instructions/span, M ns/span
# then what a span waiting in the export queue holds (benches/queue_memory.rs), for vlen 1 and 64:
#   queue: vlen 1: N bytes/span
# Instructions come from callgrind (valgrind), two runs of different lengths whose difference is
# divided by the difference in spans: start-up cancels out and machine load changes nothing.
# ns/span is the wall clock (median of 5 reps): compare it only between runs on an idle machine.
# USERSPACE_ANNOTATE=1 also prints callgrind_annotate's top functions (inclusive) per VLEN.
# USERSPACE_JOBS (2) bounds the build's parallelism.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

command -v valgrind >/dev/null || { echo "userspace-cost: valgrind is needed (apt-get install valgrind)" >&2; exit 1; }
vlens=("$@")
((${#vlens[@]})) || vlens=(1 64)

bin=$(cargo bench --locked -j "${USERSPACE_JOBS:-2}" -p otel-sendmmsg --bench userspace --no-run \
        --message-format=json-render-diagnostics |
      grep -o '"executable":"[^"]*/userspace-[^"]*"' | tail -1 | cut -d'"' -f4)
[[ -x $bin ]] || { echo "userspace-cost: no bench executable found" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Instructions of one run of CALLS calls (no timed reps: the warm-up rep alone).
instructions() {
  local vlen=$1 calls=$2 out="$work/callgrind.$1.$2"
  valgrind --tool=callgrind --callgrind-out-file="$out" "$bin" --vlen "$vlen" --calls "$calls" --reps 0 \
    2>"$work/valgrind.log" || { cat "$work/valgrind.log" >&2; return 1; }
  awk '/^(summary|totals):/ { print $2; exit }' "$out"
}

for vlen in "${vlens[@]}"; do
  # Multiples of the default batch (512 spans), so both runs end on whole batches; a call of
  # vlen 64 is 65 spans' worth of work (64 events), hence fewer calls.
  if ((vlen > 8)); then short=512 long=2560 timed=20000; else short=2048 long=12288 timed=200000; fi
  a=$(instructions "$vlen" "$short")
  b=$(instructions "$vlen" "$long")
  per_span=$(( (b - a) / (long - short) ))
  ns=$("$bin" --vlen "$vlen" --calls "$timed" --reps 5 2>/dev/null | sed -n 's/^ns_per_span=//p')
  echo "userspace: vlen $vlen: $per_span instructions/span, $ns ns/span"
  if [[ ${USERSPACE_ANNOTATE:-0} == 1 ]]; then
    callgrind_annotate --inclusive=yes "$work/callgrind.$vlen.$long" 2>/dev/null | head -60
  fi
done

cargo bench --locked -j "${USERSPACE_JOBS:-2}" -p otel-sendmmsg --bench queue_memory 2>/dev/null | grep '^queue:'
