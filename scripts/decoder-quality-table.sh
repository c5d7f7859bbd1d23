#!/usr/bin/env bash
# The decoder quality table of docs/quality.md: `.bitdelta` settings on the real decoder pair of
# scripts/make-decoder-pair.sh, each measured by `zdn eval` (next-token KL, perplexity, special-token
# agreement) on the pair's held-out conversations, the base as the floor.
# Usage: decoder-quality-table.sh ZDN PAIR_DIR OUT_DIR  → a markdown table on stdout; each setting's raw
#   `zdn delta encode --json` and `zdn eval --json` reports in OUT_DIR.
# What can be measured today: `zdn delta encode` takes single safetensors files and refuses a tensor
# whose leading dimension grew (the fine-tune added 2 tokens: embed_tokens and lm_head have 2 more
# rows). So the shards are merged into one file per model (same tensors, same bytes; Python's
# standard library only), and each delta is made against, and applied to (`zdn eval --delta-base`),
# the base with either the fine-tune's grown tensors copied in whole ("grown tensors exact": the
# two tensors are excluded from quantization) or only their 2 new rows appended to the base's ("new
# rows exact": the 4096 shared rows are treated as the settings say). What is copied in is counted
# in bf16 bytes beside the delta file's. The base itself stays the floor.
set -euo pipefail
zdn=${1:?usage: decoder-quality-table.sh ZDN PAIR_DIR OUT_DIR}
pair=${2:?usage: decoder-quality-table.sh ZDN PAIR_DIR OUT_DIR}
out=${3:?usage: decoder-quality-table.sh ZDN PAIR_DIR OUT_DIR}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"
eval "$("$here/make-decoder-pair.sh" "$pair" | sed 's/^\([a-z]*\) \(.*\)$/\1="\2"/')"

merge() {  # folder out [grown-from [rows]]: one model.safetensors; tensors of grown-from whose shape
           # differs copied in whole, or with "rows" only their new rows appended to the folder's
  python3 - "$@" <<'PY'
import json, os, shutil, struct, sys
src, dst = sys.argv[1], sys.argv[2]
os.makedirs(dst, exist_ok=True)
def tensors(folder):
    index = json.load(open(os.path.join(folder, "model.safetensors.index.json")))["weight_map"]
    out = {}
    for shard in sorted(set(index.values())):
        with open(os.path.join(folder, shard), "rb") as f:
            n = struct.unpack("<Q", f.read(8))[0]
            h = json.loads(f.read(n))
            data = f.read()
        for name, t in sorted(((k, v) for k, v in h.items() if k != "__metadata__"), key=lambda kv: kv[1]["data_offsets"][0]):
            a, b = t["data_offsets"]
            out[name] = (t["dtype"], t["shape"], data[a:b])
    return out
own = tensors(src)
grown = tensors(sys.argv[3]) if len(sys.argv) > 3 else {}
header, blobs, offset = {}, [], 0
for name, (dtype, shape, blob) in own.items():
    if name in grown and grown[name][1] != shape:
        if len(sys.argv) > 4 and sys.argv[4] == "rows":  # row-major: the new rows follow the old ones
            extra = grown[name][2][len(blob):]
            dtype, shape, blob = grown[name][0], grown[name][1], blob + extra
            print(f"{name} {len(extra)}")
        else:
            dtype, shape, blob = grown[name]
            print(f"{name} {len(blob)}")
    header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(blob)]}
    blobs.append(blob)
    offset += len(blob)
text = json.dumps(header, separators=(",", ":")).encode()
text += b" " * (-len(text) % 8)
with open(os.path.join(dst, "model.safetensors"), "wb") as f:
    f.write(struct.pack("<Q", len(text)) + text)
    for b in blobs:
        f.write(b)
for name in os.listdir(src):
    if name.endswith((".json", ".jinja")) and not name.startswith("model.safetensors"):
        shutil.copy(os.path.join(src, name), os.path.join(dst, name))
PY
}
merge "$finetuned" "$out/finetuned"
merge "$base" "$out/onto" "$finetuned" >"$out/grown.txt"
merge "$base" "$out/onto-rows" "$finetuned" rows >"$out/new-rows.txt"
grown_bytes=$(awk '{s += $2} END {print s}' "$out/grown.txt")
new_row_bytes=$(awk '{s += $2} END {print s}' "$out/new-rows.txt")
exclude=()
while read -r name _; do exclude+=(--exclude "$name"); done <"$out/grown.txt"

