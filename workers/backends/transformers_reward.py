"""`--reward-backend transformers`: an `AutoModelForSequenceClassification` whose single logit is the score."""

from __future__ import annotations

from rsample.workers.backends.batching import run_halving_on_oom
from rsample.workers.backends.models import check_reward_model, context_length, load_tokenizer, load_weights, resolve_device, resolve_dtype
from rsample.workers.backends.templates import render_conversation
from rsample.workers.common import defaults
from rsample.workers.common.config import RunConfig
from rsample.workers.common.messages import Conversation


class TransformersRewardModel:
    """Conversations rendered with the reward model's own chat template, length-sorted into padded micro-batches."""

    def __init__(self, spec: str, dtype: str = "auto", micro_batch: int = defaults.REWARD_MICRO_BATCH):
        from transformers import AutoModelForSequenceClassification

        check_reward_model(spec)
        self.device = resolve_device()
        self.tokenizer = load_tokenizer(spec, "reward")
        self.model = load_weights(AutoModelForSequenceClassification, spec, "reward", resolve_dtype(dtype, self.device), self.device)
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.context = context_length(self.model, self.tokenizer)
        self.micro_batch = micro_batch

    @classmethod
    def from_run(cls, config: RunConfig, model_index: int) -> TransformersRewardModel:
        return cls(config.reward_models[model_index], config.models.dtype, config.models.reward_micro_batch)

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
