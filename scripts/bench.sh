#!/usr/bin/env bash
# The benchmark in one command (see BENCHMARKS.md). As root:
#   scripts/bench.sh                     everything, with the defaults (under 10 minutes)
#   BENCH_ROUNDS=3 BENCH_SECONDS=2 scripts/bench.sh     shorter; every BENCH_* variable is
#                                        listed in BENCHMARKS.md
# Installs what the build needs (scripts/setup.sh) and bpftrace (the peer) if missing, then runs
# `cargo bench --bench overhead`, scripts/userspace-cost.sh and scripts/kernel-profile.sh (which
# installs perf if missing); the report goes to stdout,
# progress to stderr. Run it on an
# otherwise idle machine: every other process's CPU time shows up in the numbers.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

if ! command -v bpftrace >/dev/null; then
  printf 'bench: installing bpftrace (the peer the sidecar is compared with)\n' >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends bpftrace >/dev/null
fi

export PATH="$HOME/.cargo/bin:$PATH"
# The parts of `cargo bench --bench overhead` (it skips a part it does not know), `userspace`:
# scripts/userspace-cost.sh, user space's own cost per span (callgrind and the clock), and
# `profile`: scripts/kernel-profile.sh, where the kernel's time per call goes (perf).
export BENCH_PARTS=${BENCH_PARTS:-overhead,pipeline,first-call,userspace,profile}
if [[ ,$BENCH_PARTS, =~ ,(overhead|pipeline|first-call), ]]; then
  cargo bench --locked --bench overhead
fi
if [[ ,$BENCH_PARTS, == *,userspace,* ]]; then
  printf '\n## User space per span (scripts/userspace-cost.sh)\n\n'
  scripts/userspace-cost.sh | sed 's/^/    /'
fi
if [[ ,$BENCH_PARTS, == *,profile,* ]]; then
  printf '\n## Where the kernel time per call goes (scripts/kernel-profile.sh)\n\n'
  scripts/kernel-profile.sh
fi
