"""The two backend interfaces and what they return: every generation and reward backend fits one of them.

A generation backend receives many prompts at once and returns, for each, n completions or the reason it
was skipped; a skipped prompt never shifts the completions of the others. A reward backend returns one
score per conversation, or None for one longer than its model's context.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from rsample.workers.common.config import SamplingConfig
from rsample.workers.common.messages import Conversation


@dataclass(frozen=True)
class Completion:
    text: str
    num_tokens: int
    finish_reason: str  # "stop" (end of sequence) or "length" (hit max_new_tokens)
    reasoning: str | None = None
    """A harmony-format policy's thinking (its channels other than the final one), `text` being its answer; None for
    every other policy, whose thinking, if any, is part of `text` (see `rsample.workers.backends.harmony`)."""


@dataclass(frozen=True)
class PromptCompletions:
    completions: list[Completion]
    skip_reason: str | None = None


ProgressCallback = Callable[[float, int], None]
"""How a backend tells its job how far it got: (share of this call's work done, from 0 to 1; tokens generated so far)."""


class GenerationBackend(Protocol):
    def generate(self, prompts: list[Conversation], sampling: SamplingConfig, seed: int,
                 progress: ProgressCallback | None = None) -> list[PromptCompletions]: ...


class RewardBackend(Protocol):
    def score(self, conversations: list[Conversation]) -> list[float | None]:
        """One score per conversation; None for a conversation longer than the model's context."""
        ...
