"""Merging identical completions before scoring: a reward model never scores the same text twice for one prompt."""

from __future__ import annotations

from rsample.workers.backends.base import PromptCompletions
from rsample.workers.common.messages import Candidate, GeneratedPrompt, PromptRecord


def merge_candidates(record: PromptRecord, result: PromptCompletions, include_reference: bool) -> GeneratedPrompt:
    """Identical texts (and thinking, for a harmony policy) become one candidate that remembers every completion index
    it stands for. Texts are compared stripped, so one sample may have ended a text that another was cut in (at
    `--max-new-tokens`, on a space): the candidate is then one the policy ended, and may be chosen."""
    if result.skip_reason is not None:
        return GeneratedPrompt(record, [], 0, result.skip_reason)
    by_text: dict[tuple[str, str | None], dict] = {}
    for index, completion in enumerate(result.completions):
        entry = by_text.setdefault(
            (completion.text, completion.reasoning),
            {"text": completion.text, "completion_indices": [], "num_tokens": completion.num_tokens, "finish_reason": completion.finish_reason,
             "reasoning": completion.reasoning},
        )
        entry["completion_indices"].append(index)
        if entry["finish_reason"] == "length" and completion.finish_reason == "stop":  # a sample that ended it: complete
            entry.update(num_tokens=completion.num_tokens, finish_reason="stop")
    total = len(result.completions)
    if include_reference and record.reference_completion is not None:
        text = record.reference_completion.strip()
        # Beside a harmony policy's candidates the reference has no thinking, said as an empty one: gpt-oss's template
        # renders `thinking` whenever the key is there, and `datasets` gives a missing key as None, which it cannot render.
        reasoning = "" if any(completion.reasoning is not None for completion in result.completions) else None
        entry = by_text.setdefault((text, reasoning), {"text": text, "completion_indices": [], "num_tokens": 0, "finish_reason": "reference",
                                                       "reasoning": reasoning})
        entry["completion_indices"].append(total)
        entry["is_reference"] = True
        total += 1
    return GeneratedPrompt(record, [Candidate(**entry) for entry in by_text.values()], total)
