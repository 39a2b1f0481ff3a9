"""The messages that travel between stages, as typed dataclasses with a JSON form.

Conversations stay plain `{"role", "content"}` dicts: that is both the wire format and the output format.
"""

from __future__ import annotations

import heapq
import json
import re
from dataclasses import dataclass, field, fields
from typing import Any

Message = dict[str, str]
Conversation = list[Message]


def known_fields(cls, raw: dict[str, Any]) -> dict[str, Any]:
    """A payload's fields that this version knows: a worker of an older or newer rsample on the same run (a cluster
    upgraded one machine at a time) reads what it can instead of failing every job."""
    names = {item.name for item in fields(cls)}
    return {name: value for name, value in raw.items() if name in names}


FIELDS_ADDED_LATER = ("reasoning", "reference_reasoning")
"""Fields added after a release, left out of a payload where they hold nothing (all but a harmony policy's run that
scores the reference): a payload the workers of that release can read, on a cluster upgraded one machine at a time."""


def _fields_set(message) -> dict[str, Any]:
    return {name: value for name, value in vars(message).items() if not (name in FIELDS_ADDED_LATER and value is None)}


@dataclass(frozen=True)
class PromptRecord:
    """One prompt of the dataset, as the producer enqueues it."""

    prompt_id: str
    messages: Conversation
    reference_completion: str | None = None
    row_index: int = -1
    columns: dict[str, Any] | None = None
    """The row's columns that its rewards read (its ground truth for `verify:`), as they are in the dataset."""
    reference_reasoning: str | None = None
    """The reference turn's own `thinking`, where the dataset gives one (gpt-oss's format): kept for a harmony policy's run."""

    @property
    def reference_text(self) -> str | None:
        """The reference as a candidate's text and in the output: without the whitespace around it, as completions are
        stored (a chosen reference read otherwise than its `reference_completion` column)."""
        return None if self.reference_completion is None else self.reference_completion.strip()

    def to_dict(self) -> dict[str, Any]:
        return _fields_set(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> PromptRecord:
        return cls(**known_fields(cls, raw))


@dataclass(frozen=True)
class Candidate:
    """One distinct completion of a prompt; identical samples are merged into one candidate."""

    text: str
    completion_indices: list[int]
    is_reference: bool = False
    num_tokens: int = 0
    finish_reason: str = "stop"
    reasoning: str | None = None
    """A harmony-format policy's thinking, `text` being its answer (see `rsample.workers.backends.base.Completion`)."""

    def assistant_turn(self) -> Message:
        """The candidate as the conversation's last turn: gpt-oss's chat template takes the thinking in `thinking`."""
        return {"role": "assistant", "content": self.text, **({"thinking": self.reasoning} if self.reasoning is not None else {})}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Candidate:
        return cls(**known_fields(cls, raw))


@dataclass(frozen=True)
class GeneratedPrompt:
    """A prompt with its distinct candidates, or the reason it was skipped."""

    prompt: PromptRecord
    candidates: list[Candidate] = field(default_factory=list)
    num_candidates: int = 0
    skip_reason: str | None = None

    def needs_scoring(self, min_candidates: int = 2) -> bool:
        return self.skip_reason is None and len(self.candidates) >= min_candidates

    def samples_in(self, candidate: Candidate) -> int:
        """How many of the policy's samples `candidate` stands for (the dataset's reference, counted in `num_candidates`
        and indexed after the samples, left out): what counts a report's shares in samples, not distinct texts."""
        samples = self.num_candidates - any(c.is_reference for c in self.candidates)
        return sum(index < samples for index in candidate.completion_indices)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> GeneratedPrompt:
        return cls(
            prompt=PromptRecord.from_dict(raw["prompt"]),
            candidates=[Candidate.from_dict(c) for c in raw["candidates"]],
            num_candidates=raw["num_candidates"],
            skip_reason=raw["skip_reason"],
        )


@dataclass(frozen=True)
class GeneratedBatch:
    """What a generation job leaves in Redis for the reward workers and the aggregator."""

    batch_id: str
    prompts: list[GeneratedPrompt]

    def to_json(self) -> bytes:
        """The same JSON as `asdict` would give, without its deep copies: this runs once per generation job. In UTF-8,
        not ASCII escapes, which made a batch of Chinese or Japanese completions take twice the Redis memory (6 bytes a
        character instead of 3); escaped only where the text cannot be UTF-8 (a lone surrogate)."""
        text = json.dumps(self, default=_fields_set, ensure_ascii=False)
        try:
            return text.encode("utf-8")
        except UnicodeEncodeError:
            return json.dumps(self, default=_fields_set).encode("ascii")

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> GeneratedBatch:
        return cls(batch_id=raw["batch_id"], prompts=[GeneratedPrompt.from_dict(p) for p in raw["prompts"]])


@dataclass(frozen=True)
class PromptScores:
    """One reward model's verdict on one prompt: a score per candidate, or why it could not score them."""

    scores: list[float] | None = None
    skip_reason: str | None = None

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> PromptScores:
        return cls(**known_fields(cls, raw))


PAIR = "pair"
DROPPED_IDENTICAL = "dropped_identical"
DROPPED_MARGIN = "dropped_margin"
DROPPED_TIE = "dropped_tie"
DROPPED_UNFINISHED = "dropped_unfinished"
DROPPED_DISAGREEMENT = "dropped_disagreement"
DROPPED_UNVERIFIED = "dropped_unverified"
"""No pair: the first reward is a verifier that decides first (`lexicographic`), and no candidate that may be chosen
passed it: a pair of two wrong answers would teach a preference for one of them."""
SKIPPED = "skipped"
DUPLICATE = "duplicate"
GENERATED_OUTCOMES = (PAIR, DROPPED_IDENTICAL, DROPPED_MARGIN, DROPPED_TIE, DROPPED_UNFINISHED, DROPPED_DISAGREEMENT, DROPPED_UNVERIFIED)
"""The outcomes of the prompts that got candidates (the others were skipped, or duplicates)."""

UNPROCESSABLE = "unprocessable result"
_FAILURE_REASON = re.compile(rf"^(generation|(scoring with )?reward model \d+( \((?:[^)]|\)(?! ))*\))?) failed: |^{UNPROCESSABLE}: ")
"""A reward's name in a reason ends at its first ") ": a content skip's own text never passes for a failure's."""


def reward_label(index: int, name: str | None = None) -> str:
    """How skip reasons and logs name a reward: by its index, which `--reward-model-index` takes, and by its name
    (`fn:...`, `verify:math`, a model id), which a run of several rewards needs to tell them apart."""
    return f"reward model {index}" + (f" ({name})" if name else "")


def failure_reason(stage: str, detail: str) -> str:
    """The skip reason of a row whose work failed (`stage` is "generation", a `reward_label`, ...), as against one
    skipped for its content: `--retry-failed` gives the rows of such reasons another try."""
    return f"{stage} failed: {detail}"


def is_failure_reason(reason: str | None) -> bool:
    """Whether a skip reason says that work failed (an error, a timeout, a dead worker), not that the row is bad."""
    return reason is not None and _FAILURE_REASON.match(reason) is not None


def failed_skips(skip_reasons: dict[str, int]) -> int:
    """How many of the skipped rows (reason -> rows) were skipped because their work failed."""
    return sum(count for reason, count in skip_reasons.items() if is_failure_reason(reason))


REASONS_SHOWN = 20
"""Skip reasons shown (by `rsample status`, the end summary, the report) and published, the commonest first: a reason
may hold an error's text, which can differ on every row (a reward function's), and 20,000 lines bury the rest."""


OTHER_REASONS = " other reasons (each row's is in the outcomes file)"


def commonest_reasons(skip_reasons: dict[str, int], limit: int = REASONS_SHOWN) -> dict[str, int]:
    """The `limit` commonest skip reasons, the others' rows together under one line that counts them; every row's own
    reason stays in the outcomes file."""
    if len(skip_reasons) <= limit + 1:  # one line for one reason: itself; reasons folded already keep their last line last
        return dict(sorted(skip_reasons.items(), key=lambda item: (item[0].endswith(OTHER_REASONS), -item[1])))
    shown = dict(heapq.nlargest(limit, skip_reasons.items(), key=lambda item: item[1]))
    shown[f"{len(skip_reasons) - limit:,}{OTHER_REASONS}"] = sum(skip_reasons.values()) - sum(shown.values())
    return shown


def folds_reasons(skip_reasons: dict[str, int]) -> bool:
    """Whether these reasons are `commonest_reasons`' few, the others' rows on one line (which says no reason)."""
    return any(reason.endswith(OTHER_REASONS) for reason in skip_reasons)


@dataclass(frozen=True)
class Outcome:
    """What became of one dataset row (one of the kinds above), as the feeder and the aggregation stage settle it."""

    row_index: int
    prompt_id: str | None
    outcome: str
    reason: str | None = None

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Outcome:
        return cls(raw["row_index"], raw.get("prompt_id"), raw["outcome"], raw.get("reason"))
