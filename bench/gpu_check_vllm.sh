#!/usr/bin/env bash
# The vLLM part of the GPU check, the last call after `bash bench/gpu_stage.sh 1` ... `5` (carry .whl, .whl-vllm/deps
# and .whl-vllm/part-6): joins the vLLM wheel, installs everything into a private folder, builds Llama-3.2-1B-shaped
# random models, then measures (1) the pipeline against raw LLM.generate, n=16, and (2) vLLM's pooling reward against
# the transformers reward on the same conversations; a failing step does not stop the next. --dry-run: tiny models,
# few prompts, where vLLM is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
shape=llama-3.2-1b; prompts=256; n=16; tokens=256; reward_prompts=256; dtype=bfloat16
if [ "${1:-}" = "--dry-run" ]; then
  shape=tiny; prompts=16; n=4; tokens=16; reward_prompts=8; dtype=float32
else
  site=${RSAMPLE_CHECK_SITE:-/tmp/rsample-site}
  cp .whl-vllm/part-6/* /tmp/stage/
  wheel=$(cat .whl-vllm/deps/VLLM_WHEEL_NAME)
  cat /tmp/stage/"$wheel".part-* > /tmp/stage/"$wheel"
  python3 -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
    .whl/*.whl .whl-vllm/deps/*.whl /tmp/stage/"$wheel"
  mkdir -p "$site/rsample"
  ln -sfn "$PWD/workers" "$site/rsample/workers"
  ln -sfn "$PWD/producer" "$site/rsample/producer"
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1 VLLM_USE_FLASHINFER_SAMPLER=0 HF_HUB_OFFLINE=1 VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-1}
python3 -c 'import torch, vllm; print("vllm", vllm.__version__, "torch", torch.__version__)' || true
models=$(mktemp -d)
cd bench
python3 shaped_models.py "$models" --shape "$shape"
failed=0
python3 pipeline_overhead.py --backend vllm --policy "$models/policy" --prompts "$prompts" --n "$n" \
  --max-new-tokens "$tokens" --batch-size 64 --dtype "$dtype" --repeats 1 || failed=1
python3 vllm_reward_check.py --reward "$models/reward" --prompts "$reward_prompts" --n 8 --dtype "$dtype" || failed=1
rm -rf "$models"
exit "$failed"
