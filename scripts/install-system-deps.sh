#!/usr/bin/env bash
# Installs what building and testing flexlora needs on a Debian bookworm machine (run as root).
# Idempotent: each step checks first. Used by .ci/run and by scripts/setup.sh.
set -euo pipefail

need_apt=()
# Vulkan on the CPU (lavapipe). bookworm-backports ships a Mesa 1.5-2x faster than bookworm's; we
# enable that suite by adding it to the existing Debian source entry (no new host is written).
src=/etc/apt/sources.list.d/debian.sources
if [ -f "$src" ] && ! grep -q 'bookworm-backports' "$src"; then
  sed -i '0,/^Suites: bookworm bookworm-updates$/s//Suites: bookworm bookworm-updates bookworm-backports/' "$src"
fi
command -v vulkaninfo >/dev/null || need_apt+=(vulkan-tools)
dpkg -s mesa-vulkan-drivers >/dev/null 2>&1 || need_apt+=(mesa-vulkan-drivers)
# OpenGL on the CPU (llvmpipe through EGL, headless): the second backend the GPU op tests run on.
for p in libegl1 libegl-mesa0 libgl1-mesa-dri; do dpkg -s "$p" >/dev/null 2>&1 || need_apt+=("$p"); done
command -v spirv-val >/dev/null || need_apt+=(spirv-tools)
command -v chromium >/dev/null || need_apt+=(chromium)
# The evaluation sandbox runs generated Python and Java; it needs interpreters every user can run.
[ -x /usr/bin/python3 ] || need_apt+=(python3)
command -v javac >/dev/null || need_apt+=(openjdk-17-jdk-headless)
if [ ${#need_apt[@]} -gt 0 ]; then
  apt-get update -qq
  # Mesa (Vulkan and EGL/GL drivers, one version) and its libdrm from backports when the suite is there; fall back to bookworm's otherwise.
  if grep -q 'bookworm-backports' "$src" 2>/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -t bookworm-backports mesa-vulkan-drivers libegl-mesa0 libgl1-mesa-dri libdrm2 >/dev/null \
      || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mesa-vulkan-drivers >/dev/null
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

rustup target list --installed | grep -q wasm32-unknown-unknown || rustup target add wasm32-unknown-unknown

# The threaded browser build (web/pkg-threads) rebuilds std with atomics: nightly + rust-src. The
# toolchain is FLEXLORA_WASM_NIGHTLY (default `nightly`; tested with 1.97.0-nightly 2026-05-19).
nightly=${FLEXLORA_WASM_NIGHTLY:-nightly}
if ! rustup run "$nightly" rustc --version >/dev/null 2>&1; then
  rustup toolchain install "$nightly" --profile minimal --component rust-src || {
    echo "install-system-deps.sh: could not install the Rust toolchain '$nightly' (with rust-src) that the threaded browser build needs" >&2
    exit 1
  }
fi
rustup component list --toolchain "$nightly" --installed | grep -q '^rust-src' || rustup component add rust-src --toolchain "$nightly"

# wasm-bindgen-cli must match the wasm-bindgen crate version in Cargo.lock exactly.
here=$(cd "$(dirname "$0")/.." && pwd)
wbv=$(awk '/^name = "wasm-bindgen"$/{getline; gsub(/version = |"/,""); print; exit}' "$here/Cargo.lock" 2>/dev/null || true)
if [ -n "$wbv" ] && ! wasm-bindgen --version 2>/dev/null | grep -q "$wbv"; then
  cargo install -q wasm-bindgen-cli --version "$wbv"
fi

# playwright-core drives the system Chromium for the browser tests (no browser download); pyodide
# runs generated Python in the page; @wllama/wllama is the browser peer of web/bench.mjs.
if [ ! -d "$here/web/node_modules/playwright-core" ] || [ ! -d "$here/web/node_modules/pyodide" ] || [ ! -d "$here/web/node_modules/@wllama/wllama" ]; then
  (cd "$here/web" && npm install --no-audit --no-fund --silent)
fi
