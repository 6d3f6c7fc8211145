#!/usr/bin/env python3
"""Checks that a LoRA adapter written by `flexlora train` loads in Hugging Face PEFT and gives the
same model: greedy text with and without the adapter, compared with `flexlora generate`.

Run on 2026-11-24, from the repository root, once per adapter (three adapters from `flexlora
train`; scripts/check_peft_adapter.md has the exact flexlora commands and the outputs seen):

    nice -n 19 /tmp/venv-oracle/bin/python scripts/check_peft_adapter.py \
        --base /tmp/smollm2-hf --adapter /tmp/peftcheck-run/adapter \
        --flexlora-adapter-text /tmp/peftcheck-flex-adapter.txt \
        --flexlora-base-text /tmp/peftcheck-flex-base.txt \
        --ppl-text /tmp/peftcheck-ppl.txt --out /tmp/peftcheck-out-run

with Python 3.11.7, torch 2.15.0+cu132 (PyPI wheel, run on the CPU, 1 thread), transformers 5.23.0,
peft 0.21.2, safetensors 0.8.0, numpy 2.4.6 (the script prints the versions it ran with). This is a
manual check, not a fixture generator: tests never run it.

What it does:
- loads the base (an f32 directory from `flexlora convert`) with AutoModelForCausalLM in float32
  with eager attention, then `PeftModel.from_pretrained(base, adapter)`;
- asserts the LoRA tensors in adapter_model.safetensors and the ones PEFT created are the same key
  set (no missing or unexpected LoRA keys) and that PEFT holds exactly the stored values;
- formats the prompt with the tokenizer's own chat template and greedily generates 48 new tokens
  with the adapter and inside `model.disable_adapter()`; prints both texts, the prompt ids, the
  generated ids and the smallest top-1/top-2 logit margin seen while generating (a near tie is where
  two correct implementations could legitimately pick different tokens);
- prints max |logit(adapter) - logit(base)| over the prompt positions (must be clearly nonzero);
- with --ppl-text, prints the mean NLL and perplexity of a .txt file with and without the adapter,
  windowed as `flexlora eval --task ppl` does, to compare numbers rather than argmaxes (also with
  the softmax sum done the way flexlora's CPU cross_entropy does it, see mean_nll);
- optionally compares with text files holding `flexlora generate` stdout (the text plus the one
  newline generate prints at the end): texts must be equal, and re-encoding flexlora's text must give
  PEFT's generated ids (flexlora prints text, not ids);
- with --out, writes the adapted model's next-token logits for the prompt (logits_adapter_last.npy,
  logits_base_last.npy) and the ids and texts (result.json).
"""

import argparse
import json
import os
import sys

import numpy as np
import torch
from safetensors.torch import load_file

import peft
import transformers
from peft import PeftModel, get_peft_model_state_dict, set_peft_model_state_dict
from transformers import AutoModelForCausalLM, AutoTokenizer

PROMPT = "Write a Python function that returns the sum of a list of numbers."
NEW_TOKENS = 48


def prompt_ids(tok, text):
    """The chat template's ids for one user message, as a plain list of ints."""
    msgs = [{"role": "user", "content": text}]
    ids = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
    # transformers 5 returns a BatchEncoding by default; older versions a list.
    if hasattr(ids, "keys"):
        ids = ids["input_ids"]
    ids = list(ids)
    if ids and isinstance(ids[0], list):
        ids = ids[0]
    return [int(i) for i in ids]


