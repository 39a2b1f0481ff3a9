"""Merging identical completions before scoring: a reward model never scores the same answer twice for one prompt."""

from __future__ import annotations

from rsample.workers.backends.base import Completion, PromptCompletions
from rsample.workers.common.messages import Candidate, GeneratedPrompt, PromptRecord
from rsample.workers.common.reasoning import answer_part


def merge_candidates(record: PromptRecord, result: PromptCompletions, include_reference: bool,
                     reasoning_end: str | None = None) -> GeneratedPrompt:
    """Samples with the same answer (what the rewards read: a harmony policy's final channel, or the text after
    `reasoning_end`) become one candidate that remembers every completion index it stands for, the first being the
    sample whose text and thinking it keeps: the first that ended. Samples that think differently towards one answer
    would otherwise be scored apart, differ by rounding alone, and make a pair of one answer against itself. A sample
    with no answer (its thinking never ended, or ended in nothing) is merged only with the very same sample: it is
    never chosen, and each one counts.

    Texts are compared stripped, so one sample may have ended a text that another was cut in (at `--max-new-tokens`, on
    a space): the candidate is then one the policy ended, and may be chosen."""
    if result.skip_reason is not None:
        return GeneratedPrompt(record, [], 0, result.skip_reason)
    by_answer: dict[tuple, dict] = {}
    for index, completion in enumerate(result.completions):
        entry = by_answer.setdefault(_key(completion, reasoning_end), _entry(completion))
        entry["completion_indices"].append(index)
        if entry["finish_reason"] == "length" and completion.finish_reason == "stop":  # a sample that ended it: complete
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
        if entry["finish_reason"] == "length":  # cut where the reference ends: its text is a whole answer
            entry["finish_reason"] = "reference"
        total += 1
    return GeneratedPrompt(record, [Candidate(**entry) for entry in by_answer.values()], total)


def _key(completion: Completion, reasoning_end: str | None) -> tuple:
    """What makes two samples one candidate: their answer, where they have one; else the whole sample."""
    if completion.reasoning is not None:  # harmony: the text is the final channel's
        answer = completion.text
    elif completion.finish_reason == "reference" or not reasoning_end:  # the reference needs no thinking
        answer = answer_part(completion.text, reasoning_end)
    else:
        answer = answer_part(completion.text, reasoning_end) if reasoning_end in completion.text else ""
    return ("answer", answer) if answer else ("whole", completion.text, completion.reasoning)


def _entry(completion: Completion) -> dict:
    return {"text": completion.text, "completion_indices": [], "num_tokens": completion.num_tokens,
            "finish_reason": completion.finish_reason, "reasoning": completion.reasoning}
