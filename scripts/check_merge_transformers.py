#!/usr/bin/env python3
"""Checks `flexlora merge --format hf` against Hugging Face transformers: the merged directory
loads with AutoModelForCausalLM / AutoTokenizer (no missing or unexpected weights) and gives the
logits flexlora gives with the unmerged PEFT adapter.

A manual check against a peer, not a test (tests never run it). Usage, from the repository root
after `cargo build`:

    /work/venv-hf/bin/python scripts/check_merge_transformers.py \
        --model models/SmolLM2-135M-Instruct.Q4_1.gguf --adapter ADAPTER_DIR --work /tmp/merge-check

Apples to apples: the base GGUF is quantized (Q4_1); flexlora's reference logits run that base
dequantized to f32 (`--weights f32`) with the adapter attached, and the merged directory holds
the same dequantized weights plus s·B·A, so in f32 the only differences are rounding and the two
implementations' summation orders. The base alone is compared too (flexlora's `convert` of the
same GGUF against transformers) as the floor of that difference. The f16 merge is loaded into
float32 compute: its error is the f16 rounding of every weight.
"""

import argparse
import json
import os
import subprocess
import sys

import numpy as np
import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

PROMPT = "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n"


def run(cmd):
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def hf_logits(path, ids):
    model, info = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager", output_loading_info=True)
    bad = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    assert not bad, f"{path}: {bad}"
    model.eval()
    with torch.no_grad():
        out = model(torch.tensor([ids])).logits[0].float().numpy()
    return out


def compare(what, got, want):
    err = np.abs(got - want)
    agree = (got.argmax(-1) == want.argmax(-1)).mean()
    print(f"{what:58s} max |diff| {err.max():.3e}  mean {err.mean():.3e}  argmax agree {agree:.3f}")
    return err.max(), agree


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--flexlora", default="target/debug/flexlora")
    p.add_argument("--model", required=True, help="the base model (.gguf or Hugging Face directory)")
    p.add_argument("--adapter", required=True, help="a PEFT adapter directory")
    p.add_argument("--work", required=True, help="a scratch directory")
    p.add_argument("--prompt", default=PROMPT)
    a = p.parse_args()
    os.makedirs(a.work, exist_ok=True)
    w = lambda f: os.path.join(a.work, f)
    torch.set_num_threads(2)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, numpy {np.__version__}, python {sys.version.split()[0]}")

    fx = a.flexlora
    for dtype in ("f32", "f16"):
        run([fx, "merge", "--model", a.model, "--adapter", a.adapter, "--out", w(f"merged-{dtype}"), "--format", "hf", "--dtype", dtype, "--force"])
    if not os.path.isdir(w("base")):
        run([fx, "convert", a.model, w("base")])
    tok = AutoTokenizer.from_pretrained(w("merged-f32"))
    ids = tok(a.prompt)["input_ids"]
    print(f"{len(ids)} prompt ids (the merged directory's tokenizer): {ids}")
    ids_arg = ",".join(map(str, ids))
    run([fx, "logits", "--model", a.model, "--adapter", a.adapter, "--weights", "f32", "--device", "cpu", "--ids", ids_arg, "--out", w("flex-adapted.npy")])
    run([fx, "logits", "--model", a.model, "--weights", "f32", "--device", "cpu", "--ids", ids_arg, "--out", w("flex-base.npy")])
    flex, flex_base = np.load(w("flex-adapted.npy")), np.load(w("flex-base.npy"))
    # flexlora's own tokenizer on the same text must give the same ids.
    run([fx, "logits", "--model", a.model, "--weights", "f32", "--device", "cpu", "--prompt", a.prompt, "--out", w("flex-prompt.npy")])
    assert np.array_equal(np.load(w("flex-prompt.npy")), flex_base), "flexlora tokenizes the prompt differently from the merged tokenizer.json"

    print()
    compare("how far the adapter moves flexlora's logits", flex, flex_base)
    e0, _ = compare("transformers base (convert) vs flexlora base", hf_logits(w("base"), ids), flex_base)
    e1, a1 = compare("transformers merged f32 vs flexlora adapted (unmerged)", hf_logits(w("merged-f32"), ids), flex)
    e2, a2 = compare("transformers merged f16 vs flexlora adapted (unmerged)", hf_logits(w("merged-f16"), ids), flex)
    with open(w("merged-f32/flexlora_merge.json")) as f:
        print("flexlora_merge.json:", json.load(f))
    ok = e1 <= 2 * e0 + 1e-3 and a1 == 1.0 and e2 < 0.1
    print("\nPASS" if ok else "\nFAIL", "(f32: within 2x the base-vs-base difference and every argmax equal; f16: max |diff| < 0.1)")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
