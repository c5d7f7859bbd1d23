#!/usr/bin/env bash
# Makes a real decoder LLM pair for tests and quality numbers, reproducibly, on the CPU: a small
# Llama-architecture base model pre-trained on Wikipedia text and a full chat fine-tune of it that adds
# two special tokens and a chat template (recipe: scripts/make_decoder_pair.py; docs/quality.md).
# Usage: make-decoder-pair.sh DIR   → prints "set NAME" (which recorded set of outputs this is, see
#   below), "base DIR/base", "finetuned DIR/finetuned", "heldout DIR/heldout.jsonl", "calibration
#   DIR/calibration.jsonl" and "reference DIR/decoder_reference.json" lines (the reference is what
#   the committed tests/vectors/decoder_reference*.json of that set holds).
# Needs python3.11 and PyPI: the pinned packages of decoder-pair-requirements.txt (≈ 6 GB: PyPI's torch
# for x86-64 Linux is the CUDA build) are installed into DIR/py and removed again once the pair is made
# (ZDN_KEEP_PYTHON=1 keeps them). About 12 minutes of CPU on one core, install included (much longer
# in wall time on a busy machine). Idempotent: a second call with the same DIR only checks the sha256
# of the outputs.
#
# Reproducibility: seeds are fixed, training runs on one thread with deterministic algorithms, and the
# CPU code paths are pinned to AVX2 (MKL_CBWR, ATEN_CPU_CAPABILITY). That gives the same bytes from
# run to run on one machine, but not across CPU makers: the same packages gave other weights on an AMD
# EPYC than on an Intel Xeon (the data files were the same). The sha256 of every output are recorded
# below once per CPU family they were made on (`expected_xeon`: Intel Xeon with AVX-512, two runs, one
# from an empty DIR; `expected_epyc`: AMD EPYC with AVX2, two runs); a run must give every output of
# one recorded set, and prints which ("set NAME"). Each set has its transformers reference committed
# (tests/vectors/decoder_reference.json for xeon, tests/vectors/decoder_reference-NAME.json for the
# others); tests compare against the one this pair was made as. If a fresh run matches no set: if you
# changed the recipe or the packages on purpose, record the new hashes printed above the failure
# here (replacing every set) and regenerate the committed references by copying
# DIR/decoder_reference.json; if you changed nothing, this CPU computes differently: record its set
# as a new one (`expected_NAME`, added to `sets`) with its reference, and say so in docs/quality.md.
set -euo pipefail
dir=${1:?usage: make-decoder-pair.sh DIR}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
# One maker at a time per DIR (tests call this from parallel threads and processes).
exec 9>"$dir/.lock"
flock 9

