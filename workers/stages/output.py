"""Output rows in open-instruct's rejection-sampling shape."""

from __future__ import annotations

from typing import Any

from rsample.workers.common.messages import GeneratedPrompt


def _by_model(model_names: tuple[str, ...], scores_by_model: list[list[float]], candidate: int) -> dict[str, float]:
    return {name: scores[candidate] for name, scores in zip(model_names, scores_by_model)}


def pair_row(prompt: GeneratedPrompt, chosen_index: int, rejected_index: int, scores_by_model: list[list[float | None]],
             model_names: tuple[str, ...]) -> dict[str, Any]:
    """`chosen_index`, `rejected_index` index `prompt.candidates`."""
    messages = prompt.prompt.messages
    chosen = prompt.candidates[chosen_index]
    rejected = prompt.candidates[rejected_index]
    reference_index = next((i for i, c in enumerate(prompt.candidates) if c.is_reference), None)
    return {
        "prompt_id": prompt.prompt.prompt_id,
        "messages": messages,
        "chosen": [*messages, {"role": "assistant", "content": chosen.text}],
        "rejected": [*messages, {"role": "assistant", "content": rejected.text}],
        "chosen_score": _by_model(model_names, scores_by_model, chosen_index),
        "rejected_score": _by_model(model_names, scores_by_model, rejected_index),
        "reference_completion": prompt.prompt.reference_completion,
        "reference_completion_score": (
            _by_model(model_names, scores_by_model, reference_index) if reference_index is not None else None
        ),
        "num_candidates": prompt.num_candidates,
        "num_unique": len(prompt.candidates),
    }


def sft_row(prompt: GeneratedPrompt, best_index: int, scores_by_model: list[list[float | None]],
            model_names: tuple[str, ...]) -> dict[str, Any]:
    """One supervised fine-tuning example: the prompt and its best candidate, in the `messages` shape trainers read."""
    best = prompt.candidates[best_index]
    return {
        "prompt_id": prompt.prompt.prompt_id,
        "messages": [*prompt.prompt.messages, {"role": "assistant", "content": best.text}],
        "score": _by_model(model_names, scores_by_model, best_index),
        "is_reference": best.is_reference,
        "num_candidates": prompt.num_candidates,
        "num_unique": len(prompt.candidates),
    }


def score_rows(prompt: GeneratedPrompt, scores_by_model: list[list[float]], model_names: tuple[str, ...]) -> list[dict[str, Any]]:
    return [
        {
            "prompt_id": prompt.prompt.prompt_id,
            "completion_index": candidate.completion_indices[0],
            "completion": candidate.text,
            "scores": _by_model(model_names, scores_by_model, index),
            "is_reference": candidate.is_reference,
            "finish_reason": candidate.finish_reason,
            "num_tokens": candidate.num_tokens,
        }
        for index, candidate in enumerate(prompt.candidates)
    ]
