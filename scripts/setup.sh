#!/usr/bin/env bash
# One command for a fresh machine: installs what flexlora needs, fetches the default model, builds
# the release binary, and runs the main job. (Debian/Ubuntu, as root or with sudo for apt.)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-system-deps.sh
model=$(bash scripts/fetch-model.sh)
cargo build --release
echo "default model: $model"
./target/release/flexlora devices
./target/release/flexlora bench matmul
