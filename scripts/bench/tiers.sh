#!/bin/bash
# flexlora's prefill and decode on each x86 SIMD tier against llama.cpp built for the same
# instructions, in alternating rounds (the numbers of README's "Measured here"). For benchmarks
# only; never used by tests. Run it on a quiet machine.
#
#   LLAMA_NATIVE=venv-a/bin/python LLAMA_AVX2=venv-b/bin/python bash scripts/bench/tiers.sh [ROUNDS] [MODEL...]
#
# LLAMA_NATIVE: a Python with llama-cpp-python built for this CPU (pip's default source build);
# LLAMA_AVX2: one built for AVX2 alone, e.g.
#   CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF" \
#     pip install --no-binary llama-cpp-python llama-cpp-python==0.3.36
# Either may be left unset (its rows are skipped). MODEL defaults to the two GGUFs in models/.
set -u
rounds=${1:-3}
shift || true
models=("$@")
[ ${#models[@]} -eq 0 ] && models=(models/SmolLM2-135M-Instruct.Q4_1.gguf models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf)
bin=./target/release/flexlora
[ -x "$bin" ] || { echo "build first: cargo build --release" >&2; exit 1; }
row() { tr -s ' ' | tr '\n' ' ' | sed "s/^/$1 /"; echo; }
for r in $(seq "$rounds"); do for m in "${models[@]}"; do for th in 1 2; do
  echo "== $(basename "$m") threads $th round $r"
  for tier in avx512 avx2; do
    FLEXLORA_CPU=$tier RAYON_NUM_THREADS=$th "$bin" bench generate --device cpu --model "$m" --prompt-tokens 128 --decode-tokens 64 2>&1 | grep -E "prefill|peak|FLEXLORA_CPU" | row "flexlora-$tier"
  done
  for peer in LLAMA_NATIVE LLAMA_AVX2; do
    py=${!peer:-}
    [ -n "$py" ] && "$py" scripts/bench/llama_cpp_generate.py "$m" 128 64 "$th" 2>&1 | grep -E "prefill|peak" | row "$peer"
  done
done; done; done
