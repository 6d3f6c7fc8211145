#!/usr/bin/env bash
# Builds the library for the browser (wasm32) and generates the JS bindings, three times:
#   web/pkg          single-threaded (stable Rust): for pages that are not cross-origin isolated;
#   web/pkg-selftest the same with the selftest export, for web/selftest.html;
#   web/pkg-threads  threaded (+atomics, shared memory): rayon's pool on Web Workers, for pages
#                    served with COOP/COEP (as `flexlora web` serves them).
# The threaded build needs nightly Rust with rust-src (`-Z build-std` rebuilds std with atomics):
# the toolchain is FLEXLORA_WASM_NIGHTLY (default `nightly`; scripts/install-system-deps.sh
# installs it). FLEXLORA_WEB_THREADS=0 skips it (the page then runs one thread everywhere).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --lib --release --target wasm32-unknown-unknown
wasm-bindgen --target web --no-typescript --out-dir web/pkg target/wasm32-unknown-unknown/release/flexlora.wasm
echo "web/pkg: $(du -h web/pkg/flexlora_bg.wasm | cut -f1) wasm (one thread)"
# The selftest page's build (web/selftest.html): the same, plus the `selftest` export, whose
# training ops would make web/pkg ~0.7 MB bigger for a page that never runs them.
cargo build --lib --release --target wasm32-unknown-unknown --features web-selftest
wasm-bindgen --target web --no-typescript --out-dir web/pkg-selftest target/wasm32-unknown-unknown/release/flexlora.wasm
echo "web/pkg-selftest: $(du -h web/pkg-selftest/flexlora_bg.wasm | cut -f1) wasm (one thread, with the selftest)"

if [ "${FLEXLORA_WEB_THREADS:-1}" = 0 ]; then
  rm -rf web/pkg-threads
  echo "web/pkg-threads: skipped (FLEXLORA_WEB_THREADS=0): the page runs one thread"
  exit 0
fi
tc=${FLEXLORA_WASM_NIGHTLY:-nightly}
if ! rustup run "$tc" rustc --version >/dev/null 2>&1; then
  echo "build-web.sh: the threaded build needs the Rust toolchain '$tc', which is not installed." >&2
  echo "  install it with: rustup toolchain install $tc --profile minimal --component rust-src" >&2
  echo "  (or run scripts/install-system-deps.sh; FLEXLORA_WEB_THREADS=0 builds the single-threaded page only)" >&2
  exit 1
fi
if ! rustup component list --toolchain "$tc" --installed | grep -q '^rust-src'; then
  echo "build-web.sh: the threaded build rebuilds std (-Z build-std) and needs rust-src for '$tc'." >&2
  echo "  install it with: rustup component add rust-src --toolchain $tc" >&2
  exit 1
fi
# RUSTFLAGS replaces .cargo/config.toml's wasm flags, so simd128 is named again. Shared memory may
# grow to 4 GiB, all a wasm32 module addresses (the linker's default for shared memory is 1 GiB,
# too small for Qwen2.5-0.5B). The link arguments after `--` (for this crate only) make the memory
# shared and imported, and export the thread-local-storage symbols wasm-bindgen uses to start a
# thread; rustc no longer adds them itself.
RUSTFLAGS='-C target-feature=+atomics,+bulk-memory,+mutable-globals,+simd128 -C link-arg=--max-memory=4294967296' \
  cargo +"$tc" rustc --lib --crate-type cdylib --release --target wasm32-unknown-unknown -Z build-std=panic_abort,std \
  --target-dir target/wasm-threads -- \
  -C link-arg=--shared-memory -C link-arg=--import-memory -C link-arg=--export=__wasm_init_tls \
  -C link-arg=--export=__tls_size -C link-arg=--export=__tls_align -C link-arg=--export=__tls_base
wasm-bindgen --target web --no-typescript --out-dir web/pkg-threads target/wasm-threads/wasm32-unknown-unknown/release/flexlora.wasm
echo "web/pkg-threads: $(du -h web/pkg-threads/flexlora_bg.wasm | cut -f1) wasm (threads, $(rustup run "$tc" rustc --version))"
