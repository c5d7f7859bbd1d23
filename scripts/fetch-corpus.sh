#!/usr/bin/env bash
# Installs the English text used for quality numbers: the Lee corpus that ships as test data in the
# gensim package on PyPI (Lee, Pincombe & Welsh 2005: news articles, one per line).
#   lee.cor             50 documents (145 sentences by zdn's rule): the held-out evaluation text
#   lee_background.cor  300 other documents of the same kind: the calibration text
# Usage: fetch-corpus.sh DIR   → prints "heldout PATH" and "calibration PATH" lines.
# The wheel is fetched for a fixed platform (its test data is the same in every wheel) so any pip can
# do it; nothing is installed or imported. Idempotent: a second call with the same DIR downloads nothing.
set -euo pipefail
dir=${1:?usage: fetch-corpus.sh DIR}
mkdir -p "$dir"
held="$dir/lee.cor"
cal="$dir/lee_background.cor"
if [ ! -s "$held" ] || [ ! -s "$cal" ]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --platform manylinux2014_x86_64 --python-version 3.11 --implementation cp --abi cp311 \
    -d "$tmp" gensim==4.3.3 >&2
  python3 - "$tmp" "$dir" <<'PY'
import glob, sys, zipfile
tmp, out = sys.argv[1], sys.argv[2]
(whl,) = glob.glob(tmp + "/gensim-4.3.3-*.whl")
with zipfile.ZipFile(whl) as z:
    for name in ("lee.cor", "lee_background.cor"):
        with open(f"{out}/{name}", "wb") as f:
            f.write(z.read(f"gensim/test/test_data/{name}"))
PY
fi
check() {  # path sha256
  [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ] || { echo "fetch-corpus: sha256 mismatch for $1" >&2; exit 1; }
}
check "$held" a878f9a58f6743c32985c56c2f2f75988386216b38a4023a01fd3bcf7884d93e
check "$cal" 5d78d6dafd953bbf65797bef09a9ffb9ec430583381be705f8fd460000f370fb
echo "heldout $held"
echo "calibration $cal"
