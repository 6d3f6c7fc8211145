#!/usr/bin/env bash
# One command for a fresh machine: installs what flexlora needs, fetches the default model, finds
# the datasets, builds the release binary, and runs the main job (experiments/main-job.toml):
# FLeX fine-tuning of Qwen2.5-Coder-0.5B-Instruct (frozen NF4 base, LoRA on the MLP, spectral
# penalty) on MBPP's train split, then the untouched and the adapted model on MBJP tasks whose
# MBPP twin is in the test split (Java, the metric FLeX sets out to improve), ending with a table:
# pass@1 of both, the paired difference and its 95% interval. About 45 minutes on a 2-core CPU.
# A killed run continues where it stopped when this script is run again (Debian/Ubuntu, as root).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-system-deps.sh
bash scripts/fetch-model.sh qwen >/dev/null
FLEXLORA_DATA=$(bash scripts/fetch-data.sh) || { echo "some datasets are missing (see above)" >&2; exit 1; }
export FLEXLORA_DATA
cargo build --release
bin=./target/release/flexlora
$bin devices
$bin experiment experiments/main-job.toml
