"""`--backend vllm`: the policy on a vLLM engine, fed through one engine loop by every slot of the worker.

Prompts are rendered by the same code as the transformers backend (`render_fitting`), so both backends skip
the same prompts.
"""

from __future__ import annotations

import hashlib

from rsample.workers.backends.base import Completion, ProgressCallback, PromptCompletions
from rsample.workers.backends.harmony import HarmonyTokens
from rsample.workers.backends.models import context_length, load_model_config, load_tokenizer, policy_eos_ids
from rsample.workers.backends.templates import render_fitting
from rsample.workers.backends.vllm_engine import EngineLoop
from rsample.workers.backends.vllm_llm import make_llm, shutdown_llm
from rsample.workers.backends.waiting import wait_interruptibly
from rsample.workers.common.config import ModelSettings, RunConfig, SamplingConfig
from rsample.workers.common.messages import Conversation


def request_seed(run_seed: int, prompt_ids: list[int]) -> int:
    """A prompt's seed depends on the run's seed and the prompt alone: its batch, and skipping or reordering other
    prompts, never shift it."""
    digest = hashlib.blake2b(f"{run_seed}:{prompt_ids}".encode(), digest_size=7).digest()
    return int.from_bytes(digest, "big")


class VLLMGenerator:
    """`SamplingParams(n=...)`, not n copies of the prompt: vLLM then shares the prompt's KV cache between the samples.

    `generate` may be called from several threads at once (one per worker slot): all calls feed one engine.
    """

    def __init__(self, policy: str, models: ModelSettings, trust_remote_code: bool = False):
        self.tokenizer = load_tokenizer(policy, "policy", trust_remote_code)
        self.llm = make_llm(policy, "policy", models, runner="generate", trust_remote_code=trust_remote_code)
        model_config = load_model_config(policy, "policy", trust_remote_code)
        self.context = context_length(model_config, self.tokenizer, models.max_model_len, self.llm.llm_engine.model_config.max_model_len)
        self.engine = EngineLoop(self.llm.llm_engine)
        self.eos_ids = policy_eos_ids(policy, self.tokenizer, model_config)
        self.harmony = HarmonyTokens.of(self.tokenizer)

    @classmethod
    def from_run(cls, config: RunConfig) -> VLLMGenerator:
        return cls(config.policy, config.models, config.policy in config.trust_remote_code)

    def close(self) -> None:
        """Stops the engine loop and the engine's own processes (they would otherwise live until this process ends)."""
        try:
            self.engine.close()
        finally:  # whatever interrupts the loop's close (a stop signal), the engine's process must go
            shutdown_llm(self.llm, "policy")

    def generate(self, prompts: list[Conversation], sampling: SamplingConfig, seed: int,
                 progress: ProgressCallback | None = None) -> list[PromptCompletions]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        results, fitting = render_fitting(self.tokenizer, prompts, self.context, sampling)
        submitted = []
        try:
            for index, ids in fitting:
                params = SamplingParams(
                    n=sampling.n, temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k,
                    min_p=sampling.min_p, repetition_penalty=sampling.repetition_penalty, stop_token_ids=self.eos_ids,
                    max_tokens=sampling.max_new_tokens, seed=request_seed(sampling.seed, ids), output_kind=RequestOutputKind.FINAL_ONLY,
                )
                submitted.append((index, *self.engine.submit(TokensPrompt(prompt_token_ids=ids), params)))
            tokens = 0
            for done, (index, _, future) in enumerate(submitted, start=1):
                samples = wait_interruptibly(future).outputs
                results[index] = PromptCompletions([self._completion(sample) for sample in samples])
                tokens += sum(len(sample.token_ids) for sample in samples)
                if progress is not None:
                    progress(done / len(submitted), tokens)
        finally:  # a job that fails or times out leaves no work behind in the engine
            self.engine.abort([request_id for _, request_id, future in submitted if not future.done()])
        return results  # type: ignore[return-value]

    def _completion(self, sample) -> Completion:
        """A sample the engine aborted or failed is no completion: the call fails, so that the job's prompts are generated
        again one at a time (a prompt that fails alone is skipped as failed; most of them failing alone stops the worker,
        as a fault of its engine). One it cut for repeating itself did not end by the policy's choice, as one cut at
        --max-new-tokens."""
        if sample.finish_reason in ("abort", "error"):
            raise RuntimeError(f"the vLLM engine ended a sample with finish reason {sample.finish_reason!r}")
        finish = "stop" if sample.finish_reason == "stop" else "length"
        if self.harmony is not None:  # vLLM's text has the channels' markers left out: split the tokens instead
            reply = self.harmony.split_with(self.tokenizer, sample.token_ids, self.eos_ids)
            return Completion(reply.answer or "", len(sample.token_ids), finish, reply.thinking)
        return Completion(sample.text.strip(), len(sample.token_ids), finish)
