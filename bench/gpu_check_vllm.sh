#!/usr/bin/env bash
# The vLLM part of the GPU check, the last call after `bash bench/gpu_stage.sh 1` ... `5` (carry .whl, .whl-vllm/deps
# and .whl-vllm/part-6): joins the vLLM wheel, installs everything into a private folder, builds Llama-3.2-1B-shaped
# random models, then measures, each step under its own time limit so that a stuck one leaves time to the next:
#   1. the pipeline against raw LLM.generate, n=16, with --enforce-eager (an engine that starts in seconds) and
#      vLLM's V1 model runner: on 2026-11-26 (H200, vLLM 0.26) raw LLM.generate with the default runner for dense
#      models (the "V2" runner) printed nothing for 140 s after the engine started, where vLLM pooling (V1 runner) ran
#   2. the same with the default runner, on fewer prompts, the pipeline first (its workers' logs show whether rsample's
#      own engine loop gets through), then side (a) with its progress bar; every process's thread stacks go to its
#      log after 60 s (GPU_CHECK_STACKS_AFTER), vLLM's engine core included
#   3. vLLM's pooling reward against the transformers reward on the same conversations (agreement, tokens/s)
#   4. step 1 again with torch.compile and CUDA graphs (vLLM's default on a GPU), in the time left
# Every process's log lands in $OUT (the device tool brings it back) or in the folder printed at the end.
# --dry-run: tiny models, few prompts, where vLLM is installed (a CPU: step 3 is skipped, vLLM is eager there anyway).
set -uo pipefail
cd "$(dirname "$0")/.."
shape=llama-3.2-1b; prompts=256; n=16; tokens=256; reward_prompts=256; dtype=bfloat16; budget=${GPU_CHECK_BUDGET:-560}
if [ "${1:-}" = "--dry-run" ]; then
  shape=tiny; prompts=16; n=4; tokens=16; reward_prompts=8; dtype=float32; budget=0
else
  set -e
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
  set +e
fi
export PYTHONUNBUFFERED=1 VLLM_USE_FLASHINFER_SAMPLER=0 HF_HUB_OFFLINE=1 VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-1}
python3 -c 'import torch, vllm; print("vllm", vllm.__version__, "torch", torch.__version__)'
work=$(mktemp -d)
logs=${OUT:-$work/logs}
mkdir -p "$logs"
failed=0
step() {  # step NAME SECONDS COMMAND...: runs COMMAND for at most SECONDS; a failure is counted, not fatal
  local name=$1 limit=$2; shift 2
  echo "== $name (at most ${limit} s)"
  timeout "$limit" "$@" || { echo "== $name: failed or ran past ${limit} s"; failed=1; }
}
cd bench
python3 shaped_models.py "$work/models" --shape "$shape" || exit 1
pipeline=(python3 pipeline_overhead.py --backend vllm --policy "$work/models/policy" --prompts "$prompts" --n "$n"
          --max-new-tokens "$tokens" --batch-size 64 --dtype "$dtype" --repeats 1)
# RSAMPLE_BENCH_STACKS_AFTER: that many seconds into a step, every process of it (workers, vLLM's engine cores)
# writes its threads' stacks to its log, and again every minute: a step that hangs shows where (bench/hang_stacks.py)
VLLM_USE_V2_MODEL_RUNNER=0 RSAMPLE_BENCH_STACKS_AFTER=170 step "pipeline, eager, V1 runner" 200 "${pipeline[@]}" \
  --enforce-eager --workdir "$work/eager-v1"
RSAMPLE_BENCH_STACKS_AFTER=${GPU_CHECK_STACKS_AFTER:-60} step "pipeline, eager, default runner" 120 "${pipeline[@]}" \
  --prompts $(( prompts / 4 )) --enforce-eager --pipeline-first --workdir "$work/eager-default"
if [ "${GPU_CHECK_REWARD:-1}" = 1 ]; then
  step "reward, eager" 150 python3 vllm_reward_check.py --reward "$work/models/reward" --prompts "$reward_prompts" --n 8 \
    --dtype "$dtype" --enforce-eager
fi
left=$(( budget - SECONDS ))
if [ "$budget" -gt 0 ] && [ "$left" -gt 60 ]; then
  VLLM_USE_V2_MODEL_RUNNER=0 RSAMPLE_BENCH_STACKS_AFTER=$(( left - 30 )) step "pipeline, compiled, V1 runner" "$left" \
    "${pipeline[@]}" --workdir "$work/compiled"
fi
for log in $( (find "$work" -name 'direct-*.log'; find "$work" -name '*.log' -not -name 'direct-*.log' -not -name redis.log) |
              grep -v "^$logs/" | head -7); do  # the device tool returns 8 files at most: side (a)'s logs first
  tail -c 300000 "$log" > "$logs/$(echo "${log#"$work"/}" | tr / _)"
done
echo "logs: $logs"
rm -rf "$work/models"
exit "$failed"
