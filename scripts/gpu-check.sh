#!/usr/bin/env bash
# One report from a machine with a GPU, in at most ~8 minutes: what the machine is, the build,
# `flexlora selftest` (every kernel on every adapter against the CPU twin), the GPU op tests on
# every adapter, and `flexlora bench matmul|nf4|train|generate` on the GPU.
#
#   bash scripts/gpu-check.sh [REPORT]          (default: gpu-check-report.txt)
#
# Environment: GPU_CHECK_BACKEND=vulkan|gl|metal|dx12 picks the adapter the benchmarks use (default:
# the best one wgpu finds); FLEXLORA_MODEL_GGUF the model for bench train/generate (default
# models/SmolLM2-135M-Instruct.Q4_1.gguf; without it those two are reported as not run);
# GPU_CHECK_BUDGET total seconds (default 480); GPU_CHECK_BIN and GPU_CHECK_OPS_TEST: a flexlora
# binary and an ops test binary built elsewhere, for a machine without Rust (then no build step).
# Build those for any x86-64 CPU with AVX2, since .cargo/config.toml builds for the building CPU (an
# ops test binary built on an AMD Zen 5 stopped with SIGILL on an Intel Xeon):
#   RUSTFLAGS="-C target-cpu=x86-64-v3" cargo build --release --bins
#   RUSTFLAGS="-C target-cpu=x86-64-v3" cargo test --release --test ops --no-run
# Each step gets what is left of the budget, capped,
# and a step that runs out is killed and reported as timed out: the report is always written.
#
# On a bare Linux GPU machine the Vulkan/EGL loaders may be missing (`ldconfig -p | grep libvulkan`
# prints nothing): install libvulkan1 and libegl1 (Debian), or put their .deb files in .gl/ and run
# this as root: they are unpacked before anything else. Works on any Vulkan device, lavapipe included.
set -uo pipefail
cd "$(dirname "$0")/.."
report=${1:-gpu-check-report.txt}
budget=${GPU_CHECK_BUDGET:-480}
start=$(date +%s)
model=${FLEXLORA_MODEL_GGUF:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
backend_flag=()
[ -n "${GPU_CHECK_BACKEND:-}" ] && backend_flag=(--backend "$GPU_CHECK_BACKEND")
if [ -z "${XDG_RUNTIME_DIR:-}" ] || [ ! -w "${XDG_RUNTIME_DIR:-/nonexistent}" ]; then
  XDG_RUNTIME_DIR=$(mktemp -d); chmod 700 "$XDG_RUNTIME_DIR"; export XDG_RUNTIME_DIR
fi
: >"$report"
failures=()

say() { echo "$*" | tee -a "$report"; }

# step NAME CAP_SECONDS COMMAND...: runs COMMAND with min(CAP, what is left) seconds, output to
# the terminal and the report, and records a failure or a timeout.
step() {
  local name=$1 cap=$2; shift 2
  local left=$((budget - ($(date +%s) - start)))
  local limit=$((cap < left ? cap : left))
  say ""
  say "== $name: $*"
  if [ "$limit" -le 5 ]; then
    say "-- not run: the ${budget}s budget is spent"
    failures+=("$name (not run: out of time)")
    return
  fi
  local t0=$(date +%s)
  timeout -k 10 "$limit" "$@" 2>&1 | tee -a "$report"
  local rc=${PIPESTATUS[0]}
  local took=$(($(date +%s) - t0))
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    say "-- $name: timed out after ${limit}s"
    failures+=("$name (timed out after ${limit}s)")
  elif [ "$rc" -ne 0 ]; then
    say "-- $name: FAILED (exit $rc) after ${took}s"
    failures+=("$name (exit $rc)")
  else
    say "-- $name: ok in ${took}s"
  fi
}

if ! ldconfig -p 2>/dev/null | grep -q libvulkan && compgen -G ".gl/*.deb" >/dev/null && [ "$(id -u)" -eq 0 ]; then
  for f in .gl/*.deb; do dpkg -x "$f" /; done
  ldconfig
  echo "unpacked the loaders in .gl/" >>"$report"
fi

say "flexlora gpu-check, $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
say "host: $(uname -srm), $(nproc) CPUs, load: $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null)"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | sed 's/^/gpu: /' | tee -a "$report"
command -v vulkaninfo >/dev/null && vulkaninfo --summary 2>/dev/null | grep -E 'deviceName|driverInfo|apiVersion' | sed 's/^/vulkan: /' | tee -a "$report"
say "libvulkan: $(ldconfig -p 2>/dev/null | grep -c libvulkan) entries, libEGL: $(ldconfig -p 2>/dev/null | grep -c 'libEGL\.so')"

if [ -n "${GPU_CHECK_BIN:-}" ] && [ -n "${GPU_CHECK_OPS_TEST:-}" ]; then
  bin=$GPU_CHECK_BIN
  ops_test=("$GPU_CHECK_OPS_TEST")
  say "prebuilt: $bin ($(sha256sum "$bin" | cut -c1-12)), $GPU_CHECK_OPS_TEST ($(sha256sum "$GPU_CHECK_OPS_TEST" | cut -c1-12))"
else
  step build 300 bash -c "cargo build --bins && cargo test --no-run --test ops"
  bin=target/debug/flexlora
  ops_test=(cargo test --test ops)
fi
if [ ! -x "$bin" ]; then
  say "no binary at $bin: nothing else can run"
  exit 1
fi
step devices 30 "$bin" devices
step selftest 120 "$bin" selftest
# All adapters (FLEXLORA_TEST_BACKEND unset); CI is not set, so a backend this machine lacks is
# skipped loudly rather than failed.
step "GPU op tests" 150 env -u CI "${ops_test[@]}"
step "bench matmul" 90 "$bin" bench matmul --reps 2 "${backend_flag[@]}"
step "bench nf4" 90 "$bin" bench nf4 --reps 1 "${backend_flag[@]}"
# A 7B QLoRA step (random weights with Code Llama 7B's shapes, NF4): what a real GPU is for.
step "bench train 7B" 150 "$bin" bench train --random-7b --device gpu --seq 256 --steps 2 "${backend_flag[@]}"
if [ -f "$model" ]; then
  step "bench train" 150 "$bin" bench train --model "$model" --device gpu --seq 64 --steps 1 "${backend_flag[@]}"
  step "bench generate" 90 "$bin" bench generate --model "$model" --device gpu --prompt-tokens 64 --decode-tokens 16 "${backend_flag[@]}"
else
  say ""
  say "== bench train, bench generate: not run, no model at $model (set FLEXLORA_MODEL_GGUF or run scripts/fetch-model.sh)"
  failures+=("bench train/generate (no model)")
fi

say ""
say "== summary: $(($(date +%s) - start))s in all (budget ${budget}s)"
if [ ${#failures[@]} -eq 0 ]; then
  say "all steps passed"
else
  for f in "${failures[@]}"; do say "not passed: $f"; done
fi
echo "report: $report"
[ ${#failures[@]} -eq 0 ]
