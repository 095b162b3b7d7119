#!/usr/bin/env bash
# Where the kernel's time per sendmmsg call goes with the sidecar attached (BENCHMARKS.md, part
# 5): what the per-program statistics of part 1 cannot tell apart, the work a program asks of
# the kernel's helpers. perf samples every CPU (cpu-clock, PROFILE_HZ per CPU, with call stacks)
# while the workload runs under the sidecar (tracepoint family); a sample in one of the
# sidecar's programs counts for the program itself or for the helper it called (a hash map's
# insert, a kernel read, ...), and a group's samples become ns per call: samples / PROFILE_HZ
# over the workload's calls. As root:
#   scripts/kernel-profile.sh [CONFIGURATION...]
#       default: events metrics-only events+hash-map metrics-only+hash-map
# CONFIGURATION: events (detail events, spans made and dropped) or metrics-only (the call
# metrics alone), with the kernel's default store of calls in flight (task-local storage from
# Linux 5.12), or +hash-map: OTEL_SENDMMSG_CALL_STORE=hash-map. PROFILE_VLENS (1 64), PROFILE_SECONDS (5), PROFILE_HZ (2000: more samples
# slow the workload and inflate its time per call). Prints one Markdown table. Needs perf
# (Debian's linux-perf, installed if missing).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

if ! command -v perf >/dev/null; then
  printf 'kernel-profile: installing perf (linux-perf)\n' >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends linux-perf >/dev/null
fi

configurations=("$@")
((${#configurations[@]})) || configurations=(events metrics-only events+hash-map metrics-only+hash-map)
read -r -a vlens <<<"${PROFILE_VLENS:-1 64}"
seconds=${PROFILE_SECONDS:-5}
hz=${PROFILE_HZ:-2000}

cargo build --locked --release -q --bin otel-sendmmsg --bin sendmmsg-workload
sidecar=target/release/otel-sendmmsg
workload=target/release/sendmmsg-workload
work=$(mktemp -d)
pid=
cleanup() {
  [[ -n $pid ]] && kill -INT "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
# The JIT's programs by name in the samples.
sysctl -qw net.core.bpf_jit_kallsyms=1

# Each sample's stack (leaf first) -> its group: the program's own instructions
# (`bpf_prog_<tag>_<name>`), else the helper the program called (the frame right below the
# program's), else the path that runs the programs, else none of ours.
group_samples() {
  awk '
    function helper(f) {
      if (f ~ /^(htab_map_update_elem|htab_map_delete_elem|htab_percpu_map_update_elem)/) return "hash insert/delete"
      if (f ~ /^(__htab_map_lookup_elem|htab_map_lookup_elem|htab_percpu_map_lookup_elem|lookup_nulls_elem_raw|htab_map_hash)/) return "hash lookups"
      if (f ~ /^(bpf_task_storage_get|bpf_local_storage_lookup|bpf_local_storage_update)/) return "task storage"
      if (f ~ /^(bpf_probe_read_kernel|copy_from_kernel_nofault)/) return "kernel reads"
      if (f ~ /^(bpf_probe_read_user|copy_from_user_nofault)/) return "user memory reads"
      if (f ~ /^(bpf_ktime_get_ns|ktime_get_mono_fast_ns|read_tsc)/) return "clock"
      if (f ~ /ringbuf/) return "ring buffer"
      return "other helpers"
    }
    function flush() {
      if (n == 0) return
      g = "none"
      for (i = 1; i <= n; i++) {
        if (frame[i] ~ /^bpf_prog_/) { g = (i == 1) ? "programs" : helper(frame[i - 1]); break }
        if (frame[i] ~ /^(trace_call_bpf|perf_syscall_enter|perf_syscall_exit|perf_trace_run_bpf_submit|perf_trace_sock_msg_length|__bpf_prog_enter|__bpf_prog_exit|bpf_trampoline_|syscall_trace_enter|syscall_exit_work)/) g = "dispatch"
      }
      print g
      n = 0
    }
    NF == 0 { flush(); next }
    { frame[++n] = $2 }
    END { flush() }'
}

groups=("programs" "hash insert/delete" "hash lookups" "task storage" "kernel reads" "user memory reads" "clock" "ring buffer" "other helpers" "dispatch")
header="| configuration | vlen | calls | $(printf '%s | ' "${groups[@]}")our share (all but dispatch) |"
echo "$header"
echo "|---|---:|---:|$(printf -- '---:|%.0s' "${groups[@]}")---:|"

for configuration in "${configurations[@]}"; do
  vars=(OTEL_SENDMMSG_ATTACH=tracepoint OTEL_SENDMMSG_MESSAGE_DETAIL=events OTEL_TRACES_EXPORTER=none)
  [[ $configuration == *+hash-map ]] && vars+=(OTEL_SENDMMSG_CALL_STORE=hash-map)
  case ${configuration%+hash-map} in
    events) ;;
    metrics-only)
      # As the overhead bench runs it: counted in the kernel, one export at shutdown to a
      # closed port.
      vars+=(OTEL_METRICS_EXPORTER=otlp OTEL_SENDMMSG_CALL_METRICS=true
        OTEL_EXPORTER_OTLP_METRICS_ENDPOINT=http://127.0.0.1:9 OTEL_EXPORTER_OTLP_METRICS_TIMEOUT=100
        OTEL_METRIC_EXPORT_INTERVAL=3600000) ;;
    *) echo "kernel-profile: unknown configuration $configuration (events, metrics-only, either +hash-map)" >&2; exit 2 ;;
  esac
  env "${vars[@]}" "$sidecar" >"$work/sidecar.log" 2>&1 &
  pid=$!
  for _ in $(seq 300); do
    grep -qs "ready:" "$work/sidecar.log" && break
    kill -0 "$pid" 2>/dev/null || { cat "$work/sidecar.log" >&2; exit 1; }
    sleep 0.1
  done
  grep -qs "ready:" "$work/sidecar.log" || { echo "kernel-profile: the sidecar never got ready" >&2; exit 1; }
  for vlen in "${vlens[@]}"; do
    perf record -q -a -g -e cpu-clock -F "$hz" -o "$work/perf.data" -- \
      "$workload" loop "$seconds" "$vlen" 0 1 64 >"$work/load.json" 2>/dev/null
    calls=$(sed -n 's/.*"calls":\([0-9]*\).*/\1/p' "$work/load.json")
    perf script -i "$work/perf.data" -F ip,sym 2>/dev/null | group_samples | sort | uniq -c >"$work/groups"
    row="| sidecar tracepoint, $configuration | $vlen | $calls |"
    ours=0
    for g in "${groups[@]}"; do
      n=$(awk -v g="$g" '{c=$1; $1=""; sub(/^ /,""); if ($0 == g) print c}' "$work/groups")
      ns=$(( ${n:-0} * 1000000000 / hz / calls ))
      [[ $g == dispatch ]] || ours=$((ours + ns))
      row+=" $ns |"
    done
    echo "$row $ours |"
  done
  kill -INT "$pid"
  wait "$pid" || true
  pid=
done
echo
echo "ns per call: the group's samples / $hz per second / the workload's calls (host-wide: other processes' calls add to it; on an idle machine, the workload's). \"dispatch\": the syscall and tracepoint path that runs the programs, which the empty programs of part 1 pay too. perf's own sampling slows the workload, not the time per call."