# The recorded sets, and for each the path (relative to DIR) and sha256 of every output.
sets=(xeon epyc)
expected_xeon=(
  base/config.json 95c5544e9fced137749bad4defeb3bd30565d9592a915d8103076769f0d0f0a1
  base/generation_config.json 9c4ff4c6a91d9913f1dbbaace548a154c29fa9241abe7555c36d8835219566d5
  base/model-00001-of-00003.safetensors a2877354841782d6cbd454c8ae5e703f5aeeec7fcf484fbe309190c8eeaa656e
  base/model-00002-of-00003.safetensors 4ce5c6907b8a6aa2c4f214d6ea12b7b37292b63960ce5cfb58e3533691cd9354
  base/model-00003-of-00003.safetensors 1df467c1902170908e44e6aab74a9456e9f941b4550187bc5aa6fae9a67fdb10
  base/model.safetensors.index.json 058674e134a4569f46266fc3ef05191d2158225305e75acfe3365740f5779677
  base/special_tokens_map.json 6e1a2aa52ae51d34303033502b72604a8b921349ab093c9fe6e6c56d90e1ae49
  base/tokenizer.json 3ac99074364a466c86e9a011d0ce6e37a90967a352cd56ec9121b0c103565b01
  base/tokenizer_config.json f10e92ee72ed13aa36df2403e66d9c86db8df15424ed22736f62ef1792737597
  finetuned/config.json c2a40d8bb59dcced001edff44d3e4c9640ec20f2f831362fc97ee6516107c535
  finetuned/generation_config.json 9c4ff4c6a91d9913f1dbbaace548a154c29fa9241abe7555c36d8835219566d5
  finetuned/model-00001-of-00005.safetensors 93b9cfcf97a035cb30aa78b03510c1d4904d84b0327203ba65a13e7ee57a5100
  finetuned/model-00002-of-00005.safetensors e8bf3e573a317fd27f337327d8386ae6558aad16a00e87b2a663134a1d99544d
  finetuned/model-00003-of-00005.safetensors 89c71dfd08495147af497ea4c8e8f4ee5257a9eda0c46103ba9dead2ccb6de29
  finetuned/model-00004-of-00005.safetensors 9601b24ed9ca133d9def51d918f2f618a16e8c91b84212043fbec94ec41fc817
  finetuned/model-00005-of-00005.safetensors 62cae1b0a1202fc83546711dafd9803d68e5986afb7c8a36985d39735233f10f
  finetuned/model.safetensors.index.json d63c75117d355e99c35cdb638c87067af0ade30269a72df287d08ec22a2452d9
  finetuned/special_tokens_map.json d81246cf8e9a66424cbb0294aba1bc9ac0186936b0c704fd884fab2258b4bd94
  finetuned/tokenizer.json e0e2ec55b4edb03e601675f0b1ff9d52dd4e941a2c1f37d8f1f1c6b7f8bfba41
  finetuned/tokenizer_config.json bd6e7fae340f8bff3f6496d6f59ae1f4cc509ff6900d9da7a6fb33fcd703657f
  pretrain.txt e550e02497382dc9de746109d3ff2f81b682645cb49678cfdfdb91069e4ef368
  finetune.jsonl 9b640e32c269bd88dac62062e3511b6485fe27d6f60a5d35e638838b15d5bd7c
  heldout.jsonl c4e2155ba1dd50445728133abff6776d8b873299f6e9bb9cf87a7bb6e64375d0
  calibration.jsonl 505e4cd13e32c3c197fb9cd86e135ec5993ffa1dc7c6a8821bee11d7352a08fb
  decoder_reference.json 60cc319567cfe398a1a7c5f6d0596873aacf132491c0f4312fd883e82321a071
)
expected_epyc=(
  base/config.json 95c5544e9fced137749bad4defeb3bd30565d9592a915d8103076769f0d0f0a1
  base/generation_config.json 9c4ff4c6a91d9913f1dbbaace548a154c29fa9241abe7555c36d8835219566d5
  base/model-00001-of-00003.safetensors b384fa3bb8e7cbccc3f661625609d60dfcfd890d6a311ebe5cc136cc46950354
  base/model-00002-of-00003.safetensors c93e602dd7a40d2ea0c9d18f58c96f9b9a51b8d62370d13c16ad4ab6a0f8d495
  base/model-00003-of-00003.safetensors 4cccde2ec648bd0ecde081432e33bcdda96fc215ed6ce22cb6c121e7d863f02c
  base/model.safetensors.index.json 058674e134a4569f46266fc3ef05191d2158225305e75acfe3365740f5779677
  base/special_tokens_map.json 6e1a2aa52ae51d34303033502b72604a8b921349ab093c9fe6e6c56d90e1ae49
  base/tokenizer.json 3ac99074364a466c86e9a011d0ce6e37a90967a352cd56ec9121b0c103565b01
  base/tokenizer_config.json f10e92ee72ed13aa36df2403e66d9c86db8df15424ed22736f62ef1792737597
  finetuned/config.json c2a40d8bb59dcced001edff44d3e4c9640ec20f2f831362fc97ee6516107c535
  finetuned/generation_config.json 9c4ff4c6a91d9913f1dbbaace548a154c29fa9241abe7555c36d8835219566d5
  finetuned/model-00001-of-00005.safetensors b1289595730a734a105ab18280f46f8702046c212967babbc2cfc4df1eb09041
  finetuned/model-00002-of-00005.safetensors 79710fba09d407f2faf0b54c54f86188df4cd8ed804d4eb11d5e7b5ec752be37
  finetuned/model-00003-of-00005.safetensors 83373b326a671fd9e0032ee2a0be7a2a5bd834650b1c969d4662cd63b353607f
  finetuned/model-00004-of-00005.safetensors 8d501186a85ff7bc0ae33234936021103afddb14aac706cbf654156691a74af2
  finetuned/model-00005-of-00005.safetensors d533275e63731bccfa755b4ed79c5ed14de395098af490ffef5faac6081fd4ec
  finetuned/model.safetensors.index.json d63c75117d355e99c35cdb638c87067af0ade30269a72df287d08ec22a2452d9
  finetuned/special_tokens_map.json d81246cf8e9a66424cbb0294aba1bc9ac0186936b0c704fd884fab2258b4bd94
  finetuned/tokenizer.json e0e2ec55b4edb03e601675f0b1ff9d52dd4e941a2c1f37d8f1f1c6b7f8bfba41
  finetuned/tokenizer_config.json bd6e7fae340f8bff3f6496d6f59ae1f4cc509ff6900d9da7a6fb33fcd703657f
  pretrain.txt e550e02497382dc9de746109d3ff2f81b682645cb49678cfdfdb91069e4ef368
  finetune.jsonl 9b640e32c269bd88dac62062e3511b6485fe27d6f60a5d35e638838b15d5bd7c
  heldout.jsonl c4e2155ba1dd50445728133abff6776d8b873299f6e9bb9cf87a7bb6e64375d0
  calibration.jsonl 505e4cd13e32c3c197fb9cd86e135ec5993ffa1dc7c6a8821bee11d7352a08fb
  decoder_reference.json 1552ba92dbbb6462cf08c116c2fa3109f3055f11b6fbfc869f6ba95f51a5a409
)

