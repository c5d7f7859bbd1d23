#!/usr/bin/env bash
# Prints the docs/quality.md sentence-embedding table for the real MiniLM pair: for each setting, the
# .bitdelta size and the cosine of the delta-applied model's embeddings to the fine-tune's on the 145
# held-out sentences of gensim's lee.cor, before and after `zdn delta calibrate` (fitted on
# lee_background.cor, held-out sentences excluded).
# Usage: scripts/embedding-quality-table.sh [ZDN_BINARY] [MODEL_DIR] [CALIBRATE_STEPS]
set -euo pipefail
zdn=${1:-target/debug/zdn}
dir=${2:-.work/minilm}
steps=${3:-60}
eval "$(bash "$(dirname "$0")/fetch-minilm-pair.sh" "$dir" | awk '{print $1"="$2}')"
eval "$(bash "$(dirname "$0")/fetch-corpus.sh" "$dir/corpus" | awk '{print $1"="$2}')"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
fine_bytes=$(stat -c %s "$finetuned")
echo "| setting | calibrated | file bytes | fine-tune ÷ file | mean cosine | min cosine | p5 cosine | calibration s |"
echo "|---|---|---:|---:|---:|---:|---:|---:|"
row() {  # label args...
  local label=$1; shift
  "$zdn" delta encode --base "$base" --finetuned "$finetuned" -o "$tmp/d.bitdelta" "$@" --json > /dev/null
  "$zdn" eval --base "$base" --finetuned "$finetuned" --delta "$tmp/d.bitdelta" --corpus "$heldout" --json > "$tmp/q.json"
  "$zdn" delta calibrate --base "$base" --finetuned "$finetuned" --delta "$tmp/d.bitdelta" \
    --corpus "$calibration" --exclude-corpus "$heldout" --steps "$steps" -o "$tmp/c.bitdelta" --json > "$tmp/c.json"
  "$zdn" eval --base "$base" --finetuned "$finetuned" --delta "$tmp/c.bitdelta" --corpus "$heldout" --json > "$tmp/qc.json"
  python3 - "$label" "$fine_bytes" "$tmp/q.json" "$tmp/qc.json" "$tmp/c.json" <<'PY'
import json, sys
label, fine = sys.argv[1], int(sys.argv[2])
q, qc, c = (json.load(open(p)) for p in sys.argv[3:6])
for cal, r, secs in (("no", q, ""), ("yes", qc, f"{c['seconds']:.0f}")):
    d = r["delta"]
    print(f"| {label} | {cal} | {r['delta_bytes']:,} | {fine / r['delta_bytes']:.1f}x | {d['mean']:.5f} | {d['min']:.5f} | {d['p5']:.5f} | {secs} |")
PY
}
row "1-bit, tensor scales" --scale tensor
row "1-bit, row scales" --scale row
row "1-bit, group:128" --scale group:128
row "2-bit, row" --bits 2 --scale row
row "4-bit, row" --bits 4 --scale row
python3 - "$tmp/q.json" <<'PY'
import json, sys
q = json.load(open(sys.argv[1]))
b = q["base"]
print(f"\nbase alone (the floor): mean {b['mean']:.5f}, min {b['min']:.5f}, p5 {b['p5']:.5f} on {q['sentences']} sentences of {q['corpus']}")
PY
