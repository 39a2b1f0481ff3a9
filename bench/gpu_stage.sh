#!/usr/bin/env bash
# One staging call of the vLLM GPU check: copies the part that this call carries (.whl-vllm/part-K) to /tmp/stage
# on the GPU machine, where the next calls find it while the machine stays warm (30 s between calls).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p /tmp/stage && cp .whl-vllm/part-"$1"/* /tmp/stage/ && ls -la /tmp/stage
