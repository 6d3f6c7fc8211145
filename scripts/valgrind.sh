#!/usr/bin/env bash
# Memory safety check: the CPU kernel tests, CPU model tests, a `bench train` step and a short
# `generate` on the file's own GGUF blocks, each under valgrind memcheck (Debian `valgrind`) with
# every CPU SIMD tier valgrind can execute forced through FLEXLORA_CPU.
#
# Valgrind (3.19 here) cannot execute AVX-512 instructions, so this builds for x86-64-v3
# (AVX2 + FMA) into its own target directory, target/valgrind, instead of the repository's
# `target-cpu=native`. Under valgrind the CPU reports no AVX-512, so the avx512 tier is not run
# here; the ordinary tests run it on machines that have it. Any invalid read, write, free or use of
# an uninitialised value fails the script (exit 1) and the log names the test. scripts/valgrind.supp
# suppresses one known false positive inside glibc's dynamic loader.
#
# Long: the build is ~25 minutes on 2 cores and the runs ~30 more. Not part of CI; run it after
# changing `unsafe` code.
#   usage: bash scripts/valgrind.sh [LOG_DIR]     (default target/valgrind/logs)
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "valgrind not found: apt-get install valgrind" >&2; exit 2; }
model=${FLEXLORA_MODEL_GGUF:-$(bash scripts/fetch-model.sh)}
logs=${1:-target/valgrind/logs}
mkdir -p "$logs"
export RUSTFLAGS="-C target-cpu=x86-64-v3"
td=target/valgrind

echo "== build (x86-64-v3, $td)"
cargo build --target-dir "$td" --bin flexlora
cargo test --target-dir "$td" --no-run --test ops --test model 2>&1 | tail -n 3
test_bin() { find "$td/debug/deps" -maxdepth 1 -type f -executable -name "$1-*" -printf '%T@ %p\n' | sort -n | tail -n 1 | cut -d' ' -f2; }
ops=$(test_bin ops)
model_tests=$(test_bin model)
bin=$td/debug/flexlora

failed=0
memcheck() { # NAME CMD...: run CMD under memcheck, log to $logs/NAME.log
  local name=$1; shift
  local start=$SECONDS
  if valgrind --tool=memcheck --error-exitcode=99 --leak-check=no --track-origins=no \
      --suppressions=scripts/valgrind.supp --log-file="$logs/$name.log" "$@" >"$logs/$name.out" 2>&1; then
    echo "ok    $name ($((SECONDS - start)) s)"
  else
    echo "FAIL  $name ($((SECONDS - start)) s): see $logs/$name.log and $logs/$name.out"
    failed=1
  fi
}

# The kernel tests force every tier the CPU reports (each_tier), so one run covers portable and avx2.
# Tests that open a GPU adapter are skipped (lavapipe under memcheck takes hours).
memcheck ops-cpu "$ops" --test-threads=1 --skip gpu --skip every_device --skip oversized_binding
for tier in portable avx2; do
  export FLEXLORA_CPU=$tier
  memcheck "model-cpu-$tier" "$model_tests" --test-threads=1 \
    forward::full_forward_matches_independent_reference \
    forward::cached_decode_matches_full_forward_batched \
    forward::decode_step_over_ragged_sequences_matches_reference \
    train_grad::lora_gradients_match_finite_differences \
    generate::batched_generation_equals_one_request_at_a_time
  memcheck "bench-train-$tier" "$bin" bench train --device cpu --model "$model" --seq 64 --steps 1
  memcheck "generate-blocks-$tier" "$bin" generate --device cpu --model "$model" --weights auto \
    --max-new-tokens 4 --prompt "def add(a, b):"
done
unset FLEXLORA_CPU
exit $failed
