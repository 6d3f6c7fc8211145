"""Peer benchmark for `flexlora bench generate`: Hugging Face transformers on the CPU.

Loads a Hugging Face directory (e.g. the output of `flexlora convert` on the default GGUF) in f32
and measures what flexlora measures: one prefill pass of N tokens, then greedy single-token decode
steps with the KV cache; plus peak resident memory. For benchmarks only; never used by tests.

    python3 -m venv /tmp/venv-peer && /tmp/venv-peer/bin/pip install torch transformers
    /tmp/venv-peer/bin/python scripts/bench/transformers_generate.py DIR [PROMPT_TOKENS] [DECODE_TOKENS]
"""
import resource
import sys
import time

import torch
import transformers

path = sys.argv[1]
prompt = int(sys.argv[2]) if len(sys.argv) > 2 else 512
decode = int(sys.argv[3]) if len(sys.argv) > 3 else 64
torch.set_num_threads(2)
model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
vocab = model.config.vocab_size
ids = torch.tensor([[(i * 7919 + 13) % vocab for i in range(prompt)]])
with torch.no_grad():
    t0 = time.perf_counter()
    out = model(ids, use_cache=True)
    prefill = time.perf_counter() - t0
    past = out.past_key_values
    nxt = out.logits[:, -1:].argmax(-1)
    t1 = time.perf_counter()
    for _ in range(decode):
        out = model(nxt, past_key_values=past, use_cache=True)
        past = out.past_key_values
        nxt = out.logits[:, -1:].argmax(-1)
    dec = time.perf_counter() - t1
print(f"transformers {transformers.__version__}, torch {torch.__version__}, {torch.get_num_threads()} threads")
print(f"  prefill {prompt} tokens: {prefill:8.2f} s {prompt / prefill:8.1f} tokens/s | decode {decode} tokens: {dec:6.2f} s {decode / dec:6.1f} tokens/s")
print(f"  peak resident memory: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
