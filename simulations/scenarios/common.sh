# Shared by the scenario scripts (sourced). Needs $work set to the scenario's scratch directory.

# wait_for FILE PREFIX: until FILE has a line starting with PREFIX; fails after 60 s so a node
# that did not start stops the scenario instead of hanging it.
wait_for() {
  local i
  for i in $(seq 300); do
    grep -q "^$2" "$1" 2>/dev/null && return 0
    sleep 0.2
  done
  echo "scenario: no '$2' line in $1 within 60 s:" >&2
  cat "$1" >&2
  return 1
}

# listen_addr FILE: the first address a `zdn node run` printed.
listen_addr() {
  wait_for "$1" listening && grep -m1 '^listening' "$1" | cut -d' ' -f2
}

# Stop every background job and remove the scratch directory on exit.
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT
