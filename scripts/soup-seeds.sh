#!/usr/bin/env bash
# The DeltaSoup harness (zdn-soup-bench) at 30 % attackers over several seeds and honest-noise levels;
# prints, per (seed, noise) and method, the worst mean cosine over the five attacks and the clean
# cosine (no attackers), as the markdown table of docs/soup.md.
#   scripts/soup-seeds.sh BENCH_BINARY MODELS_DIR OUT_DIR ["SEED:NOISE ..."]
set -euo pipefail
bench=$1; models=$2; out=$3
configs=${4:-"1:0.5 2:0.5 3:0.5 1:0.25 1:1.0"}
mkdir -p "$out"
for c in $configs; do
  seed=${c%%:*}; noise=${c##*:}
  f="$out/seed$seed-noise$noise.json"
  [ -s "$f" ] || RAYON_NUM_THREADS=1 "$bench" --models "$models" --fractions 0,0.3 --seed "$seed" \
    --noise "$noise" --json > "$f"
done
python3 - "$out" $configs <<'PY'
import json, sys
out, configs = sys.argv[1], sys.argv[2:]
methods = None
print("| seed | noise | " + " | ".join(["method"]) + " | clean | worst at 30 % (attack) |")
print("|---|---|---|---:|---:|")
for c in configs:
    seed, noise = c.split(":")
    d = json.load(open(f"{out}/seed{seed}-noise{noise}.json"))
    rows = d["rows"]
    names = list(dict.fromkeys(r["method"] for r in rows))
    for m in names:
        clean = [r for r in rows if r["method"] == m and r["attackers"] == 0][0]["cosine_mean"]
        att = [r for r in rows if r["method"] == m and r["attackers"] > 0]
        worst = min(att, key=lambda r: r["cosine_mean"])
        print(f"| {seed} | {noise} | {m} | {clean:.5f} | {worst['cosine_mean']:.5f} ({worst['attack']}) |")
PY
