"""`--reward-backend vllm`: vLLM's pooling runner on an `*ForSequenceClassification` checkpoint.

Conversations are rendered by the same code as the transformers reward backend (`render_conversations`, which also
ends each at its last token that is not the config's pad token, where transformers' forward reads it), so both score
the same token sequences, read at their last token; the score is the raw logit, as in transformers.
"""

from __future__ import annotations

import threading

from rsample.workers.backends.models import check_reward_model, context_length, load_model_config, load_tokenizer
from rsample.workers.backends.templates import render_conversations
from rsample.workers.backends.vllm_llm import make_llm, shutdown_llm
from rsample.workers.common.config import ModelSettings, RunConfig
from rsample.workers.common.messages import Conversation


class VLLMRewardModel:
    def __init__(self, spec: str, models: ModelSettings, trust_remote_code: bool = False):
        check_reward_model(spec, trust_remote_code)
        self.tokenizer = load_tokenizer(spec, "reward", trust_remote_code)
        model_config = load_model_config(spec, "reward", trust_remote_code)
        self.pad_token_id = model_config.get_text_config().pad_token_id
        self.llm = make_llm(spec, "reward", models, runner="pooling", trust_remote_code=trust_remote_code)
        self.context = context_length(model_config, self.tokenizer, models.max_model_len, self.llm.llm_engine.model_config.max_model_len)
        self.engine = threading.Lock()
        """vLLM's `LLM` steps its engine until no request is left, its callers' or not: one call at a time, whatever a
        worker's --slots (their rendering goes on meanwhile)."""

    @classmethod
    def from_run(cls, config: RunConfig, model_index: int) -> VLLMRewardModel:
        spec = config.reward_models[model_index]
        return cls(spec, config.models, spec in config.trust_remote_code)

    def close(self) -> None:
        """Shuts the engine's own processes down (they would otherwise live until this process ends)."""
        shutdown_llm(self.llm, "reward")

    def score(self, conversations: list[Conversation]) -> list[float | None]:
        from vllm import PoolingParams
        from vllm.inputs import TokensPrompt

        encoded = render_conversations(self.tokenizer, conversations, self.pad_token_id)
        fitting = [i for i, ids in enumerate(encoded) if len(ids) <= self.context]
        with self.engine:
            outputs = self.llm.classify(
                [TokensPrompt(prompt_token_ids=encoded[i]) for i in fitting],
                pooling_params=PoolingParams(use_activation=False),  # the logit itself, not its sigmoid
                use_tqdm=False,
            )
        scores: list[float | None] = [None] * len(conversations)
        for index, output in zip(fitting, outputs):
            scores[index] = float(output.outputs.probs[0])
        return scores
