"""`judge:MODEL` with `--reward-backend vllm`: the same rubric, rendering and expected rating as the transformers
judge (`rsample.workers.backends.judge`), read from a one-token generation that may only pick a rating token: with
`logprobs_mode="processed_logprobs"` its logprobs are the judge's distribution renormalised over those tokens,
which is all the expected rating needs."""

from __future__ import annotations

import math
import threading

from rsample.workers.backends.judge import (
    compile_template,
    expected_rating,
    judge_texts,
    rating_token_ids,
    reply_opening,
    warn_if_ratings_unlikely,
)
from rsample.workers.backends.models import check_judge_model, context_length, load_model_config, load_tokenizer
from rsample.workers.backends.reward_specs import model_path
from rsample.workers.backends.vllm_llm import make_llm, shutdown_llm
from rsample.workers.common.config import ModelSettings, RunConfig
from rsample.workers.common.messages import Conversation


class VLLMJudge:
    def __init__(self, spec: str, models: ModelSettings, template: str | None = None, trust_remote_code: bool = False):
        path = model_path(spec)
        self.spec = spec
        check_judge_model(spec, trust_remote_code)
        self.tokenizer = load_tokenizer(path, "judge", trust_remote_code)
        self.template = compile_template(template)
        self.rating_ids = rating_token_ids(self.tokenizer, spec)
        self.opening = reply_opening(self.tokenizer, self.template)
        allowed = sorted({token for ids in self.rating_ids for token in ids})
        # every rating token's logprob: vLLM's default cap (20) would refuse a tokenizer with three spellings of each rating
        self.llm = make_llm(path, "judge", models, runner="generate", trust_remote_code=trust_remote_code,
                            logprobs_mode="processed_logprobs", max_logprobs=max(20, len(allowed)))
        self.context = context_length(load_model_config(path, "judge", trust_remote_code), self.tokenizer, models.max_model_len,
                                      self.llm.llm_engine.model_config.max_model_len)
        from vllm import SamplingParams

        self.params = SamplingParams(max_tokens=1, temperature=1.0, top_p=1.0, allowed_token_ids=allowed, logprobs=len(allowed))
        self.engine = threading.Lock()  # one `LLM` call at a time: see VLLMRewardModel.engine
        warn_if_ratings_unlikely(spec, self.rating_share)

    @classmethod
    def from_run(cls, config: RunConfig, model_index: int) -> VLLMJudge:
        spec = config.reward_models[model_index]
        return cls(spec, config.models, config.judge_template, model_path(spec) in config.trust_remote_code)

    def close(self) -> None:
        shutdown_llm(self.llm, "judge")

    def rating_share(self, conversation: Conversation) -> float:
        """The ratings' share of the judge's next-token probability where they are read, from a generation free to
        pick any token: a lower bound, summed over the ratings among the most likely tokens vLLM returns."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        text = judge_texts(self.tokenizer, self.template, self.opening, [conversation])[0]
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        free = SamplingParams(max_tokens=1, temperature=1.0, top_p=1.0, logprobs=self.params.logprobs)
        with self.engine:
            [output] = self.llm.generate([TokensPrompt(prompt_token_ids=ids)], free, use_tqdm=False)
        likeliest = output.outputs[0].logprobs[0]
        return sum(math.exp(likeliest[token].logprob) for token in self.params.allowed_token_ids if token in likeliest)

    def score(self, conversations: list[Conversation]) -> list[float | None]:
        from vllm.inputs import TokensPrompt

        texts = judge_texts(self.tokenizer, self.template, self.opening, conversations)
        encoded = self.tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
        fitting = [i for i, ids in enumerate(encoded) if len(ids) < self.context]
        with self.engine:
            outputs = self.llm.generate([TokensPrompt(prompt_token_ids=encoded[i]) for i in fitting], self.params, use_tqdm=False)
        scores: list[float | None] = [None] * len(conversations)
        for index, output in zip(fitting, outputs):
            logprobs = output.outputs[0].logprobs[0]
            scores[index] = expected_rating(sum(math.exp(logprobs[t].logprob) for t in ids if t in logprobs) for ids in self.rating_ids)
        return scores
