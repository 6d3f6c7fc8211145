"""Peer benchmark for `flexlora bench generate`: llama.cpp (llama-cpp-python) on the CPU.
(Not named llama_cpp.py: the script would shadow the module it imports.)

Loads the same GGUF file and measures what flexlora measures, with the same token ids
((i * 7919 + 13) % V): one prefill pass of N tokens, then greedy single-token decode steps with
the KV cache; plus peak resident memory. For benchmarks only; never used by tests.

    python3 -m venv /tmp/venv-llama && /tmp/venv-llama/bin/pip install llama-cpp-python
    /tmp/venv-llama/bin/python scripts/bench/llama_cpp_generate.py FILE.gguf [PROMPT_TOKENS] [DECODE_TOKENS] [THREADS]

THREADS defaults to 2, flexlora's thread count on the 2-core machines (rayon's default is one per
core); pass the same number to both. Force llama.cpp's SIMD tier by building the wheel with
CMAKE_ARGS (e.g. -DGGML_AVX512=OFF -DGGML_NATIVE=OFF -DGGML_AVX2=ON) when comparing tiers.
"""
import resource
import sys
import time

import llama_cpp

path = sys.argv[1]
prompt = int(sys.argv[2]) if len(sys.argv) > 2 else 512
decode = int(sys.argv[3]) if len(sys.argv) > 3 else 64
threads = int(sys.argv[4]) if len(sys.argv) > 4 else 2

llm = llama_cpp.Llama(
    model_path=path,
    n_ctx=prompt + decode + 8,
    # n_batch sizes the logits buffer `scores` indexes by position; n_ubatch is the compute batch.
    n_batch=prompt + decode + 8,
    n_ubatch=prompt,
    n_threads=threads,
    n_threads_batch=threads,
    logits_all=False,
    verbose=False,
)
vocab = llm.n_vocab()
ids = [(i * 7919 + 13) % vocab for i in range(prompt)]

t0 = time.perf_counter()
llm.eval(ids)
prefill = time.perf_counter() - t0

t1 = time.perf_counter()
nxt = 0
for _ in range(decode):
    llm.eval([nxt])
    # Greedy, as flexlora's benchmark: the argmax of the last position's logits.
    logits = llm.scores[llm.n_tokens - 1]
    nxt = int(logits.argmax())
dec = time.perf_counter() - t1

print(f"llama-cpp-python {llama_cpp.__version__}, {threads} threads, {path}")
print(
    f"  prefill {prompt} tokens: {prefill:8.2f} s {prompt / prefill:8.1f} tokens/s | "
    f"decode {decode} tokens: {dec:6.2f} s {decode / dec:6.1f} tokens/s"
)
print(f"  peak resident memory: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
