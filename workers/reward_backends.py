"""Reward backends: each scores whole conversations, rendered with its own tokenizer's chat template."""

from __future__ import annotations

from typing import Protocol

from workers import defaults
from workers.batching import run_halving_on_oom
from workers.config import RunConfig
from workers.messages import Conversation


class RewardBackend(Protocol):
    def score(self, conversations: list[Conversation]) -> list[float | None]:
        """One score per conversation; None for a conversation longer than the model's context."""
        ...


def render_conversation(tokenizer, conversation: Conversation) -> list[int]:
    """The whole conversation in the reward model's own chat template: policy and reward tokenizers differ."""
    text = tokenizer.apply_chat_template(conversation, tokenize=False)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


class TransformersRewardModel:
    """`AutoModelForSequenceClassification`: the score is the model's single logit for the conversation."""

    def __init__(self, spec: str, dtype: str = "auto", micro_batch: int = defaults.REWARD_MICRO_BATCH):
        from transformers import AutoModelForSequenceClassification

        from workers.models import check_reward_model, context_length, load_tokenizer, load_weights, resolve_device, resolve_dtype

        check_reward_model(spec)
        self.device = resolve_device()
        self.tokenizer = load_tokenizer(spec, "reward")
        self.model = load_weights(AutoModelForSequenceClassification, spec, "reward", resolve_dtype(dtype, self.device), self.device)
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.context = context_length(self.model, self.tokenizer)
        self.micro_batch = micro_batch

    def score(self, conversations: list[Conversation]) -> list[float | None]:
        encoded = [render_conversation(self.tokenizer, c) for c in conversations]
        fitting = [i for i, ids in enumerate(encoded) if len(ids) <= self.context]
        fitting.sort(key=lambda i: len(encoded[i]))  # similar lengths together: less padding
        scores: list[float | None] = [None] * len(conversations)
        values = run_halving_on_oom([encoded[i] for i in fitting], self.micro_batch, self._forward)
        for index, value in zip(fitting, values):
            scores[index] = value
        return scores

    def _forward(self, batch: list[list[int]]) -> list[float]:
        import torch

        padded = self.tokenizer.pad({"input_ids": list(batch)}, return_tensors="pt").to(self.device)
        with torch.inference_mode():
            logits = self.model(**padded).logits
        return logits[:, 0].float().tolist()


class LengthReward:
    """Costs nothing: the score is the length of the final message. For benchmarks and pipeline tests."""

    def score(self, conversations: list[Conversation]) -> list[float | None]:
        return [float(len(c[-1]["content"])) for c in conversations]


def load_reward_backend(config: RunConfig, model_index: int) -> RewardBackend:
    if config.models.reward_backend == "length":
        return LengthReward()
    if config.models.reward_backend == "vllm":
        from workers.vllm_backends import VLLMRewardModel

        return VLLMRewardModel(config.reward_models[model_index], config.models)
    return TransformersRewardModel(config.reward_models[model_index], config.models.dtype, config.models.reward_micro_batch)
