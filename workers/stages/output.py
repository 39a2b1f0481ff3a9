"""Output rows in open-instruct's rejection-sampling shape, and their columns' types.

The types are declared (`columns`), not left to inference: a reader that infers them from a file's first block
(`datasets` reads 10 MB at a time) types a column that is null there (`reference_completion` of prompts without a
reference) as null, and then fails on the first block that has a value.
"""

from __future__ import annotations

from typing import Any

from rsample.workers.common.messages import GeneratedPrompt


def _by_model(model_names: tuple[str, ...], scores_by_model: list[list[float]], candidate: int) -> dict[str, float]:
    return {name: scores[candidate] for name, scores in zip(model_names, scores_by_model)}


def pair_row(prompt: GeneratedPrompt, chosen_index: int, rejected_index: int, scores_by_model: list[list[float | None]],
             model_names: tuple[str, ...]) -> dict[str, Any]:
    """`chosen_index`, `rejected_index` index `prompt.candidates`."""
    chosen = prompt.candidates[chosen_index]
    rejected = prompt.candidates[rejected_index]
    messages = prompt_turns(prompt, chosen.reasoning is not None)
    reference_index = next((i for i, c in enumerate(prompt.candidates) if c.is_reference), None)
    return {
        "prompt_id": prompt.prompt.prompt_id,
        "messages": messages,
        "chosen": [*messages, chosen.assistant_turn()],
        "rejected": [*messages, rejected.assistant_turn()],
        "chosen_score": _by_model(model_names, scores_by_model, chosen_index),
        "rejected_score": _by_model(model_names, scores_by_model, rejected_index),
        "reference_completion": prompt.prompt.reference_text,
        "reference_completion_score": (
            _by_model(model_names, scores_by_model, reference_index) if reference_index is not None else None
        ),
        "num_candidates": prompt.num_candidates,
        "num_unique": len(prompt.candidates),
        # `stop`, `length` (cut at --max-new-tokens) or `reference`: what a trainer cannot tell from the texts
        "chosen_finish_reason": chosen.finish_reason,
        "rejected_finish_reason": rejected.finish_reason,
    }


def prompt_turns(prompt: GeneratedPrompt, thinking: bool) -> list[dict]:
    """The prompt's turns; beside a harmony policy's answers, each earlier assistant turn with an empty `thinking`:
    a file whose assistant turns carry `thinking` is read with the field on every turn, None where a row lacks it, and
    gpt-oss's template (before transformers 5.24 dropped None keys) fails on an assistant turn whose `thinking` is None."""
    if not thinking:
        return prompt.prompt.messages
    return [{**turn, "thinking": ""} if turn.get("role") == "assistant" and "thinking" not in turn else turn for turn in prompt.prompt.messages]


def sft_row(prompt: GeneratedPrompt, best_index: int, scores_by_model: list[list[float | None]],
            model_names: tuple[str, ...]) -> dict[str, Any]:
    """One supervised fine-tuning example: the prompt and its best candidate, in the `messages` shape trainers read."""
    best = prompt.candidates[best_index]
    return {
        "prompt_id": prompt.prompt.prompt_id,
        "messages": [*prompt_turns(prompt, best.reasoning is not None), best.assistant_turn()],
        "score": _by_model(model_names, scores_by_model, best_index),
        "is_reference": best.is_reference,
        "num_candidates": prompt.num_candidates,
        "num_unique": len(prompt.candidates),
        # with --keep-truncated the best may be cut at --max-new-tokens, which a trainer would close as if it had ended
        "finish_reason": best.finish_reason,
        "num_tokens": best.num_tokens,
    }


def score_rows(prompt: GeneratedPrompt, scores_by_model: list[list[float]], model_names: tuple[str, ...]) -> list[dict[str, Any]]:
    return [
        {
            "prompt_id": prompt.prompt.prompt_id,
            "completion_index": candidate.completion_indices[0],
            "num_samples": prompt.samples_in(candidate),
            "completion": candidate.text,
            **({"thinking": candidate.reasoning} if candidate.reasoning is not None else {}),
            "scores": _by_model(model_names, scores_by_model, index),
            "is_reference": candidate.is_reference,
            "finish_reason": candidate.finish_reason,
            "num_tokens": candidate.num_tokens,
        }
        for index, candidate in enumerate(prompt.candidates)
    ]


_STRING, _INT, _FLOAT, _BOOL = ({"dtype": kind} for kind in ("string", "int64", "float64", "bool"))
_MESSAGES = {"list": [{"name": "role", **_STRING}, {"name": "content", **_STRING}]}
_MESSAGES_WITH_THINKING = {"list": [*_MESSAGES["list"], {"name": "thinking", **_STRING}]}


def columns(kind: str, model_names: tuple[str, ...], thinking: bool = False) -> dict[str, dict]:
    """The columns of the `kind` file ("pairs", "scores" or "sft") and their types, in the notation of a dataset card's
    `dataset_info.features` (the rows above, column for column). `thinking`: a harmony policy's run, whose assistant
    turns carry their thinking apart (`Candidate.assistant_turn`)."""
    scores = {"struct": [{"name": name, **_FLOAT} for name in model_names]}
    messages = _MESSAGES_WITH_THINKING if thinking else _MESSAGES
    if kind == "pairs":
        return {"prompt_id": _STRING, "messages": messages, "chosen": messages, "rejected": messages, "chosen_score": scores,
                "rejected_score": scores, "reference_completion": _STRING, "reference_completion_score": scores,
                "num_candidates": _INT, "num_unique": _INT, "chosen_finish_reason": _STRING, "rejected_finish_reason": _STRING}
    if kind == "sft":
        return {"prompt_id": _STRING, "messages": messages, "score": scores, "is_reference": _BOOL, "num_candidates": _INT,
                "num_unique": _INT, "finish_reason": _STRING, "num_tokens": _INT}
    if kind == "scores":
        return {"prompt_id": _STRING, "completion_index": _INT, "num_samples": _INT, "completion": _STRING, **({"thinking": _STRING} if thinking else {}),
                "scores": scores, "is_reference": _BOOL, "finish_reason": _STRING, "num_tokens": _INT}
    raise ValueError(f"no output file of kind {kind!r}")


def row_has_thinking(row: dict) -> bool:
    """Whether an output row (of any kind) is a harmony policy's, with the thinking apart from the answer."""
    last_turns = [row[column][-1] for column in ("chosen", "messages") if isinstance(row.get(column), list) and row[column]]
    return "thinking" in row or any(isinstance(turn, dict) and "thinking" in turn for turn in last_turns)


def features(kind: str, model_names: tuple[str, ...] | list[str], thinking: bool = False):
    """The `kind` file's columns as `datasets.Features`, for reading a local file with their types declared:
    `load_dataset("json", data_files="pairs.jsonl", features=features("pairs", ["org/rm"]))`."""
    from datasets import Features, List, Value

    def feature(declared: dict):
        if "dtype" in declared:
            return Value(declared["dtype"])
        if "list" in declared:
            return List({field["name"]: feature(field) for field in declared["list"]})
        return {field["name"]: feature(field) for field in declared["struct"]}

    return Features({name: feature(declared) for name, declared in columns(kind, tuple(model_names), thinking).items()})
