"""`--backend transformers`: batched `generate` with `num_return_sequences=n` on the policy's own weights.

The run's sampling settings are all it samples with: the policy's own `generation_config.json` (read once, when the
run is made) is replaced at load, since `generate` would otherwise apply whatever else it holds
(`no_repeat_ngram_size`, `min_new_tokens`, ...), which vLLM ignores; and the settings are applied as vLLM applies
them (`sampling_order`).
"""

from __future__ import annotations

import threading

from rsample.workers.backends.base import Completion, ProgressCallback, PromptCompletions
from rsample.workers.backends.harmony import HarmonyTokens
from rsample.workers.backends.models import context_length, load_tokenizer, load_weights, policy_eos_ids, resolve_device, resolve_dtype
from rsample.workers.backends.sampling_order import vllm_order_processor
from rsample.workers.backends.templates import render_fitting
from rsample.workers.backends.waiting import holding_interruptibly
from rsample.workers.common.config import RunConfig, SamplingConfig
from rsample.workers.common.messages import Conversation


class TransformersGenerator:
    """Prompts rendered with the policy's chat template, left-padded into one batch, n samples each."""

    def __init__(self, policy: str, dtype: str = "auto", trust_remote_code: bool = False, max_model_len: int | None = None):
        from transformers import AutoModelForCausalLM, GenerationConfig

        self.device = resolve_device()
        self.tokenizer = load_tokenizer(policy, "policy", trust_remote_code)
        self.tokenizer.padding_side = "left"
        self.model = load_weights(AutoModelForCausalLM, policy, "policy", resolve_dtype(dtype, self.device), self.device, trust_remote_code)
        self.context = context_length(self.model.config, self.tokenizer, max_model_len)
        self.eos_ids = set(policy_eos_ids(policy, self.tokenizer, self.model.config))
        self.harmony = HarmonyTokens.of(self.tokenizer)
        if self.tokenizer.pad_token_id is None:  # no pad and no EOS token: any id pads, the attention mask hides it
            self.tokenizer.pad_token = self.tokenizer.convert_ids_to_tokens(min(self.eos_ids, default=0))
        self.model.generation_config = GenerationConfig(eos_token_id=sorted(self.eos_ids), pad_token_id=self.tokenizer.pad_token_id)
        self._one_at_a_time = threading.Lock()
        """A worker's slots share torch's one random generator: a job's completions follow from its seed only if no other
        job draws from it meanwhile."""

    @classmethod
    def from_run(cls, config: RunConfig) -> TransformersGenerator:
        return cls(config.policy, config.models.dtype, config.policy in config.trust_remote_code, config.models.max_model_len)

    def generate(self, prompts: list[Conversation], sampling: SamplingConfig, seed: int,
                 progress: ProgressCallback | None = None) -> list[PromptCompletions]:
        import torch
        from transformers import LogitsProcessorList

        results, fitting = render_fitting(self.tokenizer, prompts, self.context, sampling)
        if fitting:
            batch = self.tokenizer.pad({"input_ids": [ids for _, ids in fitting]}, return_tensors="pt").to(self.device)
            prompt_starts = (batch["attention_mask"] == 0).sum(dim=-1).repeat_interleave(sampling.n)  # left padding
            with holding_interruptibly(self._one_at_a_time), torch.inference_mode():
                torch.manual_seed(seed)
                output = self.model.generate(
                    **batch,
                    do_sample=True,  # from the processor's scores alone: every setting of its own off
                    logits_processor=LogitsProcessorList([vllm_order_processor(sampling, prompt_starts)]),
                    temperature=1.0,
                    top_p=1.0,
                    top_k=0,
                    min_p=None,
                    repetition_penalty=1.0,
                    eos_token_id=sorted(self.eos_ids),
                    max_new_tokens=sampling.max_new_tokens,
                    num_return_sequences=sampling.n,
                    pad_token_id=self.tokenizer.pad_token_id,
                    streamer=None if progress is None else StepCounter(sampling.max_new_tokens, self.eos_ids, progress),
                )
            new_tokens = output[:, batch["input_ids"].shape[1]:].tolist()
            for position, (index, _) in enumerate(fitting):
                rows = new_tokens[position * sampling.n:(position + 1) * sampling.n]
                results[index] = PromptCompletions([self._completion(row) for row in rows])
        return results  # type: ignore[return-value]

    def _completion(self, tokens: list[int]) -> Completion:
        """Ended inside a character (its bytes spread over tokens; an EOS may follow the first of them too): vLLM leaves
        the incomplete bytes out, `decode` marks them U+FFFD."""
        end = next((length for length, token in enumerate(tokens) if token in self.eos_ids), None)
        kept, counted, finish = (tokens, len(tokens), "length") if end is None else (tokens[:end], end + 1, "stop")
        if self.harmony is not None:
            reply = self.harmony.split_with(self.tokenizer, kept)
            return Completion(reply.answer or "", counted, finish, reply.thinking)
        return Completion(self.tokenizer.decode(kept, skip_special_tokens=True).rstrip("\ufffd").strip(), counted, finish)


class StepCounter:
    """A streamer for `generate` that counts the tokens of every unfinished sequence at each step, for live progress
    (transformers hands a streamer the prompt first, then each step's new token of every sequence)."""

    def __init__(self, max_new_tokens: int, eos_ids: set[int], progress: ProgressCallback):
        import torch

        self.max_new_tokens, self.progress = max_new_tokens, progress
        self.eos_ids = torch.tensor(sorted(eos_ids))
        self.prompts_seen = False
        self.finished = None
        self.steps = self.tokens = 0

    def put(self, value) -> None:
        import torch

        if not self.prompts_seen:
            self.prompts_seen = True
            return
        value = value.reshape(-1)
        if self.finished is None:
            self.finished = torch.zeros(len(value), dtype=torch.bool)
        self.tokens += int((~self.finished).sum())
        self.finished |= torch.isin(value, self.eos_ids)
        self.steps += 1
        self.progress(self.steps / self.max_new_tokens, self.tokens)

    def end(self) -> None:
        pass
