#!/usr/bin/env bash
# Idle traffic of a `field` node connected to a `datacenter` node through the emulated satellite
# link (1 Mbps, 300 ms each way), nothing to sync. Prints the bytes each way between the 60 s mark
# (after connection setup) and the end, and extrapolates them per day. Needs root.
#   SECS=600 simulations/scenarios/idle.sh      (binaries from $TARGET, default target/debug)
set -euo pipefail
T=${TARGET:-target/debug}
SECS=${SECS:-600}
work=$(mktemp -d)
. "$(dirname "$0")/common.sh"
"$T/zdn-linkem" up idle --subnet 31 --rate 1mbit --delay 300ms --stats-every 10s \
  --secs $((SECS + 20)) > "$work/link.out" &
wait_for "$work/link.out" ready
ip netns exec idle-a "$T/zdn" --home "$work/dc" node run --profile datacenter --no-mdns \
  --listen /ip4/10.201.31.1/tcp/4801 > "$work/dc.out" &
addr=$(listen_addr "$work/dc.out")
ip netns exec idle-b "$T/zdn" --home "$work/field" node run --profile field --no-mdns \
  --listen /ip4/10.201.31.2/tcp/4801 --peer "$addr" > "$work/field.out" &
sleep "$SECS"
python3 - "$work/link.out" "$SECS" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith('{"t"')]
start = next(r for r in rows if r["t"] >= 60)
end = rows[-1]
span = end["t"] - start["t"]
for d, name in (("a_to_b", "datacenter -> field"), ("b_to_a", "field -> datacenter")):
    b = end[d]["bytes_delivered"] - start[d]["bytes_delivered"]
    p = end[d]["delivered"] - start[d]["delivered"]
    print(f"{name}: {b} IP bytes in {p} packets over {span:.0f} s = {b * 86400 / span / 1e6:.3f} MB/day")
tot = sum(end[d]["bytes_delivered"] - start[d]["bytes_delivered"] for d in ("a_to_b", "b_to_a"))
print(f"both ways: {tot * 86400 / span / 1e6:.3f} MB/day (goal <= 2 MB/day)")
PY
