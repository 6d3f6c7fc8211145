#!/usr/bin/env bash
# One command for a fresh machine: installs what flexlora needs, fetches the default model, builds
# the release binary, and runs the main job on the default model and data. (Debian/Ubuntu, as
# root.) Until `flexlora train` lands, the main job is the baseline: the untouched
# SmolLM2-135M-Instruct on the first MBJP (Java) tasks, the metric FLeX sets out to improve.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-system-deps.sh
model=$(bash scripts/fetch-model.sh)
cargo build --release
export FLEXLORA_DATA=${FLEXLORA_DATA:-$(cd .. && pwd)/shared/data}
./target/release/flexlora devices
./target/release/flexlora generate --model "$model" --chat --max-new-tokens 96 \
  --prompt "Write a Python function that returns the sum of a list of numbers."
./target/release/flexlora eval --model "$model" --task mbjp --limit "${FLEXLORA_LIMIT:-20}" \
  --max-new-tokens 256 --out runs/baseline-mbjp
