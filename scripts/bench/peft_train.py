"""Peer benchmark for `flexlora bench train`: PEFT LoRA training steps with transformers on the CPU.

Loads a Hugging Face directory (e.g. the output of `flexlora convert` on the default GGUF) in f32,
wraps it with PEFT LoRA, and times what flexlora times: full training steps (forward, loss,
backward, AdamW step, zero_grad) on one sequence of random token ids (fixed seed). One warmup step
is not timed. Prints one JSON line; peak resident memory is ru_maxrss of this process (KiB on
Linux), so it includes Python, torch and the loaded model. For benchmarks only; never used by tests.
Run it on a quiet machine: with 2 threads and another process busy on one of the 2 cores, torch's
OpenMP threads wait on each other and a step gets several times slower (the JSON reports the 1-minute
load average seen before the timed steps, to spot this).

    python3 -m venv /tmp/venv-peer && /tmp/venv-peer/bin/pip install torch transformers peft
    /tmp/venv-peer/bin/python scripts/bench/peft_train.py --model DIR [--steps 3] [--seq 512]
"""
import argparse
import json
import os
import resource
import time

import peft
import torch
import transformers


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="Hugging Face model directory (config.json + weights)")
    ap.add_argument("--steps", type=int, default=3, help="timed training steps after one warmup step")
    ap.add_argument("--seq", type=int, default=512, help="tokens in the one training sequence")
    ap.add_argument("--batch", type=int, default=1, help="sequences per step")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--alpha", type=float, default=16.0)
    ap.add_argument("--dropout", type=float, default=0.05)
    ap.add_argument("--targets", default="gate_proj,up_proj,down_proj", help="comma-separated module names")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model = transformers.AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    lcfg = peft.LoraConfig(
        r=args.rank,
        lora_alpha=args.alpha,
        lora_dropout=args.dropout,
        target_modules=args.targets.split(","),
        bias="none",
        task_type="CAUSAL_LM",
    )
    model = peft.get_peft_model(model, lcfg)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=args.lr)

    gen = torch.Generator().manual_seed(args.seed)
    ids = torch.randint(0, model.config.vocab_size, (args.batch, args.seq), generator=gen)

    def step():
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    step()  # warmup: allocator, optimizer state, first-call overheads
    load = os.getloadavg()[0]
    losses = []
    t0 = time.perf_counter()
    for _ in range(args.steps):
        losses.append(step())
    elapsed = time.perf_counter() - t0
    step_s = elapsed / args.steps
    print(
        json.dumps(
            {
                "tokens_per_s": args.batch * args.seq / step_s,
                "step_s": step_s,
                "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "steps": args.steps,
                "seq": args.seq,
                "batch": args.batch,
                "threads": torch.get_num_threads(),
                "load_avg_1m_before": load,
                "rank": args.rank,
                "targets": args.targets.split(","),
                "trainable_params": sum(p.numel() for p in trainable),
                "losses": losses,
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "peft": peft.__version__,
            }
        )
    )


if __name__ == "__main__":
    main()
