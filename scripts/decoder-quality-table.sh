#!/usr/bin/env bash
# The decoder quality table of docs/quality.md: `.bitdelta` settings on the real decoder pair of
# scripts/make-decoder-pair.sh, each measured by `zdn eval` (next-token KL, perplexity, special-token
# agreement) on the pair's held-out conversations, the base as the floor.
# Usage: decoder-quality-table.sh ZDN PAIR_DIR OUT_DIR  → a markdown table on stdout; each setting's raw
#   `zdn delta encode --json` and `zdn eval --json` reports in OUT_DIR.
# What can be measured today: `zdn delta encode` takes single safetensors files and refuses a tensor
# whose leading dimension grew (the fine-tune added 2 tokens: embed_tokens and lm_head have 2 more
# rows). So the shards are merged into one file per model (same tensors, same bytes; Python's
# standard library only), the deltas are made against the base with the fine-tune's grown tensors
# copied in ("onto"; `zdn eval --delta-base`), and those two tensors are excluded from quantization:
# they are carried exactly, and the table counts their bf16 bytes beside the delta file's.
set -euo pipefail
zdn=${1:?usage: decoder-quality-table.sh ZDN PAIR_DIR OUT_DIR}
pair=${2:?usage: decoder-quality-table.sh ZDN PAIR_DIR OUT_DIR}
out=${3:?usage: decoder-quality-table.sh ZDN PAIR_DIR OUT_DIR}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"
eval "$("$here/make-decoder-pair.sh" "$pair" | sed 's/^\([a-z]*\) \(.*\)$/\1="\2"/')"

merge() {  # folder out [grown-from]: one model.safetensors (tensors of grown-from whose shape differs copied in)
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
grown_bytes=$(awk '{s += $2} END {print s}' "$out/grown.txt")
exclude=()
while read -r name _; do exclude+=(--exclude "$name"); done <"$out/grown.txt"

settings=(
  "1-bit, tensor scales (today's default scale)|--bits 1 --scale tensor"
  "1-bit, row scales|--bits 1 --scale row"
  "1-bit, group:128|--bits 1 --scale group:128"
  "2-bit, row|--bits 2 --scale row"
  "4-bit, row|--bits 4 --scale row"
)
echo "| setting | delta file bytes | + grown tensors exact | fine-tune ÷ (file + grown) | file bits/param | KL(ft ‖ applied) | perplexity | gain kept | top-1 agreement | special-token top-1 |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
i=0
for s in "${settings[@]}"; do
  i=$((i + 1))
  label=${s%%|*}
  read -r -a args <<<"${s#*|}"
  "$zdn" delta encode --base "$out/onto/model.safetensors" --finetuned "$out/finetuned/model.safetensors" \
    -o "$out/$i.bitdelta" --json "${args[@]}" "${exclude[@]}" >"$out/$i.encode.json"
  "$zdn" eval --base "$base" --finetuned "$finetuned" --delta "$out/$i.bitdelta" --delta-base "$out/onto" \
    --corpus "$heldout" --json >"$out/$i.eval.json"
  python3 - "$label" "$out/$i.eval.json" "$out/$i.encode.json" "$grown_bytes" <<'PY'
import json, sys
label, r, e, grown = sys.argv[1], json.load(open(sys.argv[2])), json.load(open(sys.argv[3])), int(sys.argv[4])
p = r["common_perplexity"]
total = r["delta_bytes"] + grown
print(f"| {label} | {r['delta_bytes']:,} | {total:,} | {r['finetuned_bytes'] / total:.2f}x | {e['bits_per_param']:.3f} | "
      f"{r['kl_finetuned_applied']:.4f} | {p['applied']:.2f} | {100 * r['gain_kept']:.1f} % | "
      f"{100 * r['top1_agreement']['applied']:.1f} % | {100 * r['special_tokens']['applied']:.1f} % |")
PY
done
python3 - "$out/1.eval.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
p, st = r["common_perplexity"], r["special_tokens"]
print()
print(f"fine-tune: perplexity {p['finetuned']:.2f}, special-token top-1 correct {100 * st['finetuned_correct']:.1f} %; "
      f"base alone (the floor): KL {r['kl_finetuned_base']:.4f}, perplexity {p['base']:.2f}, "
      f"top-1 agreement {100 * r['top1_agreement']['base']:.1f} %, special-token top-1 {100 * st['base']:.1f} %; "
      f"{r['conversations']} held-out conversations, {r['positions']} positions ({r['common_positions']} whose next token "
      f"the base has), {st['positions']} special-token positions; fine-tune weights {r['finetuned_bytes']:,} bytes (bf16)")
PY
echo
echo "grown tensors carried exactly (bf16 bytes): $(tr '\n' ' ' <"$out/grown.txt")"
