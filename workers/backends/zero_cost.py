"""Backends that cost nothing (`--backend echo`, `--reward-backend length`): for benchmarks of the queue and
aggregation path, and for pipeline tests."""

from __future__ import annotations

from rsample.workers.backends.base import Completion, PromptCompletions
from rsample.workers.common.config import RunConfig, SamplingConfig
from rsample.workers.common.messages import Conversation


class EchoGenerator:
    """Completion k of a prompt is its last user message with k+1 marks appended: all n distinct, of distinct lengths
    (so that the zero-cost length reward ranks them without ties)."""

    @classmethod
    def from_run(cls, config: RunConfig) -> EchoGenerator:
        return cls()

    def generate(self, prompts: list[Conversation], sampling: SamplingConfig, seed: int, progress=None) -> list[PromptCompletions]:
        return [
            PromptCompletions([Completion(f"{prompt[-1]['content']} {'#' * (k + 1)}", 1, "stop") for k in range(sampling.n)])
            for prompt in prompts
        ]


class LengthReward:
    """The score is the length of the final message."""

    @classmethod
    def from_run(cls, config: RunConfig, model_index: int) -> LengthReward:
        return cls()

    def score(self, conversations: list[Conversation]) -> list[float | None]:
        return [float(len(c[-1]["content"])) for c in conversations]
