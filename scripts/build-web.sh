#!/usr/bin/env bash
# Builds the library for the browser (wasm32) and generates the JS bindings into web/pkg.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --lib --release --target wasm32-unknown-unknown
wasm-bindgen --target web --no-typescript --out-dir web/pkg target/wasm32-unknown-unknown/release/flexlora.wasm
echo "web/pkg: $(du -h web/pkg/flexlora_bg.wasm | cut -f1) wasm"
