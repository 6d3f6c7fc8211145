#!/usr/bin/env bash
# The test command: every op on the CPU and on a real GPU adapter (lavapipe here), shader
# portability (SPIR-V/MSL/HLSL/GLSL), NF4 against bitsandbytes fixtures, GGUF readers, the model
# (tiny random ones and the real default model), the evaluation sandbox, the wasm32 build, and
# the browser tests in headless Chromium (the demo page against native generate, Pyodide, OPFS).
# Prerequisites come from scripts/install-system-deps.sh. Under CI=true nothing may be skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${XDG_RUNTIME_DIR:-}" ] || [ ! -w "${XDG_RUNTIME_DIR:-/nonexistent}" ]; then
  XDG_RUNTIME_DIR=$(mktemp -d); chmod 700 "$XDG_RUNTIME_DIR"; export XDG_RUNTIME_DIR
fi
# The real default model (tests/real_model.rs, tests/gguf.rs) and the datasets (tests/eval_*).
# Absolute paths: the browser tests run from web/.
FLEXLORA_MODEL_GGUF=$(realpath "${FLEXLORA_MODEL_GGUF:-$(bash scripts/fetch-model.sh)}")
FLEXLORA_QWEN_GGUF=$(realpath "${FLEXLORA_QWEN_GGUF:-$(bash scripts/fetch-model.sh qwen)}")
export FLEXLORA_MODEL_GGUF FLEXLORA_QWEN_GGUF
export FLEXLORA_DATA=${FLEXLORA_DATA:-$(cd .. && pwd)/shared/data}
log=$(mktemp)
trap 'rm -f "$log"' EXIT

echo "== cargo test (CPU backend, GPU kernels on every adapter: Vulkan and GL here, shader portability)"
cargo test 2>&1 | tee -a "$log"

echo "== wasm32 library build"
cargo build --lib --target wasm32-unknown-unknown

echo "== browser: every op on WebGPU and the wasm CPU backend (tests/ops.test.mjs), the demo page against native generate"
bash scripts/build-web.sh
export FLEXLORA_BIN=${FLEXLORA_BIN:-$PWD/target/debug/flexlora}
(cd web && node --test --test-concurrency=1 test.mjs tests/*.test.mjs) 2>&1 | tee -a "$log"

sum() { grep -hoE "$1" "$log" | grep -oE '[0-9]+' | awk '{s+=$1} END {print s+0}'; }
passed=$(sum '([0-9]+) passed;|^# pass [0-9]+')
failed=$(sum '([0-9]+) failed;|^# fail [0-9]+')
echo "all: ${passed:-0} passed, ${failed:-0} failed"
[ "${failed:-0}" -eq 0 ] && [ "${passed:-0}" -gt 0 ]
