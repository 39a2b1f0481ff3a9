"""From a backend's name (`--backend`, `--reward-backend`) to its class: a new backend is one module plus one line here.

Classes are named by dotted path and imported only when chosen, so that rsample runs without vLLM, and so that
the run settings can check a name against these tables without importing any model code. Each class builds
itself from the run's settings with `from_run(config)` (generation) or `from_run(config, model_index)` (reward).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: the settings module imports this one for its names
    from rsample.workers.backends.base import GenerationBackend, RewardBackend
    from rsample.workers.common.config import RunConfig

_PACKAGE = "rsample.workers.backends"

GENERATION_BACKENDS = {
    "transformers": f"{_PACKAGE}.transformers_generation:TransformersGenerator",
    "vllm": f"{_PACKAGE}.vllm_generation:VLLMGenerator",
    "echo": f"{_PACKAGE}.zero_cost:EchoGenerator",
}
"""Generation backend name -> class."""

REWARD_BACKENDS = {
    "transformers": f"{_PACKAGE}.transformers_reward:TransformersRewardModel",
    "vllm": f"{_PACKAGE}.vllm_reward:VLLMRewardModel",
    "length": f"{_PACKAGE}.zero_cost:LengthReward",
}
"""Reward backend name -> class."""

ZERO_COST_GENERATION = "echo"
ZERO_COST_REWARD = "length"
"""Backends that load no model, so a run using them names no model that must exist."""


def backend_class(table: dict[str, str], name: str) -> type:
    module, _, attribute = table[name].partition(":")
    return getattr(importlib.import_module(module), attribute)


def load_generator(config: RunConfig) -> GenerationBackend:
    return backend_class(GENERATION_BACKENDS, config.models.generation_backend).from_run(config)


VERIFIER = f"{_PACKAGE}.verifiers:AnswerVerifier"
"""`--reward-model verify:...`: an answer checker, whatever the run's reward backend."""
JUDGES = {"transformers": f"{_PACKAGE}.judge:TransformersJudge", "vllm": f"{_PACKAGE}.vllm_judge:VLLMJudge"}
"""`--reward-model judge:MODEL`, by the run's reward backend."""


def load_reward_backend(config: RunConfig, model_index: int, allowed_functions: frozenset[str] = frozenset()) -> RewardBackend:
    """`allowed_functions`: the `fn:` rewards this worker may import (its own command line's, never the run's)."""
    from rsample.workers.backends import reward_specs

    spec = config.reward_models[model_index]
    if reward_specs.is_verifier(spec):
        return backend_class({"verify": VERIFIER}, "verify").from_run(config, model_index)
    if reward_specs.is_function(spec):
        from rsample.workers.backends.functions import FunctionReward

        return FunctionReward.load(spec, allowed_functions)
    if reward_specs.is_judge(spec):  # a model, with vLLM or else transformers (as with the zero-cost reward backend)
        return backend_class(JUDGES, "vllm" if config.models.reward_backend == "vllm" else "transformers").from_run(config, model_index)
    return backend_class(REWARD_BACKENDS, config.models.reward_backend).from_run(config, model_index)
