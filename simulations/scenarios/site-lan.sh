#!/usr/bin/env bash
# Scenario "site LAN" (issue 6): a station fetches an object over the emulated satellite link;
# three more devices at the site get it from the station over the site's network (unthrottled;
# here the station namespace's own loopback), not over the satellite. Prints the IP bytes the
# satellite link carried ÷ the object's stored bytes (≈ 1 means one copy). Needs root.
#   BASE=models/.../model.safetensors [DELTA=x.bitdelta] TARGET=target/debug simulations/scenarios/site-lan.sh
set -euo pipefail
T=${TARGET:-target/debug}
: "${BASE:?BASE=path of the base safetensors}"
DELTA=${DELTA:-}
work=$(mktemp -d)
. "$(dirname "$0")/common.sh"
z() { "$T/zdn" --home "$@"; }
hash_of() { python3 -c 'import json,sys; print(json.load(sys.stdin)["hash"])'; }

base=$(z "$work/dc" add "$BASE" --name base --json | hash_of)
key=$(z "$work/dc" key show)
object=$base
if [ -n "$DELTA" ]; then
  object=$(z "$work/dc" add "$DELTA" --base base --name delta --json | hash_of)
  # Every site device has the base already (a disk); only the delta is new.
  z "$work/dc" export base -o "$work/base.zdnb" > /dev/null
  for h in station dev1 dev2 dev3; do z "$work/$h" import "$work/base.zdnb" --trust-any > /dev/null; done
fi

"$T/zdn-linkem" up lan --subnet 51 --rate 1mbit --delay 300ms --loss 0.01 --stats-every 5s \
  --secs 3600 > "$work/link.out" &
wait_for "$work/link.out" ready
ip netns exec lan-a "$T/zdn" --home "$work/dc" node run --profile datacenter --no-mdns \
  --listen /ip4/10.201.51.1/tcp/4801 > "$work/dc.out" &
dc=$(listen_addr "$work/dc.out")
# The station listens on the site network (loopback of its namespace) and reaches the datacenter
# over the satellite.
ip netns exec lan-b "$T/zdn" --home "$work/station" node run --profile field --no-mdns \
  --listen /ip4/127.0.0.1/tcp/4802 --peer "$dc" --trust "$key" > "$work/station.out" &
station=$(listen_addr "$work/station.out")
t0=$(date +%s)
ip netns exec lan-b "$T/zdn" --home "$work/station" fetch "$object" --json > "$work/station.json"
t1=$(date +%s)
for d in dev1 dev2 dev3; do
  ip netns exec lan-b "$T/zdn" --home "$work/$d" fetch "$object" --peer "$station" --trust "$key" \
    --profile edge --no-mdns --json > "$work/$d.json"
done
t2=$(date +%s)
sleep 6 # one more counter line from the emulator
python3 - "$work" "$t0" "$t1" "$t2" <<'PY'
import json, sys, os
w = sys.argv[1]
rows = [json.loads(l) for l in open(os.path.join(w, "link.out")) if l.startswith('{"t"')]
down = rows[-1]["a_to_b"]["bytes_delivered"]; up = rows[-1]["b_to_a"]["bytes_delivered"]
st = json.load(open(os.path.join(w, "station.json")))
devs = [json.load(open(os.path.join(w, f"dev{i}.json"))) for i in (1, 2, 3)]
print(json.dumps({
    "object_len": st["object_len"], "station_received": st["bytes_received"],
    "station_seconds": int(sys.argv[3]) - int(sys.argv[2]),
    "devices_received": [d["bytes_received"] for d in devs],
    "devices_seconds": int(sys.argv[4]) - int(sys.argv[3]),
    "satellite_ip_bytes_down": down, "satellite_ip_bytes_up": up,
    "satellite_down_per_copy": round(down / st["bytes_received"], 4),
}))
PY
