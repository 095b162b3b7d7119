#!/usr/bin/env bash
# Fuzzes the record decoder, the span mapping, the configuration parser and the thread-context
# discovery's maps and ELF parsers (see fuzz/README.md):
#   scripts/fuzz.sh           every target for 20 s (what CI runs)
#   scripts/fuzz.sh 1800      every target for 30 minutes
# Installs cargo-fuzz if missing, writes the seed records, builds the targets once, and runs each
# for SECONDS, growing its corpus in fuzz/corpus/TARGET/. Exits 1 if any target failed (a panic,
# a sanitizer report, a timeout or running out of memory), after naming the input that does it
# (saved in fuzz/artifacts/TARGET/, and printed in base64 for CI logs) and how to replay it.
#
# Works with the stable toolchain alone: cargo-fuzz passes unstable flags (-Zsanitizer=address,
# -Cpasses=sancov-module ...), which RUSTC_BOOTSTRAP=1 lets a stable rustc take, and
# AddressSanitizer's runtime ships with stable's rust-std. It checks the unsafe byte copies of the
# record decoder, which safe Rust's bounds checks would not. (MemorySanitizer would need std
# rebuilt with it: -Zbuild-std and rust-src, which a fresh CI machine does not have.)
#
# Runs under 2 minutes per target build with `cargo fuzz build --dev`: the code under test
# optimized, its dependencies not (fuzz/Cargo.toml), so the build of a fresh clone is about half
# as long; longer runs optimize everything, for about 5 times the executions per second.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-20}
if ! [[ $seconds =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: $0 [SECONDS per target, default 20]" >&2
  exit 2
fi
CARGO_FUZZ_VERSION=0.13.2
TARGETS=(records_decode records_structured config proc_files maps_lines elf_symbols process_context)

log() { printf 'fuzz: %s\n' "$*" >&2; }

# The targets link the sidecar's library, whose build script builds the BPF crate: the same
# toolchain as any build (nothing is mounted: nothing is traced).
scripts/setup.sh --no-mounts

export PATH="$HOME/.cargo/bin:$PATH"
if ! cargo fuzz --version 2>/dev/null | grep -qxF "cargo-fuzz $CARGO_FUZZ_VERSION"; then
  log "installing cargo-fuzz $CARGO_FUZZ_VERSION (about 2 minutes, once)"
  cargo install --locked cargo-fuzz --version "$CARGO_FUZZ_VERSION"
fi
# Only the host crates see it: otel-sendmmsg/build.rs gives the BPF build its own environment.
export RUSTC_BOOTSTRAP=1

profile=()
((seconds < 120)) && profile=(--dev)
log "$(rustc --version); cargo fuzz build ${profile[*]:-(release)}"

# Real records, encoded as the BPF side encodes them, so records_decode starts past the header
# checks. Regenerated each time: they follow the record's layout and version.
corpus=fuzz/corpus
mkdir -p "$corpus/records_decode"
cargo run --quiet --manifest-path fuzz/Cargo.toml -p otel-sendmmsg-fuzz-seeds -- "$corpus/records_decode"
# Real inputs for the thread-context discovery's parsers: this shell's maps, and a small library
# that defines otel_thread_ctx_v1 and accesses it through TLSDESC (gcc, stripped: the dynamic
# symbol table alone), so the ELF scan starts past the header checks and reaches the relocations.
mkdir -p "$corpus/maps_lines" "$corpus/elf_symbols"
cp /proc/self/maps "$corpus/maps_lines/seed-self-maps"
rm -f "$corpus/elf_symbols/seed-marker.so"
printf '__thread void *otel_thread_ctx_v1;\nvoid set(void *p) { otel_thread_ctx_v1 = p; }\n' |
  gcc -shared -fPIC -s -mtls-dialect=gnu2 -o "$corpus/elf_symbols/seed-tls.so" -x c -

cargo fuzz build "${profile[@]}"

logs=fuzz/target/fuzz-logs
mkdir -p "$logs"
# A figure of libFuzzer's -print_final_stats (absent when the run stopped at a failure).
final_stat() { sed -n "s/^stat::$1: *//p" "$logs/$target.log" | tail -1 | grep . || echo '?'; }
failed=()
for target in "${TARGETS[@]}"; do
  mkdir -p "$corpus/$target" "fuzz/artifacts/$target"
  args=("-max_total_time=$seconds" -max_len=4096 -timeout=10 -print_final_stats=1)
  [[ $target == config ]] && args+=(-dict=fuzz/config.dict)
  # A small library is ~14 KiB; one allocation past the scan's 64 MiB read budget is a failure.
  [[ $target == elf_symbols ]] && args=("${args[@]/-max_len=4096/-max_len=65536}" -malloc_limit_mb=96)
  log "$target: ${seconds} s ($logs/$target.log)"
  status=0
  cargo fuzz run "${profile[@]}" "$target" "$corpus/$target" -- "${args[@]}" >"$logs/$target.log" 2>&1 ||
    status=$?
  summary="$(final_stat number_of_executed_units) executions ($(final_stat average_exec_per_sec)/s), corpus $(ls "$corpus/$target" | wc -l) inputs"
  if ((status == 0)); then
    log "$target: ok: $summary"
    continue
  fi
  failed+=("$target")
  log "$target FAILED (exit $status): $summary; what went wrong (all of it in $logs/$target.log):"
  # The panic and its message, or the sanitizer's or libFuzzer's report (timeout, out of memory).
  grep -m1 -A15 -E 'panicked at|ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer)' "$logs/$target.log" >&2 ||
    tail -n 30 "$logs/$target.log" >&2
  # libFuzzer names the input it saved: crash-*, timeout-*, oom-* or leak-*.
  input=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$logs/$target.log" | tail -1)
  if [[ -n $input && -f $input ]]; then
    log "$target: the failing input is $input; replay it with"
    log "  RUSTC_BOOTSTRAP=1 cargo fuzz run ${profile[*]} $target $input"
    log "$target: the input in base64 (\`base64 -d > input\` recreates it):"
    base64 -w 76 "$input" | head -n 200 >&2
  fi
done

if ((${#failed[@]})); then
  log "failed: ${failed[*]}"
  exit 1
fi
log "every target ran ${seconds} s without a failure"
