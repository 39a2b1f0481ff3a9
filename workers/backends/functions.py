"""`--reward-model fn:package.module:function`: your own reward code, called as
`function(conversations, rows) -> scores`: `conversations` are the candidates as chat messages (the prompt, then
the candidate as the last assistant message), `rows` each candidate's row columns (`--answer-column` when given,
`--extra-column`; None for a row without them), and the result one float (or None: no score) per conversation.

A worker imports the function only when its own command line (`--allow-reward-fn package.module:function`) or an
installed entry point of the group `rsample.rewards` allows that name: the run's settings come from a Redis that
others may write to, and must never be able to make a worker import a module.
"""

from __future__ import annotations

import importlib
import json
import math
import numbers
from collections.abc import Iterable
from importlib.metadata import entry_points
from typing import Any

from rsample.workers.backends.faults import RewardFunctionFault
from rsample.workers.backends.reward_specs import function_name
from rsample.workers.common import defaults
from rsample.workers.common.errors import RsampleError, first_line
from rsample.workers.common.messages import Conversation

ENTRY_POINT_GROUP = "rsample.rewards"


def allowed_functions(named: Iterable[str] = ()) -> frozenset[str]:
    """The names this worker may import: those its command line names, and every installed `rsample.rewards` entry
    point's `package.module:function`."""
    return frozenset(named) | {entry.value for entry in entry_points(group=ENTRY_POINT_GROUP)}


class RefusedReward:
    """Stands for a reward this worker may not run: each of its jobs fails with the reason (another worker that
    allows it may take the job on retry), and the worker serves its other queues as usual."""

    def __init__(self, spec: str, refusal: str):
        self.spec = spec
        self.refusal = refusal

    def score(self, conversations: list[Conversation]) -> list[float | None]:
        raise RsampleError(self.refusal)


class FunctionReward:
    needs_columns = True
    user_code = True
    """Its failures on every prompt are an error in the code (`RewardFunctionFault`), not a broken device."""

    def __init__(self, spec: str, function):
        self.spec = spec
        self.function = function
        self.failures_in_a_row = 0

    @classmethod
    def load(cls, spec: str, allowed: frozenset[str]) -> FunctionReward | RefusedReward:
        name = function_name(spec)
        if name not in allowed:
            return RefusedReward(spec, f"{spec} is not allowed on this worker: start it with --allow-reward-fn {name}, "
                                       f"or install a package that declares it as an entry point in the group {ENTRY_POINT_GROUP}")
        module_name, _, attribute = name.partition(":")
        try:
            function = getattr(importlib.import_module(module_name), attribute)
        except (ImportError, AttributeError) as exc:
            raise RsampleError(f"cannot import reward function {name}: {first_line(exc)}") from None
        if not callable(function):
            raise RsampleError(f"reward function {name} is not callable")
        return cls(spec, function)

    def missing_reason(self, columns: dict[str, Any] | None) -> str | None:
        return None  # the function itself decides what a row without its columns scores

    def score(self, conversations: list[Conversation], columns: list[dict[str, Any] | None]) -> list[float | None]:
        """A function that failed on its last calls, one after the other, has an error of its own: seen here also
        where jobs hold one prompt each, which a batch's failures alone would never show."""
        try:
            scores = self._score(conversations, columns)
        except Exception as exc:
            self.failures_in_a_row += 1
            if self.failures_in_a_row >= defaults.FUNCTION_FAILURES_IN_A_ROW:
                raise RewardFunctionFault(f"{self.spec} failed on its last {self.failures_in_a_row} calls in a row "
                                          f"({first_line(exc, with_type=True)}): {RewardFunctionFault.blame}") from exc
            raise
        self.failures_in_a_row = 0
        return scores

    def _score(self, conversations: list[Conversation], columns: list[dict[str, Any] | None]) -> list[float | None]:
        # each conversation and row its own copy: the candidates of one prompt share its row and its prompt's turns, and
        # a function that changes what it was given (`row.pop("answer")`) changed every other candidate's input
        conversations = [json.loads(json.dumps(conversation)) for conversation in conversations]  # plain JSON, as they travel
        columns = [json.loads(json.dumps(row)) for row in columns]
        try:
            values = self.function(conversations, columns)
        except SystemExit as exc:  # an error like any other (the batch's prompts are tried one by one), not the worker's end
            raise RuntimeError(f"{self.spec} called sys.exit({exc.code!r})") from None
        if hasattr(values, "tolist") and not isinstance(values, (list, tuple)):  # a numpy array or a torch tensor
            values = values.tolist()
        if not isinstance(values, (list, tuple)) or len(values) != len(conversations):
            got = f"{len(values)} values" if isinstance(values, (list, tuple)) else type(values).__name__
            raise ValueError(f"{self.spec} returned {got} for {len(conversations)} conversations")
        scores: list[float | None] = []
        for value in values:
            if value is None:
                scores.append(None)
            elif isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value):
                scores.append(float(value))
            else:
                raise ValueError(f"{self.spec} returned {value!r}: a score is a finite number or None")
        return scores

