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
    groups: dict[tuple, tuple[Completion, list[int]]] = {}
    """Each candidate: the sample it holds, and the completion indices it stands for (that sample's first)."""
    for index, completion in enumerate(result.completions):
        key = _key(completion, reasoning_end)
        kept, indices = groups.get(key, (completion, []))
        if _rank(completion, reasoning_end) > _rank(kept, reasoning_end):
            groups[key] = (completion, [index, *indices])
        else:
            groups[key] = (kept, [*indices, index])
    total, reference_key = len(result.completions), None
    if include_reference and record.reference_completion is not None:
        # Beside a harmony policy's candidates the reference has its dataset's thinking, else an empty one: gpt-oss's
        # template renders `thinking` whenever the key is there, and `datasets` gives a missing key as None, which it cannot.
        harmony = any(completion.reasoning is not None for completion in result.completions)
        reference = Completion(record.reference_text, 0, "reference", (record.reference_reasoning or "") if harmony else None)
        reference_key = _key(reference, reasoning_end)
        kept, indices = groups.get(reference_key, (reference, []))
        groups[reference_key] = (kept, [*indices, total])
        total += 1
    candidates = [Candidate(kept.text, indices, key == reference_key, kept.num_tokens, kept.finish_reason, kept.reasoning)
                  for key, (kept, indices) in groups.items()]
    return GeneratedPrompt(record, candidates, total)


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