def check_keys(model, adapter_dir):
    """Asserts PEFT holds exactly the LoRA tensors stored in the adapter file, bit for bit."""
    stored = load_file(os.path.join(adapter_dir, "adapter_model.safetensors"))
    held = get_peft_model_state_dict(model)
    missing = sorted(set(held) - set(stored))
    unexpected = sorted(set(stored) - set(held))
    print(f"adapter file: {len(stored)} tensors; PEFT's LoRA state dict: {len(held)} tensors")
    print(f"missing LoRA keys (created by PEFT, absent from the file): {missing[:5]} ({len(missing)})")
    print(f"unexpected keys (in the file, unused by PEFT): {unexpected[:5]} ({len(unexpected)})")
    assert not missing and not unexpected, "adapter keys do not match PEFT's"
    differ = [k for k in stored if not torch.equal(stored[k].to(held[k].dtype), held[k].cpu())]
    assert not differ, f"PEFT holds values different from the file for {differ[:5]}"
    # The same check through PEFT's own loader: loading the file again reports nothing left over.
    res = set_peft_model_state_dict(model, stored)
    lora_missing = [k for k in res.missing_keys if "lora_" in k]
    print(f"set_peft_model_state_dict: unexpected {len(res.unexpected_keys)}, missing LoRA {len(lora_missing)}")
    assert not res.unexpected_keys and not lora_missing
    shapes = sorted({(k.split(".")[-2], tuple(v.shape)) for k, v in stored.items()})
    print(f"LoRA tensor kinds and shapes: {shapes}")


@torch.no_grad()
def greedy(model, ids):
    """Greedy continuation: (new ids, smallest top-1 minus top-2 logit over the steps, its step)."""
    x = torch.tensor([ids])
    out = model.generate(
        input_ids=x,
        attention_mask=torch.ones_like(x),
        max_new_tokens=NEW_TOKENS,
        do_sample=False,
        num_beams=1,
        output_scores=True,
        return_dict_in_generate=True,
        pad_token_id=model.config.eos_token_id if hasattr(model, "config") else None,
    )
    new = [int(t) for t in out.sequences[0, len(ids):]]
    margins = [float(torch.topk(s[0], 2).values.diff().abs()) for s in out.scores]
    return new, min(margins), int(np.argmin(margins))


@torch.no_grad()
def mean_nll(model, ids, max_len):
    """Mean next-token NLL of `ids` cut into windows of max_len tokens, each scored alone (its first
    token unscored), as `flexlora eval --task ppl` does for a .txt file. Returns (NLL with an exact
    log-sum-exp, NLL with the sum of exp(logit - max) accumulated left to right in f32, the way
    flexlora's CPU cross_entropy sums, tokens scored): over V = 49152 the f32 running sum drops the
    smallest terms, which lowers the NLL by ~5e-5 on SmolLM2, so both are printed."""
    exact, seq, n = 0.0, 0.0, 0
    for i in range(0, len(ids), max_len):
        w = torch.tensor([ids[i:i + max_len]])
        if w.shape[1] < 2:
            continue
        logits = model(input_ids=w).logits[0, :-1]
        exact += torch.nn.functional.cross_entropy(logits.double(), w[0, 1:], reduction="sum").item()
        for row, t in zip(logits.numpy(), w[0, 1:].tolist()):
            mx = row.max()
            total = np.add.accumulate(np.exp(row - mx), dtype=np.float32)[-1]
            seq += float(mx) + float(np.log(total)) - float(row[t])
        n += w.shape[1] - 1
    return exact / n, seq / n, n


