#!/usr/bin/env bash
# The GPU check as one command, on a GPU machine without network, from the repository's root with .whl/ beside it
# (bench/gpu_wheels.sh fills it): installs the wheels into a private folder, links this tree's packages in as
# `rsample` (no build step, and never a stale copy), then runs the check.
# Arguments go to bench/gpu_check.py (--out FILE also writes the figures as JSON).
set -euo pipefail
cd "$(dirname "$0")/.."
site=${RSAMPLE_CHECK_SITE:-/tmp/rsample-site}
python3 -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$site" .whl/*.whl
mkdir -p "$site/rsample"
ln -sfn "$PWD/workers" "$site/rsample/workers"
ln -sfn "$PWD/producer" "$site/rsample/producer"
export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'
exec python3 bench/gpu_check.py "$@"
