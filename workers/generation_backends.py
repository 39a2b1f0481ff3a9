"""Generation backends: one small interface, a transformers implementation, and a zero-cost one
(the vLLM implementation, an optional dependency, is in `workers.vllm_backends`).

A backend receives many prompts at once and returns, for each, n completions or the reason it was
skipped; a skipped prompt never shifts the completions of the others.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from jinja2 import TemplateError

from workers.config import RunConfig, SamplingConfig
from workers.messages import Conversation


@dataclass(frozen=True)
class Completion:
    text: str
    num_tokens: int
    finish_reason: str  # "stop" (end of sequence) or "length" (hit max_new_tokens)


@dataclass(frozen=True)
class PromptCompletions:
    completions: list[Completion]
    skip_reason: str | None = None


class GenerationBackend(Protocol):
    def generate(self, prompts: list[Conversation], sampling: SamplingConfig, seed: int) -> list[PromptCompletions]: ...


def render(tokenizer, prompt: Conversation) -> list[int]:
    """The prompt as the policy sees it: its own chat template, opened for the assistant's turn."""
    text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def render_fitting(tokenizer, prompts: list[Conversation], context: int, max_new_tokens: int):
    """Renders every prompt; returns (results with the skipped prompts filled in, [(index, ids)] of the rest).

    Every backend skips by this one rule, so a prompt is skipped or kept whatever the backend.
    """
    results: list[PromptCompletions | None] = [None] * len(prompts)
    fitting: list[tuple[int, list[int]]] = []
    for index, prompt in enumerate(prompts):
        try:
            ids = render(tokenizer, prompt)
        except TemplateError as exc:
            results[index] = PromptCompletions([], f"policy chat template rejected the prompt: {exc}")
            continue
        if len(ids) + max_new_tokens > context:
            results[index] = PromptCompletions([], "prompt longer than the policy context")
        else:
            fitting.append((index, ids))
    return results, fitting


class TransformersGenerator:
    """Batched `generate` with `num_return_sequences=n`, prompts rendered with the policy's chat template."""

    def __init__(self, policy: str, dtype: str = "auto"):
        from workers.models import context_length, load_tokenizer, load_weights, resolve_device, resolve_dtype
        from transformers import AutoModelForCausalLM

        self.device = resolve_device()
        self.tokenizer = load_tokenizer(policy, "policy")
        self.tokenizer.padding_side = "left"
        self.model = load_weights(AutoModelForCausalLM, policy, "policy", resolve_dtype(dtype, self.device), self.device)
        self.context = context_length(self.model, self.tokenizer)
        eos = self.model.generation_config.eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos])

    def generate(self, prompts: list[Conversation], sampling: SamplingConfig, seed: int) -> list[PromptCompletions]:
        import torch

        results, fitting = render_fitting(self.tokenizer, prompts, self.context, sampling.max_new_tokens)
        if fitting:
            batch = self.tokenizer.pad({"input_ids": [ids for _, ids in fitting]}, return_tensors="pt").to(self.device)
            torch.manual_seed(seed)
            with torch.inference_mode():
                output = self.model.generate(
                    **batch,
                    do_sample=True,
                    temperature=sampling.temperature,
                    top_p=sampling.top_p,
                    top_k=0,
                    max_new_tokens=sampling.max_new_tokens,
                    num_return_sequences=sampling.n,
                    pad_token_id=self.tokenizer.pad_token_id,
                )
            new_tokens = output[:, batch["input_ids"].shape[1]:].tolist()
            for position, (index, _) in enumerate(fitting):
                rows = new_tokens[position * sampling.n:(position + 1) * sampling.n]
                results[index] = PromptCompletions([self._completion(row) for row in rows])
        return results  # type: ignore[return-value]

    def _completion(self, tokens: list[int]) -> Completion:
        for length, token in enumerate(tokens):
            if token in self.eos_ids:
                text = self.tokenizer.decode(tokens[:length], skip_special_tokens=True)
                return Completion(text.strip(), length + 1, "stop")
        return Completion(self.tokenizer.decode(tokens, skip_special_tokens=True).strip(), len(tokens), "length")


class EchoGenerator:
    """Costs nothing: for benchmarks of the queue and aggregation path, and for pipeline tests.

    Completion k of a prompt is its last user message with a number appended, so all n are distinct.
    """

    def generate(self, prompts: list[Conversation], sampling: SamplingConfig, seed: int) -> list[PromptCompletions]:
        return [
            PromptCompletions([Completion(f"{prompt[-1]['content']} #{k}", 1, "stop") for k in range(sampling.n)])
            for prompt in prompts
        ]


def load_generator(config: RunConfig) -> GenerationBackend:
    backend = config.models.generation_backend
    if backend == "echo":
        return EchoGenerator()
    if backend == "vllm":
        from workers.vllm_backends import VLLMGenerator

        return VLLMGenerator(config.policy, config.models)
    return TransformersGenerator(config.policy, config.models.dtype)
