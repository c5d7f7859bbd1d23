#!/usr/bin/env bash
# The GPU proof of zdn's CUDA path: bit-exactness of the kernels against the CPU reference, the
# reconstruction bandwidth against a device-to-device copy, and a Llama-2-7B-shaped fine-tune switch,
# on a machine with an NVIDIA GPU and only its driver (libcuda.so): no CUDA toolkit, no Rust, no
# network there.
#
# 1. Build, on any machine that builds zdn (clang produces the PTX; no CUDA toolkit, no GPU):
#
#      scripts/gpu-check.sh --build
#
#    which runs
#      cargo build --release -p zdn-cuda --bin zdn-gpu-check
#      cargo build -p zdn --features cuda --bin zdn        # only for the CLI byte comparison
#    and puts both binaries, stripped, in target-gpu/ with the commit they were built from
#    (target-gpu/COMMIT; "+dirty" when the tree had changes). target-gpu/ is git-ignored: carry it
#    with the tree (it is a few tens of MiB).
#
# 2. Run, on the GPU machine, from the repository root:
#
#      scripts/gpu-check.sh [--device N] [--quick] [--skip-7b]
#
#    It runs target-gpu/zdn-gpu-check --zdn target-gpu/zdn (a few minutes at most; the 7B switch
#    needs ~30 GB of GPU memory and ~16 GB of host memory), prints the details and one summary, and
#    keeps the whole log in $OUT/gpu-check.log when $OUT is set, else target-gpu/gpu-check.log.
#    Exit status: 0 when every bit-exactness check passed, 1 otherwise; benchmark goals (bandwidth
#    ratio ≥ 0.7, 7B switch < 10 ms) are reported in the summary, not enforced.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=target-gpu

if [ "${1:-}" = "--build" ]; then
  mkdir -p "$dir"
  target=${CARGO_TARGET_DIR:-target}
  cargo build --release -p zdn-cuda --bin zdn-gpu-check
  cargo build -p zdn --features cuda --bin zdn
  strip -o "$dir/zdn-gpu-check" "$target/release/zdn-gpu-check"
  strip -o "$dir/zdn" "$target/debug/zdn"
  commit=$(git rev-parse HEAD 2>/dev/null || echo unknown)
  if [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; then commit="$commit+dirty"; fi
  echo "$commit" > "$dir/COMMIT"
  ls -l "$dir"
  echo "built from $commit; carry $dir/ to the GPU machine and run scripts/gpu-check.sh there"
  exit 0
fi

for b in zdn-gpu-check zdn; do
  if [ ! -x "$dir/$b" ]; then
    echo "gpu-check: $dir/$b is missing: build it first with scripts/gpu-check.sh --build" >&2
    exit 1
  fi
done
log=${OUT:+$OUT/gpu-check.log}
log=${log:-$dir/gpu-check.log}
set +e
{
  echo "commit: $(cat "$dir/COMMIT" 2>/dev/null || echo unknown)"
  echo "command: scripts/gpu-check.sh $*"
  echo "host: $(uname -srm), $(nproc) CPUs"
  if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.memory --format=csv,noheader || true
  fi
  "$dir/zdn-gpu-check" --zdn "$dir/zdn" "$@"
} 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
echo "log: $log"
exit "$status"
