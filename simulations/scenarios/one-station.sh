#!/usr/bin/env bash
# Scenario "one station" (issue 6): a datacenter node seeds a delta; a field station fetches it
# through the emulated satellite link; then, through a fresh link with the same settings, a plain
# TCP bulk transfer of the same number of bytes as the reference. Goodput = payload bytes ÷
# (link rate × seconds the link was up during the transfer). Needs root.
#   BASE=models/.../model.safetensors [DELTA=x.bitdelta] [RATE=1mbit DELAY=300ms LOSS=0.01
#   OUTAGES="20s-50s 80s-110s"] simulations/scenarios/one-station.sh
set -euo pipefail
T=${TARGET:-target/debug}
RATE=${RATE:-1mbit}; DELAY=${DELAY:-300ms}; LOSS=${LOSS:-0.01}; OUTAGES=${OUTAGES:-}
: "${BASE:?BASE=path of the base safetensors}"
# Without DELTA the base itself crosses the link (e.g. a large generated object).
DELTA=${DELTA:-}
work=$(mktemp -d)
. "$(dirname "$0")/common.sh"
outage_args=(); for o in $OUTAGES; do outage_args+=(--outage "$o"); done
link() { # name subnet
  "$T/zdn-linkem" up "$1" --subnet "$2" --rate "$RATE" --delay "$DELAY" --loss "$LOSS" \
    "${outage_args[@]}" --secs 3600 > "$work/$1.out" &
  wait_for "$work/$1.out" ready
}
z() { "$T/zdn" --home "$@"; }

# Publish base + delta at the datacenter; carry the base to the station on "a disk".
hash_of() { python3 -c 'import json,sys; print(json.load(sys.stdin)["hash"])'; }
base=$(z "$work/dc" add "$BASE" --name base --json | hash_of)
key=$(z "$work/dc" key show)
if [ -n "$DELTA" ]; then
  delta=$(z "$work/dc" add "$DELTA" --base base --name delta --json | hash_of)
  z "$work/dc" export base -o "$work/base.zdnb" > /dev/null
  z "$work/field" import "$work/base.zdnb" --trust-any > /dev/null
else
  delta=$base
fi

link sat 41
ip netns exec sat-a "$T/zdn" --home "$work/dc" node run --profile datacenter --no-mdns \
  --listen /ip4/10.201.41.1/tcp/4801 > "$work/dc.out" &
addr=$(listen_addr "$work/dc.out")
t0=$(date +%s.%N)
ip netns exec sat-b "$T/zdn" --home "$work/field" fetch "$delta" --peer "$addr" --trust "$key" \
  --profile field --no-mdns --json > "$work/fetch.json"
t1=$(date +%s.%N)

link ref 42
ip netns exec ref-b "$T/zdn-linkem" tcp-sink 10.201.42.2:9000 > "$work/tcp.json" &
sink=$!
sleep 0.5
payload=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["bytes_received"])' "$work/fetch.json")
ip netns exec ref-a "$T/zdn-linkem" tcp-send 10.201.42.2:9000 "$payload"
wait "$sink"
cp "$work/fetch.json" "${OUT:-/dev/null}" 2>/dev/null || true

python3 - "$work/fetch.json" "$work/tcp.json" "$t0" "$t1" "$RATE" "$OUTAGES" <<'PY'
import json, re, sys
f = json.load(open(sys.argv[1])); tcp = json.load(open(sys.argv[2]))
t0, t1 = float(sys.argv[3]), float(sys.argv[4])
m = re.fullmatch(r"([\d.]+)(k|m|g)?bit", sys.argv[5].lower())
rate = float(m.group(1)) * {None: 1, "k": 1e3, "m": 1e6, "g": 1e9}[m.group(2)] / 8
def secs(s):
    v = re.fullmatch(r"([\d.]+)(ms|s|m|min|h)?", s)
    return float(v.group(1)) * {"ms": 1e-3, "s": 1, None: 1, "m": 60, "min": 60, "h": 3600}[v.group(2)]
outs = [tuple(secs(x) for x in o.split("-")) for o in sys.argv[6].split()]
def up(elapsed):  # seconds the link was up in [0, elapsed] (outages count from the link's start)
    return elapsed - sum(max(0.0, min(b, elapsed) - a) for a, b in outs if a < elapsed)
# The fetch started a few seconds after its link (node start); count its window conservatively
# as the whole fetch time, outages included only where they overlap.
zdn_time = t1 - t0
zdn_good = f["bytes_received"] / (rate * zdn_time)
tcp_good = tcp["bytes"] / (rate * up(tcp["seconds"]))
print(json.dumps({"payload_bytes": f["bytes_received"], "object_len": f["object_len"],
                  "zdn_seconds": round(zdn_time, 2), "zdn_goodput_no_outage_credit": round(zdn_good, 4),
                  "tcp_seconds": round(tcp["seconds"], 2), "tcp_goodput": round(tcp_good, 4),
                  "zdn_over_tcp": round(zdn_good / tcp_good, 4)}))
PY
