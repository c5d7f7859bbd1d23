#!/usr/bin/env bash
# Does a seeding node keep serving its peers while it verifies and commits a large object it has
# just fetched? Real processes over loopback: node T holds a large bf16 object B; node S holds a
# small object A and fetches B from T (through its running node: transfer, then verify and commit
# on its store); meanwhile a prober fetches A from S again and again, each time into a fresh home
# (a new process, a new store, a new connection), and records how long each fetch took.
#
# Usage: seeder-stall-bench.sh ZDN [SIZE_MIB] [OUT_DIR]   (SIZE_MIB of B, default 4096)
# Prints the probes' times before, during (its transfer; its verify and commit, told apart by
# loopback's byte counter) and after S's fetch of B, and the ratios of the slowest probes to the
# median before it. Needs python3 with numpy, and SIZE_MIB × 3 of disk.
set -euo pipefail
zdn=$(realpath "${1:?usage: seeder-stall-bench.sh ZDN [SIZE_MIB] [OUT_DIR]}")
mib=${2:-4096}
out=${3:-$(mktemp -d)}
mkdir -p "$out"
rm -f "$out/probes.txt" "$out/loopback.txt"
work=$(mktemp -d)
pids=()
cleanup() {
  touch "$work/stop"
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# One bf16 tensor of N MiB (normal values, as trained weights: the planes codec's work) or of 1 MiB.
python3 - "$work" "$mib" <<'PY'
import json, struct, sys
import numpy as np
work, mib = sys.argv[1], int(sys.argv[2])
rng = np.random.default_rng(7)
for name, size in (("big", mib << 20), ("small", 1 << 20)):
    n = size // 2
    hdr = json.dumps({"w": {"dtype": "BF16", "shape": [n], "data_offsets": [0, 2 * n]}}).encode()
    hdr += b" " * (-len(hdr) % 8)
    with open(f"{work}/{name}.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(hdr)) + hdr)
        left = n
        while left:
            k = min(left, 1 << 24)
            x = (rng.standard_normal(k, dtype=np.float32) * 0.02).view(np.uint32)
            f.write((x >> 16).astype("<u2").tobytes())
            left -= k
PY
"$zdn" --home "$work/t" add "$work/big.safetensors" --name big >/dev/null
"$zdn" --home "$work/s" add "$work/small.safetensors" --name small >/dev/null
rm "$work/big.safetensors" "$work/small.safetensors"
big=$("$zdn" --home "$work/t" ls --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["hash"])')
small=$("$zdn" --home "$work/s" ls --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["hash"])')
tkey=$("$zdn" --home "$work/t" key show)
skey=$("$zdn" --home "$work/s" key show)

# The two nodes, each on a free loopback port; their addresses from their "listening" lines (set
# in `addr`: not in a subshell, so that their process ids stay in `pids` for the cleanup).
start_node() { # HOME LOG ARGS...
  local home=$1 log=$2
  shift 2
  "$zdn" --home "$home" node run --listen /ip4/127.0.0.1/tcp/0 --no-mdns --no-dht "$@" >"$log" 2>&1 &
  pids+=($!)
  for _ in $(seq 1 100); do
    if grep -q '^listening ' "$log"; then
      addr="$(awk '/^listening /{print $2; exit}' "$log")/p2p/$(awk '/^peer /{print $2; exit}' "$log")"
      return
    fi
    sleep 0.1
  done
  echo "node of $home did not start: $(cat "$log")" >&2
  exit 1
}
start_node "$work/t" "$out/t.log"
taddr=$addr
start_node "$work/s" "$out/s.log" --trust "$tkey"
saddr=$addr

# The prober: a fresh home per fetch of A from S; one line per probe: start, seconds, exit status.
(
  i=0
  while [ ! -e "$work/stop" ]; do
    i=$((i + 1))
    t0=$(date +%s.%N)
    rc=0
    timeout 60 "$zdn" --home "$work/p$i" fetch "$small" --peer "$saddr" --trust "$skey" --no-dht --no-mdns --json >"$work/probe.json" 2>&1 || rc=$?
    t1=$(date +%s.%N)
    echo "$t0 $(echo "$t1 - $t0" | bc) $rc" >>"$out/probes.txt"
    [ "$i" = 1 ] && cp "$work/probe.json" "$out/first-probe.json"
    rm -rf "$work/p$i"
    sleep 0.2
  done
) &
pids+=($!)

# Loopback's received bytes every 0.1 s: where the transfer of B ends and S's verify and commit
# begin (a probe moves under 1 MB; B's transfer moves tens of MB per 0.1 s).
(
  while [ ! -e "$work/stop" ]; do
    echo "$(date +%s.%N) $(awk '$1 == "lo:" {print $2}' /proc/net/dev)" >>"$out/loopback.txt"
    sleep 0.1
  done
) &
pids+=($!)

sleep 15
echo "fetch_start $(date +%s.%N)" >"$out/phases.txt"
"$zdn" --home "$work/s" fetch "$big" --peer "$taddr" --json >"$out/fetch.json"
echo "fetch_end $(date +%s.%N)" >>"$out/phases.txt"
sleep 15
touch "$work/stop"
sleep 3

python3 - "$out" "$mib" <<'PY'
import statistics, sys
out, mib = sys.argv[1], sys.argv[2]
ph = dict(l.split() for l in open(f"{out}/phases.txt"))
a, b = float(ph["fetch_start"]), float(ph["fetch_end"])
probes = [tuple(map(float, l.split())) for l in open(f"{out}/probes.txt")]
def part(name, sel):
    xs = [p for p in probes if sel(p)]
    secs = [p[1] for p in xs]
    failed = sum(1 for p in xs if p[2] != 0)
    if secs:
        print(f"{name:<16} probes {len(xs):>4}  failed {failed}  median {statistics.median(secs):.3f} s  max {max(secs):.3f} s")
    else:
        print(f"{name:<16} probes    0")
    return secs
lo = [tuple(map(float, l.split())) for l in open(f"{out}/loopback.txt")]
# The transfer's end: the last 0.1 s step (within the fetch) that moved over 5 MB.
busy = [t1 for (t0, b0), (t1, b1) in zip(lo, lo[1:]) if a <= t1 <= b and b1 - b0 > 5e6]
c = max(busy) if busy else a
before = part("before", lambda p: p[0] + p[1] < a)
during = part("during", lambda p: p[0] < b and p[0] + p[1] > a)
part("  transfer", lambda p: p[0] < c and p[0] + p[1] > a)
commit = part("  verify+commit", lambda p: p[0] >= c and p[0] + p[1] <= b)
after = part("after", lambda p: p[0] > b)
print(f"object B {mib} MiB fetched by S in {b - a:.1f} s: transfer {c - a:.1f} s, then verify and commit {b - c:.1f} s")
print(f"slowest probe during ÷ median before: {max(during) / statistics.median(before):.2f}")
if commit:
    print(f"slowest probe during verify+commit ÷ median before: {max(commit) / statistics.median(before):.2f}")
PY
