"""The transformers backend's sampling, done as vLLM's sampler does it, so that both backends sample from one
distribution whatever their versions.

transformers and vLLM apply the same settings in different orders (transformers cuts top_p before min_p, vLLM
min_p first), and transformers releases before 5.2x count a prompt's left padding towards the repetition penalty
(with pad = EOS, a padded prompt's completions ran longer). Here one logits processor applies every setting, in
vLLM's order (repetition penalty over the prompt and the completion so far, temperature, min_p, top_k, top_p), and
`generate` is left with none of its own: it only draws from the result.
"""

from __future__ import annotations

from rsample.workers.common.config import SamplingConfig


def vllm_order_processor(sampling: SamplingConfig, prompt_starts):
    """A `LogitsProcessor` for `generate`; `prompt_starts`: each sequence's first real (not padding) position, one per
    row of `generate`'s input ids (prompts repeated `n` times)."""
    import torch
    from transformers import LogitsProcessor

    class VLLMOrderSampling(LogitsProcessor):
        def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
            scores = scores.float()
            if sampling.repetition_penalty != 1.0:  # on the tokens seen alone: a full-vocabulary pass per step costs 5x more
                real = torch.arange(input_ids.shape[1], device=input_ids.device)[None, :] >= prompt_starts[:, None]
                seen = torch.where(real, input_ids, input_ids[:, -1:])  # the padding stands for the last token, always a real one
                logits = scores.gather(1, seen)
                penalty = sampling.repetition_penalty
                scores = scores.scatter(1, seen, torch.where(logits > 0, logits / penalty, logits * penalty))
            if sampling.temperature != 1.0:
                scores = scores / sampling.temperature
            if sampling.min_p > 0:
                probabilities = scores.softmax(dim=-1)
                floor = sampling.min_p * probabilities.amax(dim=-1, keepdim=True)
                scores = scores.masked_fill(probabilities < floor, float("-inf"))
            if 0 < sampling.top_k < scores.shape[-1]:
                kth = scores.topk(sampling.top_k, dim=-1).values[:, -1:]
                scores = scores.masked_fill(scores < kth, float("-inf"))
            if sampling.top_p < 1.0:
                ascending, order = scores.sort(dim=-1)
                cut = ascending.softmax(dim=-1).cumsum(dim=-1) <= 1 - sampling.top_p
                cut[:, -1] = False  # the likeliest token always stays
                scores = scores.masked_fill(cut.scatter(1, order, cut), float("-inf"))
            return scores

    return VLLMOrderSampling()
