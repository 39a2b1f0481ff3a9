"""Merging identical completions before scoring: a reward model never scores the same text twice for one prompt."""

from __future__ import annotations

from rsample.workers.backends.base import PromptCompletions
from rsample.workers.common.messages import Candidate, GeneratedPrompt, PromptRecord


def merge_candidates(record: PromptRecord, result: PromptCompletions, include_reference: bool) -> GeneratedPrompt:
    """Identical texts become one candidate that remembers every completion index it stands for. Texts are compared
    stripped, so one sample may have ended a text that another was cut in (at `--max-new-tokens`, on a space): the
    candidate is then one the policy ended, and may be chosen."""
    if result.skip_reason is not None:
        return GeneratedPrompt(record, [], 0, result.skip_reason)
    by_text: dict[str, dict] = {}
    for index, completion in enumerate(result.completions):
        entry = by_text.setdefault(
            completion.text,
            {"text": completion.text, "completion_indices": [], "num_tokens": completion.num_tokens, "finish_reason": completion.finish_reason},
        )
        entry["completion_indices"].append(index)
        if entry["finish_reason"] == "length" and completion.finish_reason == "stop":  # a sample that ended it: complete
            entry.update(num_tokens=completion.num_tokens, finish_reason="stop")
    total = len(result.completions)
    if include_reference and record.reference_completion is not None:
        text = record.reference_completion.strip()
        entry = by_text.setdefault(text, {"text": text, "completion_indices": [], "num_tokens": 0, "finish_reason": "reference"})
        entry["completion_indices"].append(total)
        entry["is_reference"] = True
        total += 1
    return GeneratedPrompt(record, [Candidate(**entry) for entry in by_text.values()], total)
