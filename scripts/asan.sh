#!/usr/bin/env bash
# Memory safety check under AddressSanitizer: the CPU kernel tests, the CPU model tests, a
# `bench train` step (NF4 and GGUF-block weights) and a short `generate --weights auto`, each with
# every CPU SIMD tier this machine executes forced through FLEXLORA_CPU; then the GGUF, NF4,
# training-data and corrupt-input tests once. The twin of
# scripts/valgrind.sh for the tier valgrind cannot run: valgrind does not decode AVX-512, ASan
# instruments the code at compile time and runs it natively, so the avx512 tier is covered too.
#
# Build: nightly Rust (`-Zsanitizer=address` is unstable; `rustup toolchain install nightly`) into
# its own target directory, target/asan. `--target` is given explicitly so that RUSTFLAGS reach
# only the target's crates, not build scripts and proc macros (which cannot load the ASan
# runtime). The standard library is not rebuilt (no -Zbuild-std): its own code is not
# instrumented, but every allocation goes through ASan's malloc and every access flexlora and
# its dependencies make (slices, raw pointers, SIMD intrinsics, `get_unchecked`) is checked.
# RUSTFLAGS replaces .cargo/config.toml's flags, so `-C target-cpu=native` is repeated here: the
# code tested is the code the ordinary build runs.
#
# GPU tests are skipped: FLEXLORA_TEST_BACKEND=metal leaves no adapter on Linux, so tests that
# loop over GPU adapters (`each_gpu`, `gpu()`) run their CPU part only, and the script fails if one
# opened an adapter anyway; the commands run with --device cpu. (Mesa's lavapipe is not
# instrumented, so ASan would check little there, and it would take most of the time.)
#
# Any ASan report (heap/stack/global overflow, use after free, double free, leak) fails the
# script (exit 1): halt_on_error stops the process at the first one and log_path writes it to
# $LOGS/NAME.asan.PID, which the script looks for after each run. A failing test fails it too.
#
# Long: the build is ~40 minutes on 2 busy cores (nothing is shared with the ordinary target/),
# the runs ~3 (2 min 48 s here). Not part of CI (build time); run it after changing
# `unsafe` code, with scripts/valgrind.sh for AVX2-only codegen.
#   usage: bash scripts/asan.sh [LOG_DIR]     (default target/asan/logs)
set -euo pipefail
cd "$(dirname "$0")/.."
model=${FLEXLORA_MODEL_GGUF:-$(bash scripts/fetch-model.sh)}
# Optional: Qwen2.5-Coder-0.5B (Q4_K_M), from `scripts/fetch-model.sh qwen`; skipped (said below) if absent.
qwen=${FLEXLORA_QWEN_GGUF:-models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf}
logs=${1:-target/asan/logs}
rm -rf "$logs" # an old report would fail this run
mkdir -p "$logs"
logs=$(cd "$logs" && pwd) # log_path must survive the tests' changes of directory
host=$(rustc +nightly -vV | sed -n 's/^host: //p')
td=target/asan
export RUSTFLAGS="-Zsanitizer=address -C target-cpu=native"
# detect_leaks: also catches a lost free (the other half of a double free); flexlora's process
# exits cleanly, so any leak report is a finding. detect_stack_use_after_return: references to a
# returned frame's locals (cheap at these sizes). Reports are symbolized (llvm-symbolizer on PATH).
asan_base="halt_on_error=1:detect_leaks=1:detect_stack_use_after_return=1:print_summary=1"
export FLEXLORA_TEST_BACKEND=metal
unset CI # CI=true makes a missing GPU adapter a test failure

echo "== build (nightly, -Zsanitizer=address, $td)"
# One cargo call: the test build also builds the binary (the integration tests run it), with the
# same features (a separate `cargo build` would unify fewer and compile everything again).
cargo +nightly test --target "$host" --target-dir "$td" --no-run --test ops --test model \
  --test gguf --test quant --test train_data --test corrupt_inputs 2>&1 | tail -n 3
test_bin() { find "$td/$host/debug/deps" -maxdepth 1 -type f -executable -name "$1-*" -printf '%T@ %p\n' | sort -n | tail -n 1 | cut -d' ' -f2; }
ops=$(test_bin ops)
model_tests=$(test_bin model)
bin=$td/$host/debug/flexlora

failed=0
asan() { # NAME CMD...: run CMD under ASan, output to $logs/NAME.out, reports to $logs/NAME.asan.*
  local name=$1; shift
  local start=$SECONDS status=0
  ASAN_OPTIONS="$asan_base:log_path=$logs/$name.asan" "$@" >"$logs/$name.out" 2>&1 || status=$?
  local reports
  reports=$(find "$logs" -maxdepth 1 -name "$name.asan.*" | sort)
  if [ -n "$reports" ]; then
    echo "FAIL  $name ($((SECONDS - start)) s): ASan report(s): $reports"
    failed=1
  elif [ $status -ne 0 ]; then
    echo "FAIL  $name ($((SECONDS - start)) s): exit $status, see $logs/$name.out"
    failed=1
  elif grep -q "GPU tests run on" "$logs/$name.out"; then
    echo "FAIL  $name ($((SECONDS - start)) s): a test opened a GPU adapter (meant to be CPU only)"
    failed=1
  else
    echo "ok    $name ($((SECONDS - start)) s)$(grep -o '[0-9]* passed' "$logs/$name.out" | tail -n 1 | sed 's/^/: /')"
  fi
}

# Widest first: AVX-512 is what valgrind cannot check.
flags=$(grep -m1 '^flags' /proc/cpuinfo)
tiers=portable
[[ " $flags " == *" avx2 "* && " $flags " == *" fma "* ]] && tiers="avx2 $tiers"
[[ " $flags " == *" avx512f "* && $tiers == avx2* ]] && tiers="avx512 $tiers"
echo "== tiers: $tiers"
[ -s "$qwen" ] || echo "== no $qwen: the Qwen generate (Q4_K/Q6_K kernels) is skipped; scripts/fetch-model.sh qwen fetches it"
# `each_tier` tests run every tier whatever FLEXLORA_CPU says; the others run the forced one.
# --skip gpu: tests that exist only for the GPU (nothing to run without an adapter); --nocapture
# so that the "GPU tests run on" line of an adapter opened anyway reaches the log.
for tier in $tiers; do
  export FLEXLORA_CPU=$tier
  asan "ops-$tier" "$ops" --skip gpu --nocapture
  asan "model-$tier" "$model_tests" --skip gpu --nocapture
  asan "bench-train-nf4-$tier" "$bin" bench train --device cpu --model "$model" --seq 64 --steps 1
  asan "bench-train-auto-$tier" "$bin" bench train --device cpu --weights auto --model "$model" --seq 64 --steps 1
  asan "generate-blocks-$tier" "$bin" generate --device cpu --model "$model" --weights auto \
    --max-new-tokens 4 --prompt "def add(a, b):"
  if [ -s "$qwen" ]; then # Q4_K and Q6_K blocks: the other intrinsics kernels of matmul_gguf
    asan "generate-qwen-blocks-$tier" "$bin" generate --device cpu --model "$qwen" --weights auto \
      --max-new-tokens 4 --prompt "def add(a, b):"
  fi
done
# The file readers and the corrupt-input corpus (84 bad inputs, through the binary), once, on the
# widest tier: they check parsing and error paths more than kernels.
export FLEXLORA_CPU=${tiers%% *}
for t in gguf quant train_data corrupt_inputs; do
  asan "$t-$FLEXLORA_CPU" "$(test_bin "$t")" --skip gpu --nocapture
done
unset FLEXLORA_CPU
exit $failed
