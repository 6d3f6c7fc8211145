#!/usr/bin/env bash
# One command for a fresh machine: installs what flexlora needs, fetches the default model, finds
# the datasets, builds the release binary, and runs the main job on the default model and data
# (Debian/Ubuntu, as root): FLeX fine-tuning of SmolLM2-135M-Instruct (frozen NF4 base, LoRA on the
# MLP, spectral penalty) on MBPP's train split, then the untouched and the adapted model on the
# first MBJP (Java) tasks, the metric FLeX sets out to improve. A killed run continues where it
# stopped when this script is run again.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-system-deps.sh
model=$(bash scripts/fetch-model.sh)
FLEXLORA_DATA=$(bash scripts/fetch-data.sh) || { echo "some datasets are missing (see above)" >&2; exit 1; }
export FLEXLORA_DATA
cargo build --release
bin=./target/release/flexlora
$bin devices
resume=()
[ -d runs/flex-mbpp/checkpoints ] && resume=(--resume runs/flex-mbpp)
$bin train --model "$model" --out runs/flex-mbpp "${resume[@]}"
limit=${FLEXLORA_LIMIT:-20}
$bin eval --model "$model" --task mbjp --limit "$limit" --max-new-tokens 256 --out runs/baseline-mbjp
$bin eval --model "$model" --adapter runs/flex-mbpp/adapter --task mbjp --limit "$limit" --max-new-tokens 256 --out runs/flex-mbjp
