#!/usr/bin/env python3
"""Writes a random-weight Hugging Face model directory with Code Llama 7B's shapes, in bf16,
sharded like the published checkpoint (model-0000N-of-0000M.safetensors plus
model.safetensors.index.json), to check that flexlora streams a 7B checkpoint into NF4 without
holding it in memory (tests/model/load_7b.rs, #[ignore]d, run on demand).

Needs Python 3 and numpy only. Run as:
    /tmp/venv-oracle/bin/python scripts/make_random_7b.py /tmp/random-7b
(Python 3.11.7, numpy 2.4.6; about a minute). The directory takes 13.48 GB; delete it afterwards.

Weights are ~N(0, 0.02): one pool of 2^24 normal draws is generated once and each tensor is
filled from it at a random offset (drawing 6.7e9 fresh normals would only cost CPU time; the
memory check does not care about the values). RMSNorm weights are 1. bf16 values are the top
16 bits of the float32 bit patterns (truncation, not rounding). The tokenizer.json is a minimal
valid one (three special tokens): the loader needs the file, the memory check does not use it.
"""
import json
import os
import struct
import sys

import numpy as np

C, F, L, H, KV, V = 4096, 11008, 32, 32, 32, 32016
SHARDS = 3


def tensor_list():
    d = C // H
    out = [("model.embed_tokens.weight", (V, C))]
    for i in range(L):
        p = f"model.layers.{i}."
        out += [
            (p + "input_layernorm.weight", (C,)),
            (p + "self_attn.q_proj.weight", (H * d, C)),
            (p + "self_attn.k_proj.weight", (KV * d, C)),
            (p + "self_attn.v_proj.weight", (KV * d, C)),
            (p + "self_attn.o_proj.weight", (C, H * d)),
            (p + "post_attention_layernorm.weight", (C,)),
            (p + "mlp.gate_proj.weight", (F, C)),
            (p + "mlp.up_proj.weight", (F, C)),
            (p + "mlp.down_proj.weight", (C, F)),
        ]
    out += [("model.norm.weight", (C,)), ("lm_head.weight", (V, C))]
    return out


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: make_random_7b.py OUT_DIR")
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(7)
    pool = (rng.standard_normal(1 << 24, dtype=np.float32) * 0.02).view(np.uint32)
    pool = (pool >> 16).astype(np.uint16)
    pool = np.concatenate([pool, pool])  # any offset < 2^24 has 2^24 values after it
    one = np.frombuffer(struct.pack("<f", 1.0), dtype=np.uint32)[0] >> 16

    tensors = tensor_list()
    total = sum(int(np.prod(s)) * 2 for _, s in tensors)
    per_shard = total / SHARDS
    shards, cur, size = [], [], 0
    for t in tensors:
        cur.append(t)
        size += int(np.prod(t[1])) * 2
        if size >= per_shard and len(shards) < SHARDS - 1:
            shards.append(cur)
            cur, size = [], 0
    shards.append(cur)

    weight_map = {}
    for si, shard in enumerate(shards):
        fname = f"model-{si + 1:05d}-of-{len(shards):05d}.safetensors"
        header, off = {}, 0
        for name, shape in shard:
            n = int(np.prod(shape)) * 2
            header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [off, off + n]}
            off += n
            weight_map[name] = fname
        header["__metadata__"] = {"format": "pt"}
        head = json.dumps(header).encode()
        head += b" " * (-len(head) % 8)
        with open(os.path.join(out, fname), "wb") as f:
            f.write(struct.pack("<Q", len(head)))
            f.write(head)
            for name, shape in shard:
                n = int(np.prod(shape))
                if len(shape) == 1:
                    np.full(n, one, dtype=np.uint16).tofile(f)
                    continue
                # Row chunks of at most 2^24 values, each from its own random offset.
                done = 0
                while done < n:
                    k = min(n - done, 1 << 24)
                    o = int(rng.integers(0, 1 << 24))
                    pool[o:o + k].tofile(f)
                    done += k
        print(f"wrote {fname} ({off / 1e9:.2f} GB)", flush=True)

    with open(os.path.join(out, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=1)
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": C,
        "intermediate_size": F,
        "num_hidden_layers": L,
        "num_attention_heads": H,
        "num_key_value_heads": KV,
        "vocab_size": V,
        "rope_theta": 1000000.0,
        "rms_norm_eps": 1e-5,
        "max_position_embeddings": 16384,
        "tie_word_embeddings": False,
        "hidden_act": "silu",
        "torch_dtype": "bfloat16",
        "bos_token_id": 1,
        "eos_token_id": 2,
    }
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(config, f, indent=1)
    tokenizer = {
        "version": "1.0",
        "added_tokens": [],
        "normalizer": None,
        "pre_tokenizer": None,
        "post_processor": None,
        "decoder": None,
        "model": {"type": "BPE", "unk_token": "<unk>", "byte_fallback": False, "fuse_unk": True,
                  "vocab": {"<unk>": 0, "<s>": 1, "</s>": 2}, "merges": []},
    }
    with open(os.path.join(out, "tokenizer.json"), "w") as f:
        json.dump(tokenizer, f)
    print(f"done: {total / 1e9:.2f} GB in {out}")


if __name__ == "__main__":
    main()