# label | onto (grown tensors whole, or only their new rows) | encode options
settings=(
  "today's defaults (1-bit, tensor scales, --embeddings base), new rows exact|rows|"
  "1-bit, row scales, --embeddings exact, new rows exact|rows|--bits 1 --scale row --embeddings exact"
  "1-bit, tensor scales, grown tensors exact|whole|--bits 1 --scale tensor"
  "1-bit, row scales, grown tensors exact|whole|--bits 1 --scale row"
  "1-bit, group:128, grown tensors exact|whole|--bits 1 --scale group:128"
  "2-bit, row, grown tensors exact|whole|--bits 2 --scale row"
  "4-bit, row, grown tensors exact|whole|--bits 4 --scale row"
)
echo "| setting | delta file bytes | + carried exactly | fine-tune ÷ total | file bits/param | KL(ft ‖ applied) | perplexity | gain kept (ppl / log) | top-1 agreement | special-token top-1 (all / after / next / predicted) |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
i=0
for s in "${settings[@]}"; do
  i=$((i + 1))
  IFS='|' read -r label mode opts <<<"$s"
  read -r -a args <<<"$opts"
  if [ "$mode" = whole ]; then
    onto="$out/onto" extra=$grown_bytes
    args+=("${exclude[@]}")
  else
    onto="$out/onto-rows" extra=$new_row_bytes
  fi
  "$zdn" delta encode --base "$onto/model.safetensors" --finetuned "$out/finetuned/model.safetensors" \
    -o "$out/$i.bitdelta" --json "${args[@]}" >"$out/$i.encode.json"
  "$zdn" eval --base "$base" --finetuned "$finetuned" --delta "$out/$i.bitdelta" --delta-base "$onto" \
    --corpus "$heldout" --json >"$out/$i.eval.json"
  python3 - "$label" "$out/$i.eval.json" "$out/$i.encode.json" "$extra" <<'PY'
import json, sys
label, r, e, grown = sys.argv[1], json.load(open(sys.argv[2])), json.load(open(sys.argv[3])), int(sys.argv[4])
p, t = r["common_perplexity"], r["special_tokens"]
st = [t["applied"]] + [t[k]["applied"] for k in ("after_special", "special_next", "finetuned_predicts_special")]
total = r["delta_bytes"] + grown
print(f"| {label} | {r['delta_bytes']:,} | {total:,} | {r['finetuned_bytes'] / total:.2f}x | {e['bits_per_param']:.3f} | "
      f"{r['kl_finetuned_applied']:.2e} | {p['applied']:.2f} | {100 * r['gain_kept']:.1f} / {100 * r['log_gain_kept']:.1f} % | "
      f"{100 * r['top1_agreement']['applied']:.1f} % | " + " / ".join(f"{100 * k:.1f}" for k in st) + " % |")
PY
done
python3 - "$out/1.eval.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
p, st = r["common_perplexity"], r["special_tokens"]
print()
print(f"fine-tune: perplexity {p['finetuned']:.2f}, special-token top-1 correct {100 * st['finetuned_correct']:.1f} %; "
      f"base alone (the floor): KL {r['kl_finetuned_base']:.4f}, perplexity {p['base']:.2f}, "
      f"top-1 agreement {100 * r['top1_agreement']['base']:.1f} %, special-token top-1 {100 * st['base']:.1f} % "
      f"(after {100 * st['after_special']['base']:.1f}, next {100 * st['special_next']['base']:.1f}, "
      f"predicted {100 * st['finetuned_predicts_special']['base']:.1f} %); "
      f"{r['conversations']} held-out conversations, {r['positions']} positions ({r['common_positions']} whose next token "
      f"the base has), {st['positions']} special-token positions ({st['after_special']['positions']} after a special token, "
      f"{st['special_next']['positions']} before one, {st['finetuned_predicts_special']['positions']} where the fine-tune "
      f"predicts one); fine-tune weights {r['finetuned_bytes']:,} bytes (bf16)")
PY
echo
echo "carried exactly (bf16 bytes), grown tensors whole: $(tr '\n' ' ' <"$out/grown.txt"); only their new rows: $(tr '\n' ' ' <"$out/new-rows.txt")"
