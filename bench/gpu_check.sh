#!/usr/bin/env bash
# The GPU check as one command, on a GPU machine without network, from the repository's root with .whl/ beside it
# (bench/gpu_wheels.sh fills it). Arguments go to bench/gpu_check.py (--out FILE also writes the figures as JSON).
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/gpu_site.sh
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'
exec python3 bench/gpu_check.py "$@"
