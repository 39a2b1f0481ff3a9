"""vLLM's pooling reward against the transformers reward on the same conversations: do they agree, and how fast is each.

    python bench/vllm_reward_check.py --reward DIR     # e.g. a folder from `python bench/shaped_models.py DIR`

Conversations of spread-out lengths (prompts of 8 to --max-words words, echoed back as completions, each of the
n a few words longer than the last, so that every tokenizer sees n different candidates). Each backend is loaded once, warmed up on a few conversations, then timed scoring all of them; the
transformers scores are the reference for the agreement figures (same best, same worst, pair order).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from harness import agreement
from reward_throughput import write_prompts

from rsample.workers.backends.tiny_models import WORDS
from rsample.workers.common.config import ModelSettings


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reward", required=True, help="a sequence-classification reward model folder")
    parser.add_argument("--prompts", type=int, default=256)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--max-words", type=int, default=300)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.4, help="the vLLM engine's share (the transformers model sits beside it)")
    parser.add_argument("--enforce-eager", action="store_true", help="vLLM: no torch.compile, no CUDA graphs")
    parser.add_argument("--out", type=Path)
    return parser.parse_args(argv)


def timed_scores(model, flat: list) -> tuple[list[float | None], float]:
    model.score(flat[:8])  # warm-up: first kernels, allocator
    started = time.perf_counter()
    scores = model.score(flat)
    return scores, time.perf_counter() - started


def main(argv=None) -> None:
    args = parse_args(argv)
    from rsample.workers.backends.models import load_tokenizer
    from rsample.workers.backends.templates import render_conversations
    from rsample.workers.backends.transformers_reward import TransformersRewardModel
    from rsample.workers.backends.vllm_reward import VLLMRewardModel

    with tempfile.TemporaryDirectory() as tmp:
        prompts = [json.loads(line)["prompt"] for line in write_prompts(Path(tmp) / "prompts.jsonl", args.prompts, args.max_words).open()]
    flat = [[{"role": "user", "content": prompt}, {"role": "assistant", "content": f"{prompt} {' '.join(WORDS[:k + 1])}"}]
            for prompt in prompts for k in range(args.n)]
    tokens = sum(len(ids) for ids in render_conversations(load_tokenizer(args.reward, "reward"), flat))
    reference, transformers_seconds = timed_scores(TransformersRewardModel(args.reward, args.dtype), flat)
    engine = VLLMRewardModel(args.reward, ModelSettings(dtype=args.dtype, gpu_memory_utilization=args.gpu_memory_utilization,
                                                         enforce_eager=args.enforce_eager))
    try:
        scores, vllm_seconds = timed_scores(engine, flat)
    finally:
        engine.close()
    figures = {"conversations": len(flat), "tokens": tokens,
               "transformers_tokens_per_s": round(tokens / transformers_seconds, 1), "vllm_tokens_per_s": round(tokens / vllm_seconds, 1),
               **agreement(scores, reference, [args.n] * args.prompts)}
    print(f"reward {args.reward}: {len(flat)} conversations, {tokens} tokens")
    print(f"{'backend':<14}{'seconds':>10}{'tokens/s':>12}")
    print(f"{'transformers':<14}{transformers_seconds:>10.2f}{tokens / transformers_seconds:>12.0f}")
    print(f"{'vLLM pooling':<14}{vllm_seconds:>10.2f}{tokens / vllm_seconds:>12.0f}")
    print(f"vLLM vs transformers: pearson {figures['pearson']:.4f}, max |diff| {figures['max_abs_diff']:.4f} (std "
          f"{figures['reference_std']:.4f}), same best {figures['same_best']}/{args.prompts}, same worst "
          f"{figures['same_worst']}/{args.prompts}, pair order agrees {figures['pair_order_agreement']:.3f}")
    print(json.dumps(figures))
    if args.out:
        args.out.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    sys.exit(main())
