#!/usr/bin/env bash
# The decoder table of docs/quality.md for folder deltas: settings of `zdn delta encode` on the two
# model folders of the real decoder pair (scripts/make-decoder-pair.sh: a base in 3 shards, a chat
# fine-tune in 5 with 2 added tokens), each measured by `zdn eval` (next-token KL, perplexity,
# special-token agreement) on the pair's held-out conversations, the base as the floor. The folder
# delta is the whole shipped object (delta.bitdelta, shard headers, the changed side files); its
# vocabulary growth is encoded (new rows exact) whatever the setting. Settings with calibration
# steps are also calibrated (`zdn delta calibrate`, default learning rate, on the pair's
# calibration conversations with the held-out ones excluded) and measured again.
# Usage: decoder-folder-table.sh ZDN PAIR_DIR OUT_DIR → a markdown table on stdout; each setting's
#   raw `zdn delta encode --json` and `zdn eval --json` reports in OUT_DIR.
set -euo pipefail
zdn=${1:?usage: decoder-folder-table.sh ZDN PAIR_DIR OUT_DIR}
pair=${2:?usage: decoder-folder-table.sh ZDN PAIR_DIR OUT_DIR}
out=${3:?usage: decoder-folder-table.sh ZDN PAIR_DIR OUT_DIR}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"
eval "$("$here/make-decoder-pair.sh" "$pair" | sed 's/^\([a-z]*\) \(.*\)$/\1="\2"/')"

# label | encode options | calibration steps (none, or several)
settings=(
  "generic defaults (--architecture generic: 1-bit, tensor scales, --embeddings base)|--architecture generic|60"
  "decoder defaults (1-bit; row scales; vocabulary by rows, special-token and most-changed rows exact)||60 200"
  "decoder defaults, group:128 scales|--scale group:128|60"
  "decoder defaults, 2-bit|--bits 2|60"
  "decoder defaults, 4-bit|--bits 4|60"
  "lossless (--exclude '*')|--exclude *|"
)
echo "| setting | folder delta bytes | of which delta.bitdelta | fine-tune ÷ delta | bits/param | KL(ft ‖ applied) | perplexity | gain kept (ppl / log) | top-1 agreement | special-token top-1 (all / after / next / predicted) |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
# One table row: LABEL, the eval report, the encode report, the folder delta.
row() {
  python3 - "$1" "$2" "$3" "$4/delta.bitdelta" <<'PY'
import json, os, sys
label, r, e = sys.argv[1], json.load(open(sys.argv[2])), json.load(open(sys.argv[3]))
bd = os.path.getsize(sys.argv[4])
p, t = r["common_perplexity"], r["special_tokens"]
st = [t["applied"]] + [t[k]["applied"] for k in ("after_special", "special_next", "finetuned_predicts_special")]
total = r["delta_bytes"]
print(f"| {label} | {total:,} | {bd:,} | {r['finetuned_bytes'] / total:.2f}x | {e['bits_per_param']:.3f} | "
      f"{r['kl_finetuned_applied']:.2e} | {p['applied']:.2f} | {100 * r['gain_kept']:.1f} / {100 * r['log_gain_kept']:.1f} % | "
      f"{100 * r['top1_agreement']['applied']:.1f} % | " + " / ".join(f"{100 * k:.1f}" for k in st) + " % |")
PY
}
evaluate() {
  "$zdn" eval --base "$base" --finetuned "$finetuned" --delta "$1" --corpus "$heldout" --json >"$2"
}
i=0
for s in "${settings[@]}"; do
  i=$((i + 1))
  IFS='|' read -r label opts steps <<<"$s"
  read -r -a args <<<"$opts"
  rm -rf "$out/$i.delta"
  "$zdn" delta encode --base "$base" --finetuned "$finetuned" -o "$out/$i.delta" --json "${args[@]}" >"$out/$i.encode.json"
  evaluate "$out/$i.delta" "$out/$i.eval.json"
  row "$label" "$out/$i.eval.json" "$out/$i.encode.json" "$out/$i.delta"
  for n in $steps; do
    cal="$out/$i.cal$n"
    rm -rf "$cal.delta"
    "$zdn" delta calibrate --base "$base" --finetuned "$finetuned" --delta "$out/$i.delta" \
      --corpus "$calibration" --exclude-corpus "$heldout" --steps "$n" -o "$cal.delta" --json >"$cal.calibrate.json"
    evaluate "$cal.delta" "$cal.eval.json"
    row "${label%% (*}, calibrated ($n steps)" "$cal.eval.json" "$out/$i.encode.json" "$cal.delta"
    rm -rf "$cal.delta"
  done
  rm -rf "$out/$i.delta"
done
python3 - "$out/2.encode.json" <<'PY'
import json, sys
e = json.load(open(sys.argv[1]))
print()
print("decoder defaults: " + "; ".join(f"{c['class']} {c['tensors']} tensors, {c['params']:,} params, {c['block_bytes']:,} bytes" for c in e["classes"])
      + "; exact rows: " + ", ".join(f"{x['name']} {x['rows']} ({x['special']} special)" for x in e["exact_rows"]))
PY