def read_flexlora(path):
    with open(path, encoding="utf-8") as f:
        text = f.read()
    # generate prints the streamed text, then one newline.
    return text[:-1] if text.endswith("\n") else text


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", default="/tmp/smollm2-hf")
    ap.add_argument("--adapter", default="/tmp/peftcheck-run/adapter")
    ap.add_argument("--flexlora-adapter-text")
    ap.add_argument("--flexlora-base-text")
    ap.add_argument("--out")
    ap.add_argument("--ppl-text", help="a .txt file: print the mean NLL with and without the adapter")
    ap.add_argument("--ppl-max-len", type=int, default=512)
    a = ap.parse_args()

    torch.set_num_threads(1)
    print(f"python {sys.version.split()[0]}, torch {torch.__version__}, transformers {transformers.__version__}, "
          f"peft {peft.__version__}, numpy {np.__version__}")

    tok = AutoTokenizer.from_pretrained(a.base)
    base, info = AutoModelForCausalLM.from_pretrained(
        a.base, dtype=torch.float32, attn_implementation="eager", output_loading_info=True
    )
    print(f"base load: missing {info['missing_keys']}, unexpected {info['unexpected_keys']}")
    model = PeftModel.from_pretrained(base, a.adapter)
    model.eval()
    check_keys(model, a.adapter)

    text = tok.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True, tokenize=False)
    ids = prompt_ids(tok, PROMPT)
    assert ids == tok(text, add_special_tokens=False)["input_ids"], "template ids differ from encoding its text"
    print(f"prompt text: {text!r}")
    print(f"prompt ids ({len(ids)}): {ids}")

    with torch.no_grad():
        x = torch.tensor([ids])
        la = model(input_ids=x).logits[0]
        with model.disable_adapter():
            lb = model(input_ids=x).logits[0]
    diff = (la - lb).abs()
    print(f"max |logit(adapter) - logit(base)| over the {len(ids)} prompt positions: {diff.max().item():.6f}; "
          f"at the last position: {diff[-1].max().item():.6f}")
    assert diff.max().item() > 1e-3, "the adapter does not change the logits: was it applied?"
    print(f"next token after the prompt: adapter {int(la[-1].argmax())}, base {int(lb[-1].argmax())}")

    gen_a, ma, sa = greedy(model, ids)
    with model.disable_adapter():
        gen_b, mb, sb = greedy(model, ids)
    texts = {}
    for name, gen, m, s in (("adapter", gen_a, ma, sa), ("base", gen_b, mb, sb)):
        texts[name] = tok.decode(gen, skip_special_tokens=True)
        print(f"\n=== PEFT {name}: {len(gen)} tokens, smallest top-1/top-2 margin {m:.4f} at step {s}")
        print(f"ids: {gen}")
        print(texts[name])
    print(f"\nthe adapter changes the greedy ids: {gen_a != gen_b}")

    if a.ppl_text:
        with open(a.ppl_text, encoding="utf-8") as f:
            pids = tok(f.read(), add_special_tokens=False)["input_ids"]
        na, qa, n = mean_nll(model, pids, a.ppl_max_len)
        with model.disable_adapter():
            nb, qb, _ = mean_nll(model, pids, a.ppl_max_len)
        print(f"\n{a.ppl_text}: {len(pids)} tokens, {n} scored (windows of {a.ppl_max_len})")
        print(f"mean NLL adapter {na:.7f} (ppl {np.exp(na):.6f}), base {nb:.7f} (ppl {np.exp(nb):.6f})")
        print(f"with a sequential f32 softmax sum: adapter {qa:.7f}, base {qb:.7f}")

    ok = True
    for name, path, gen in (("adapter", a.flexlora_adapter_text, gen_a), ("base", a.flexlora_base_text, gen_b)):
        if not path:
            continue
        flex = read_flexlora(path)
        same_text = flex == texts[name]
        flex_ids = tok(flex, add_special_tokens=False)["input_ids"]
        peft_ids = [t for t in gen if t not in tok.all_special_ids]
        same_ids = flex_ids == peft_ids
        print(f"\n=== flexlora {name}: text equal to PEFT's: {same_text}; re-encoded ids equal: {same_ids}")
        if not same_text:
            n = next((i for i, (p, q) in enumerate(zip(flex, texts[name])) if p != q), min(len(flex), len(texts[name])))
            print(f"first differing character {n}: flexlora {flex[n:n + 40]!r} vs PEFT {texts[name][n:n + 40]!r}")
            print(f"flexlora text: {flex!r}")
        ok &= same_text and same_ids

    if a.out:
        os.makedirs(a.out, exist_ok=True)
        np.save(os.path.join(a.out, "logits_adapter_last.npy"), la[-1].numpy())
        np.save(os.path.join(a.out, "logits_base_last.npy"), lb[-1].numpy())
        with open(os.path.join(a.out, "result.json"), "w") as f:
            json.dump({"prompt_ids": ids, "adapter_ids": gen_a, "base_ids": gen_b, "texts": texts,
                       "max_logit_diff": diff.max().item()}, f, indent=1)
    print("\nALL MATCH" if ok else "\nMISMATCH")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