outputs() {
  (cd "$dir" && find base finetuned -type f | LC_ALL=C sort
   echo pretrain.txt; echo finetune.jsonl; echo heldout.jsonl; echo calibration.jsonl
   echo decoder_reference.json)
}

check() {  # fails unless every output of one recorded set exists with its sha256; sets $matched
  local name i ok
  for name in "${sets[@]}"; do
    local -n want="expected_$name"
    [ ${#want[@]} -gt 0 ] || continue
    ok=1
    for ((i = 0; i < ${#want[@]}; i += 2)); do
      if [ ! -f "$dir/${want[i]}" ] ||
        [ "$(sha256sum "$dir/${want[i]}" | cut -d' ' -f1)" != "${want[i + 1]}" ]; then
        ok=0
        break
      fi
    done
    if [ $ok = 1 ]; then
      matched=$name
      return 0
    fi
  done
  return 1
}

print_paths() {
  echo "set $matched"
  echo "base $dir/base"
  echo "finetuned $dir/finetuned"
  echo "heldout $dir/heldout.jsonl"
  echo "calibration $dir/calibration.jsonl"
  echo "reference $dir/decoder_reference.json"
}

if [ -f "$dir/pair.done" ] && check; then
  print_paths
  exit 0
fi

start=$(date +%s)
if ! python3 -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
  echo "make-decoder-pair: needs CPython 3.11 as python3 (the pinned wheels are cp311); found $(python3 --version 2>&1)" >&2
  exit 1
fi
py="$dir/py"
if [ ! -f "$py/.installed" ]; then
  rm -rf "$py"
  python3 -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
    --no-deps --only-binary=:all: --require-hashes --target "$py" \
    -r "$here/decoder-pair-requirements.txt" >&2
  touch "$py/.installed"
fi
src="$dir/src"
mkdir -p "$src"
fetch() {  # wheel-file-prefix sha256 pip-args…
  local prefix=$1 sum=$2
  shift 2
  if ! ls "$src/$prefix"*.whl >/dev/null 2>&1; then
    python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
      -d "$src" "$@" >&2
  fi
  [ "$(sha256sum "$src/$prefix"*.whl | cut -d' ' -f1)" = "$sum" ] ||
    { echo "make-decoder-pair: sha256 mismatch for $src/$prefix*.whl" >&2; exit 1; }
}
# Corpus A: Wikipedia articles in gensim's test data; corpus B: chatterbot-corpus's English dialogs.
fetch gensim-4.3.3- d662bf96e3d741b6ab61a54be842a7cbf5e45193008b2f4225c758cafd7f9cdc \
  --platform manylinux2014_x86_64 --python-version 3.11 --implementation cp --abi cp311 gensim==4.3.3
fetch chatterbot_corpus-1.3.3- 86de5300afb9a80826386339d3bec79c0a72eb0358abb8327e2ecef5ae0ce154 \
  chatterbot-corpus==1.3.3

rm -rf "$dir/base" "$dir/finetuned" "$dir/pair.done"
PYTHONPATH="$py" PYTHONHASHSEED=0 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 RAYON_NUM_THREADS=1 \
  TOKENIZERS_PARALLELISM=false MKL_CBWR=AVX2 ATEN_CPU_CAPABILITY=avx2 \
  HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error PYTHONWARNINGS=ignore \
  python3 "$here/make_decoder_pair.py" "$src" "$dir" >&2

echo "make-decoder-pair: made in $(($(date +%s) - start)) s; sha256 of the outputs:" >&2
while read -r f; do
  echo "  $f $(sha256sum "$dir/$f" | cut -d' ' -f1)" >&2
done < <(outputs)
if ! check; then
  echo "make-decoder-pair: the outputs match none of the sets of sha256 recorded in $0 (${sets[*]}); see its header for what to do" >&2
  exit 1
fi
echo "make-decoder-pair: the outputs are recorded set $matched" >&2
[ "${ZDN_KEEP_PYTHON:-0}" = 1 ] || rm -rf "$py"
touch "$dir/pair.done"
print_paths
