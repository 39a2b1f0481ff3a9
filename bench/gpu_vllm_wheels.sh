#!/usr/bin/env bash
# Run here (with network), for the vLLM part of the GPU check: vLLM 0.26.0 (built for the GPU machine's torch
# 2.11 and CUDA 13) and the packages that machine lacks to import its offline engine (the set measured in
# ../shared/NOTES.md; versions that vLLM pins are pinned), into .whl-vllm/ (ignored by git).
# The vLLM wheel (290 MiB) travels in parts of 55 MiB, one per device call (64 MiB at most each):
#   .whl-vllm/part-1 ... part-5   staged by `bash bench/gpu_stage.sh K` in five calls, back to back
#   .whl-vllm/part-6 + deps       carried by the last call, `bash bench/gpu_check_vllm.sh`, which joins and installs
set -euo pipefail
cd "$(dirname "$0")/.."
out=.whl-vllm
rm -rf "$out" && mkdir -p "$out/full" "$out/deps"
download() {
  python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_31_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64 -d "$@"
}
download "$out/full" vllm==0.26.0
download "$out/deps" pydantic==2.14.4 pydantic-core==2.50.5 annotated-types typing-inspection cbor2 msgspec pyzmq \
  openai==3.57.0 httpx2 sniffio openai-harmony pybase64 cachetools 'llguidance>=1.7,<1.8' 'xgrammar>=0.2.1,<0.2.8' \
  apache-tvm-ffi==0.1.10 'fastapi>=0.133,<0.137' 'starlette>=1.0.1' partial-json-parser blake3
wheel=$(basename "$out"/full/vllm-*.whl)
echo "$wheel" > "$out/deps/VLLM_WHEEL_NAME"
(cd "$out/full" && split -b 55M -d -a 1 "$wheel" "$wheel.part-")
for part in "$out"/full/*.part-*; do
  number=$(( ${part##*-} + 1 ))
  mkdir -p "$out/part-$number" && mv "$part" "$out/part-$number/"
done
rm -rf "$out/full"
du -sh "$out"/*
