"""`--reward-model verify:math` and `verify:exact`: a completion scores 1.0 when its final answer equals the row's
ground truth, else 0.0. No model, no GPU: the reward of reasoning data (sample n solutions, keep the verified).

The ground truth is the row's `--answer-column` (default `answer`), carried with the prompt; GSM8K's
`<reasoning> #### 42` gives `42`. `math` decides equality with Hugging Face's `math-verify` (LaTeX, `\\boxed{}`,
fractions, numbers, sets, sympy-equal expressions) on the last `\\boxed{}`, in a child process with a time limit
(`math_check`); `exact` compares normalised strings of the final answer (the last `\\boxed{}`, else the text after the
last `####`, else the whole completion).
"""

from __future__ import annotations

from typing import Any

from rsample.workers.backends.answers import final_answer, ground_truth, normalized, same_answer
from rsample.workers.backends.math_check import MathChecker
from rsample.workers.backends.reward_specs import VERIFY_PREFIX, check_spec
from rsample.workers.common.config import RunConfig
from rsample.workers.common.errors import RsampleError
from rsample.workers.common.messages import Conversation


class AnswerVerifier:
    """A reward backend whose scores need the row's ground truth: the scoring stage passes each conversation's
    row columns (`needs_columns`) and skips, with its reason, a prompt whose row has none (`missing_reason`)."""

    needs_columns = True

    def __init__(self, spec: str, answer_column: str):
        check_spec(spec)
        self.spec = spec
        self.kind = spec[len(VERIFY_PREFIX):]
        self.answer_column = answer_column
        self.checker = None
        if self.kind == "math":
            try:
                import math_verify  # noqa: F401
            except ImportError as exc:
                raise RsampleError(f"{spec} needs math-verify: pip install math-verify ({exc})") from None
            self.checker = MathChecker()

    @classmethod
    def from_run(cls, config: RunConfig, model_index: int) -> AnswerVerifier:
        return cls(config.reward_models[model_index], config.answer_column)

    def missing_reason(self, columns: dict[str, Any] | None) -> str | None:
        """Why this row cannot be verified, or None."""
        value = (columns or {}).get(self.answer_column)
        problem = ground_truth_problem(self.answer_column, value)
        if problem is not None:
            return f"{self.spec}: the row {problem}"
        gold = ground_truth(value)
        if self.checker is not None and not self.checker.reads(gold):
            return f"{self.spec}: math-verify reads no answer in the row's ground truth {gold[:100]!r}"
        return None

    def score(self, conversations: list[Conversation], columns: list[dict[str, Any] | None]) -> list[float | None]:
        scores: list[float | None] = []
        for conversation, row in zip(conversations, columns):
            gold = ground_truth((row or {}).get(self.answer_column))
            completion = conversation[-1]["content"]
            if gold is None:
                raise ValueError(self.missing_reason(row))
            if self.kind == "exact":
                scores.append(1.0 if same_answer(normalized(final_answer(completion)), normalized(gold)) else 0.0)
                continue
            scores.append(1.0 if self.checker.equal(gold, completion) else 0.0)
        return scores


def ground_truth_problem(column: str, value: Any) -> str | None:
    """Why a row whose `column` holds `value` has no ground truth for a verifier (None: it has one), without parsing it:
    the predicate of "the row ..."."""
    if ground_truth(value) is not None:
        return None
    if isinstance(value, (list, dict, bool)):  # TriviaQA's aliases, say
        return f"holds a {type(value).__name__} in {column!r}, not one answer (a string or a number)"
    return f"has no ground truth in column {column!r}"
