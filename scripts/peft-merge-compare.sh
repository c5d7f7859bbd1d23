#!/usr/bin/env bash
# Compares zdn's LoRA merge (docs/spec/lora.md § 4) with PEFT's merge_and_unload() on a real Llama
# folder: the base of the decoder pair (scripts/make-decoder-pair.sh). For each configuration of
# scripts/peft_merge_compare.py (r = 8, α = 16, f32 adapter; r = 12, α = 20, rsLoRA, rank_pattern and
# alpha_pattern, bf16 adapter; all seven projections of every layer), PEFT wraps the base, its A and B
# are set to seeded random non-zero values, the adapter is saved and merged by PEFT; then the real
# `zdn` binary, in a fresh home, adds the base and the adapter (`zdn add ADAPTER --base HASH`) and
# writes the merge (`zdn apply ADAPTER_HASH -o OUT`). Every tensor of OUT is compared with PEFT's
# merged tensor, with the spec's arithmetic and with PEFT's arithmetic (both re-done from the files).
#
# Usage: peft-merge-compare.sh ZDN_BIN PAIR_DIR WORK_DIR REPORT_JSON
#        peft-merge-compare.sh golden PAIR_DIR OUT_DIR
#   ZDN_BIN   the zdn binary (e.g. target/debug/zdn)
#   PAIR_DIR  the decoder pair made by scripts/make-decoder-pair.sh with ZDN_KEEP_PYTHON=1 (its
#             base/ and py/: torch, transformers, safetensors, numpy)
#   WORK_DIR  scratch (adapters, PEFT's merges, zdn homes and outputs); emptied first
# The second form writes the small regression vector of tests/e2e/lora.rs (tests/vectors/peft_merge:
# a tiny Llama made by transformers, both adapters, PEFT's merges, the spec's arithmetic) into OUT_DIR
# (emptied first); it needs only the pair's py/.
# Installs the pinned packages of scripts/peft-requirements.txt (peft, accelerate, psutil) into
# $ZDN_PEFT_PY (default ~/.cache/zdn-peft-py) once; a later call reuses them. Exits non-zero when
# an output differs from the arithmetic that should explain it, or an untargeted tensor changed.
set -euo pipefail
usage="usage: peft-merge-compare.sh ZDN_BIN PAIR_DIR WORK_DIR REPORT_JSON | golden PAIR_DIR OUT_DIR"
if [ $# -eq 3 ] && [ "$1" = golden ]; then
  mode=golden
  pair=$(realpath "$2")
  work=$3
elif [ $# -eq 4 ]; then
  mode=compare
  zdn=$(realpath "$1")
  pair=$(realpath "$2")
  work=$3
  report=$(realpath -m "$4")
  [ -x "$zdn" ] || { echo "no zdn binary at $zdn" >&2; exit 1; }
else
  echo "$usage" >&2
  exit 2
fi
here=$(cd "$(dirname "$0")" && pwd)
# WORK_DIR / OUT_DIR is emptied: refuse the root, the home and the repository itself.
case "$(realpath -m "$work")" in
  / | "$HOME" | "$(dirname "$here")") echo "refusing to empty $work" >&2; exit 2 ;;
esac
peft_py=${ZDN_PEFT_PY:-$HOME/.cache/zdn-peft-py}
[ -f "$pair/base/config.json" ] && [ -d "$pair/py/torch" ] ||
  { echo "$pair is not a decoder pair with its python packages (ZDN_KEEP_PYTHON=1)" >&2; exit 1; }

# Install once: the marker holds the requirements' sha256, so a changed pin reinstalls.
want=$(sha256sum "$here/peft-requirements.txt" | cut -d' ' -f1)
if [ "$(cat "$peft_py/.installed" 2>/dev/null || true)" != "$want" ]; then
  rm -rf "$peft_py"
  python3.11 -m pip install --quiet --root-user-action=ignore --require-hashes --no-deps --only-binary=:all: \
    --target "$peft_py" -r "$here/peft-requirements.txt"
  echo "$want" > "$peft_py/.installed"
fi
export PYTHONPATH="$peft_py:$pair/py"
export PYTHONHASHSEED=0  # PEFT saves target_modules in set order

if [ "$mode" = golden ]; then
  rm -rf "$work"
  python3.11 "$here/peft_merge_compare.py" golden "$work"
  exit 0
fi

rm -rf "$work"
mkdir -p "$work"
work=$(realpath "$work")
python3.11 "$here/peft_merge_compare.py" make "$pair/base" "$work"

for cfg in "$work"/*/; do
  cfg=${cfg%/}
  home=$cfg/home
  base_hash=$("$zdn" --home "$home" add "$pair/base" --json |
    python3.11 -c 'import json,sys; print(json.load(sys.stdin)["hash"])')
  adapter_hash=$("$zdn" --home "$home" add "$cfg/adapter" --base "$base_hash" --json |
    python3.11 -c 'import json,sys; print(json.load(sys.stdin)["hash"])')
  "$zdn" --home "$home" apply "$adapter_hash" -o "$cfg/zdn_out"
  echo "$(basename "$cfg"): base $base_hash, adapter $adapter_hash"
done

python3.11 "$here/peft_merge_compare.py" compare "$pair/base" "$work" "$report"
