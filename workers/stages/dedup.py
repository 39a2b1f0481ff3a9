"""Merging identical completions before scoring: a reward model never scores the same answer twice for one prompt."""

from __future__ import annotations

from rsample.workers.backends.base import Completion, PromptCompletions
from rsample.workers.common.messages import Candidate, GeneratedPrompt, PromptRecord
from rsample.workers.common.reasoning import answer_part


def merge_candidates(record: PromptRecord, result: PromptCompletions, include_reference: bool,
                     reasoning_end: str | None = None) -> GeneratedPrompt:
    """Samples with the same answer (what the rewards read: a harmony policy's final channel, or the text after
    `reasoning_end`) become one candidate that remembers every completion index it stands for, the first being the
    sample whose text and thinking it keeps (see `_rank`). Samples that think differently towards one answer
    would otherwise be scored apart, differ by rounding alone, and make a pair of one answer against itself. The
    candidate holds a sample whose thinking ended, if one did: a sample whose thinking never ended is judged by its
    whole text, which another sample may have as its answer. A sample with an empty answer is merged only with the very
    same sample: it is never chosen, and each one counts.

    Texts are compared stripped, so one sample may have ended a text that another was cut in (at `--max-new-tokens`, on
    a space): the candidate is then one the policy ended, and may be chosen."""
    if result.skip_reason is not None:
        return GeneratedPrompt(record, [], 0, result.skip_reason)
    by_answer: dict[tuple, dict] = {}
    for index, completion in enumerate(result.completions):
        entry = by_answer.setdefault(_key(completion, reasoning_end), _entry(completion))
        entry["completion_indices"].append(index)
        if _rank(completion, reasoning_end) > _rank(Completion(entry["text"], 0, entry["finish_reason"], entry["reasoning"]), reasoning_end):
            entry.update({name: value for name, value in _entry(completion).items() if name != "completion_indices"})
            entry["completion_indices"].insert(0, entry["completion_indices"].pop())  # the sample it now holds comes first
    total = len(result.completions)
    if include_reference and record.reference_completion is not None:
        text = record.reference_completion.strip()
        # Beside a harmony policy's candidates the reference has its dataset's thinking, else an empty one: gpt-oss's
        # template renders `thinking` whenever the key is there, and `datasets` gives a missing key as None, which it cannot.
        harmony = any(completion.reasoning is not None for completion in result.completions)
        reference = Completion(text, 0, "reference", (record.reference_reasoning or "") if harmony else None)
        entry = by_answer.setdefault(_key(reference, reasoning_end), _entry(reference))
        entry["completion_indices"].append(total)
        entry["is_reference"] = True
        total += 1
    return GeneratedPrompt(record, [Candidate(**entry) for entry in by_answer.values()], total)


def _key(completion: Completion, reasoning_end: str | None) -> tuple:
    """What makes two samples one candidate: what the rewards read of them (a harmony policy's final channel; the text
    after `reasoning_end`, or the whole text where the thinking never ended). An empty answer is no answer: such
    samples are told apart by the whole sample, so that each counts."""
    answer = completion.text if completion.reasoning is not None else answer_part(completion.text, reasoning_end)
    return ("answer", answer) if answer else ("whole", completion.text, completion.reasoning)


def _rank(completion: Completion, reasoning_end: str | None) -> tuple[bool, bool]:
    """Which sample of one answer the candidate holds: one whose thinking ended (only such may be chosen), then one the
    policy ended rather than --max-new-tokens."""
    answered = completion.reasoning is not None or not reasoning_end or reasoning_end in completion.text
    return answered, completion.finish_reason != "length"


def _entry(completion: Completion) -> dict:
    return {"text": completion.text, "completion_indices": [], "num_tokens": completion.num_tokens,
            "finish_reason": completion.finish_reason, "reasoning": completion.reasoning}
