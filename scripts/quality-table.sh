#!/usr/bin/env bash
# Prints the docs/quality.md weight-space table for the real MiniLM pair.
# Usage: scripts/quality-table.sh [ZDN_BINARY] [MODEL_DIR]
set -euo pipefail
zdn=${1:-target/debug/zdn}
dir=${2:-.work/minilm}
eval "$(bash "$(dirname "$0")/fetch-minilm-pair.sh" "$dir" | awk '{print $1"="$2}')"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
fine_bytes=$(stat -c %s "$finetuned")
echo "| setting | embeddings | file bytes | bits/param | vs fine-tune | vs fp16 | ‖R−F‖/‖F‖ | Δ not captured (all) | Δ not captured (quantized) |"
echo "|---|---|---:|---:|---:|---:|---:|---:|---:|"
row() {  # label embeddings args...
  local label=$1 emb=$2; shift 2
  "$zdn" delta encode --base "$base" --finetuned "$finetuned" -o "$tmp/d.bitdelta" --embeddings "$emb" "$@" --json > "$tmp/e.json"
  "$zdn" delta eval --base "$base" --finetuned "$finetuned" --delta "$tmp/d.bitdelta" --json > "$tmp/v.json"
  python3 - "$label" "$emb" "$fine_bytes" "$tmp/e.json" "$tmp/v.json" <<'PY'
import json, sys
label, emb, fine = sys.argv[1], sys.argv[2], int(sys.argv[3])
e = json.load(open(sys.argv[4])); v = json.load(open(sys.argv[5]))
print(f"| {label} | {emb} | {e['file_bytes']:,} | {e['bits_per_param']:.3f} | {fine/e['file_bytes']:.1f}x | {e['ratio_vs_fp16']:.1f}x | {v['rel_error']:.3e} | {v['rel_delta_error']:.3f} | {v['quantized_rel_delta_error']:.3f} |")
PY
}
for emb in base exact quantize; do
  row "1-bit, tensor scales" $emb --scale tensor
done
for emb in base quantize; do
  row "1-bit, row scales" $emb --scale row
done
row "1-bit, group:128" base --scale group:128
row "1-bit, tensor, clip 3σ" base --scale tensor --clip 3
row "1-bit, row, clip 3σ" base --scale row --clip 3
row "2-bit, tensor" base --bits 2 --scale tensor
row "2-bit, row" base --bits 2 --scale row
row "2-bit, group:128" base --bits 2 --scale group:128
row "4-bit, tensor" base --bits 4 --scale tensor
row "4-bit, row" base --bits 4 --scale row
row "4-bit, group:128" base --bits 4 --scale group:128
echo
echo "base model alone: ‖B−F‖/‖F‖ = $(python3 -c "import json;print('%.3e'%json.load(open('$tmp/v.json'))['base_rel_error'])"); fine-tune file: $fine_bytes bytes"
