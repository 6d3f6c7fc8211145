#!/usr/bin/env python3
"""Checks `flexlora export-lora` and `flexlora merge --format gguf` against llama.cpp
(llama-cpp-python): the exported GGUF LoRA, applied by llama.cpp with `lora_path`, and the merged
GGUF, loaded by llama.cpp, give the logits flexlora gives with the unmerged PEFT adapter.

A manual check against a peer, not a test (tests never run it). Usage, from the repository root
after `cargo build`:

    /work/venv-llama/bin/python scripts/check_export_lora.py \
        --model models/SmolLM2-135M-Instruct.Q4_1.gguf [--adapter ADAPTER_DIR] --work /tmp/lora-check

(without --adapter, a random rank-4 rsLoRA adapter with nonzero B on all seven linears is made for
the model, so q/k row order and the rsLoRA alpha are exercised; the `gguf` package reads shapes).

Apples to apples: the base GGUF is quantized (Q4_1), and llama.cpp multiplies quantized weights
with 8-bit quantized activations, while flexlora's reference here runs the dequantized base in f32
(`--weights f32`). So the main comparisons run llama.cpp on the *dequantized* base written as an
f32 GGUF (`flexlora merge --format gguf --dtype f32` of an all-zero copy of the adapter: W + 0),
where both sides hold the same f32 weights:
  1. llama.cpp(f32 base + exported LoRA)  vs flexlora(Q4_1 base read as f32 + PEFT adapter)
  2. llama.cpp(merged f32 GGUF)           vs the same flexlora logits
and, for scale, the quantized pair:
  3. llama.cpp(Q4_1 base + LoRA) vs flexlora adapted, next to llama.cpp(Q4_1 base) vs flexlora base
     (the noise floor of llama.cpp's quantized arithmetic: 3 must be no worse than that).
It also prints how far the adapter moves the logits, so a LoRA silently ignored or applied with the
wrong scale or row order would show as an error of that size, not of rounding size.
"""

import argparse
import json
import os
import struct
import subprocess
import sys

import numpy as np
import llama_cpp
from llama_cpp import Llama

PROMPT = "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n"


def run(cmd):
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def zero_b_copy(src, dst):
    """A copy of a PEFT adapter whose lora_B tensors (f32) are all zero: merging it writes the base."""
    os.makedirs(dst, exist_ok=True)
    with open(os.path.join(src, "adapter_config.json")) as f:
        cfg = f.read()
    with open(os.path.join(dst, "adapter_config.json"), "w") as f:
        f.write(cfg)
    raw = open(os.path.join(src, "adapter_model.safetensors"), "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    data = bytearray(raw[8 + n :])
    for name, t in header.items():
        if name != "__metadata__" and "lora_B" in name:
            assert t["dtype"] == "F32", t
            a, b = t["data_offsets"]
            data[a:b] = bytes(b - a)
    open(os.path.join(dst, "adapter_model.safetensors"), "wb").write(raw[: 8 + n] + bytes(data))


MODULES = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
           "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}


def random_adapter(model, dst, rank=4, alpha=8.0, b_scale=0.03, seed=0):
    """A PEFT adapter (rsLoRA, all seven linears) with random A and nonzero random B, shaped for
    the GGUF `model` (rank-4 A uniform in +-1/sqrt(in) as PEFT initializes it, B uniform in +-b_scale)."""
    from gguf import GGUFReader

    rng = np.random.default_rng(seed)
    tensors = {}
    for t in GGUFReader(model).tensors:
        parts = t.name.split(".")
        if len(parts) != 4 or parts[0] != "blk" or parts[2] not in MODULES or parts[3] != "weight":
            continue
        n_in, n_out = int(t.shape[0]), int(t.shape[1])  # GGUF dims: innermost first
        p = f"base_model.model.model.layers.{parts[1]}.{MODULES[parts[2]]}"
        tensors[p + ".lora_A.weight"] = (rng.uniform(-1, 1, (rank, n_in)) / np.sqrt(n_in)).astype(np.float32)
        tensors[p + ".lora_B.weight"] = rng.uniform(-b_scale, b_scale, (n_out, rank)).astype(np.float32)
    os.makedirs(dst, exist_ok=True)
    cfg = {"peft_type": "LORA", "r": rank, "lora_alpha": alpha, "use_rslora": True, "lora_dropout": 0.0,
           "target_modules": [m.split(".")[1] for m in MODULES.values()], "bias": "none"}
    with open(os.path.join(dst, "adapter_config.json"), "w") as f:
        json.dump(cfg, f)
    header, off, blobs = {}, 0, []
    for name in sorted(tensors):
        b = tensors[name].tobytes()
        header[name] = {"dtype": "F32", "shape": list(tensors[name].shape), "data_offsets": [off, off + len(b)]}
        off += len(b)
        blobs.append(b)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(os.path.join(dst, "adapter_model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))
    print(f"random adapter for {model}: {len(tensors) // 2} linears, rank {rank}, alpha {alpha}, rsLoRA -> {dst}")


def llama_logits(model, ids, lora=None):
    # An f32 KV cache (llama.cpp's default is f16, which alone moves logits by ~1e-2).
    kw = dict(model_path=model, n_ctx=max(64, len(ids) + 8), logits_all=True, n_threads=2, verbose=False, type_k=0, type_v=0)
    if lora:
        kw["lora_path"] = lora
    llm = Llama(**kw)
    llm.reset()
    llm.eval(ids)
    out = np.array(llm.scores[: len(ids)], dtype=np.float32)
    del llm
    return out


def compare(what, got, want):
    err = np.abs(got - want)
    agree = (got.argmax(-1) == want.argmax(-1)).mean()
    print(f"{what:62s} max |diff| {err.max():.3e}  mean {err.mean():.3e}  argmax agree {agree:.3f}")
    return err.max(), agree


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--flexlora", default="target/debug/flexlora")
    p.add_argument("--model", required=True, help="the base GGUF")
    p.add_argument("--adapter", help="a PEFT adapter directory (f32 tensors); default: a random one made for --model")
    p.add_argument("--work", required=True, help="a scratch directory")
    p.add_argument("--prompt", default=PROMPT)
    a = p.parse_args()
    os.makedirs(a.work, exist_ok=True)
    w = lambda f: os.path.join(a.work, f)
    if a.adapter is None:
        a.adapter = w("random-adapter")
        random_adapter(a.model, a.adapter)
    print(f"llama-cpp-python {llama_cpp.__version__}, numpy {np.__version__}, python {sys.version.split()[0]}")

    vocab = Llama(model_path=a.model, vocab_only=True, verbose=False)
    ids = vocab.tokenize(a.prompt.encode(), add_bos=True, special=True)
    print(f"{len(ids)} prompt ids: {ids}")
    ids_arg = ",".join(map(str, ids))

    fx = a.flexlora
    run([fx, "export-lora", "--gguf", a.adapter, w("lora.gguf"), "--model", a.model, "--force"])
    zero_b_copy(a.adapter, w("zero-adapter"))
    run([fx, "merge", "--model", a.model, "--adapter", w("zero-adapter"), "--out", w("base-f32.gguf"), "--format", "gguf", "--dtype", "f32", "--force"])
    run([fx, "merge", "--model", a.model, "--adapter", a.adapter, "--out", w("merged-f32.gguf"), "--format", "gguf", "--dtype", "f32", "--force"])
    run([fx, "logits", "--model", a.model, "--adapter", a.adapter, "--weights", "f32", "--device", "cpu", "--ids", ids_arg, "--out", w("flex-adapted.npy")])
    run([fx, "logits", "--model", a.model, "--weights", "f32", "--device", "cpu", "--ids", ids_arg, "--out", w("flex-base.npy")])
    run([fx, "logits", "--model", a.model, "--adapter", w("lora.gguf"), "--weights", "f32", "--device", "cpu", "--ids", ids_arg, "--out", w("flex-gguf-lora.npy")])
    flex = np.load(w("flex-adapted.npy"))
    flex_base = np.load(w("flex-base.npy"))

    print()
    compare("how far the adapter moves flexlora's logits (adapted vs base)", flex, flex_base)
    compare("flexlora reading the exported GGUF LoRA back vs PEFT adapter", np.load(w("flex-gguf-lora.npy")), flex)
    e1, a1 = compare("1. llama.cpp f32 base + exported LoRA vs flexlora adapted", llama_logits(w("base-f32.gguf"), ids, w("lora.gguf")), flex)
    e2, a2 = compare("2. llama.cpp merged f32 GGUF vs flexlora adapted", llama_logits(w("merged-f32.gguf"), ids), flex)
    ef, _ = compare("   llama.cpp f32 base alone vs flexlora base", llama_logits(w("base-f32.gguf"), ids), flex_base)
    e3, _ = compare("3. llama.cpp quantized base + exported LoRA vs flexlora adapted", llama_logits(a.model, ids, w("lora.gguf")), flex)
    e0, _ = compare("   llama.cpp quantized base alone vs flexlora base (noise floor)", llama_logits(a.model, ids), flex_base)
    # 1 and 2 may differ from flexlora only as much as the two implementations differ on the same
    # f32 base without any adapter (summation order, llama.cpp's own kernels).
    ok = e1 <= 2 * ef + 1e-3 and e2 <= 2 * ef + 1e-3 and a1 == 1.0 and a2 == 1.0 and e3 < 3 * e0
    print("\nPASS" if ok else "\nFAIL", "(1, 2: within 2x the f32 base-vs-base difference, every argmax equal; 3: within 3x the quantized noise floor)")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
