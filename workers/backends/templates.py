"""Chat-template rendering shared by every backend, so that all of them skip the same prompts and score the same tokens.

The policy renders prompts opened for the assistant's turn; each reward model renders the whole conversation
with its own template, since policy and reward tokenizers differ.
"""

from __future__ import annotations

from jinja2 import TemplateError, TemplateSyntaxError

from rsample.workers.backends.base import PromptCompletions
from rsample.workers.common.config import SamplingConfig
from rsample.workers.common.errors import RejectedInput, first_line
from rsample.workers.common.messages import Conversation
from rsample.workers.common.reasoning import opening_marker


def render(tokenizer, prompt: Conversation, template_kwargs: dict | None = None) -> list[int]:
    """The prompt as the policy sees it: its own chat template, opened for the assistant's turn; `template_kwargs`
    are the run's `--chat-template-kwargs` (Qwen3's `enable_thinking`)."""
    text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True, **(template_kwargs or {}))
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def opened_thinking(tokenizer, prompt: Conversation, template_kwargs: dict | None, reasoning_end: str | None) -> str:
    """The thinking the policy's template opens in the generation prompt, which the completion continues: `<think>\\n`
    (DeepSeek-R1's, QwQ's); "" where it opens none. Found in what the generation prompt adds to the conversation, never
    in the conversation's own text. (A template that closes the thinking there too is refused with --reasoning-end.)"""
    start = opening_marker(reasoning_end)
    if start is None:
        return ""
    try:
        opened = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True, **(template_kwargs or {}))
        closed = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=False, **(template_kwargs or {}))
    except TemplateError:
        return ""
    if not opened.startswith(closed):
        return ""
    added = opened[len(closed):]
    at = added.rfind(start)
    return added[at:] if at >= 0 else ""


def render_fitting(tokenizer, prompts: list[Conversation], context: int, sampling: SamplingConfig):
    """Renders every prompt; returns (results with the skipped prompts filled in, [(index, ids)] of the rest).

    Every backend skips by this one rule, so a prompt is skipped or kept whatever the backend: longer than
    `max_prompt_tokens`, or too long to leave `max_new_tokens` within the policy's context.
    """
    max_new_tokens, max_prompt_tokens = sampling.max_new_tokens, sampling.max_prompt_tokens
    results: list[PromptCompletions | None] = [None] * len(prompts)
    fitting: list[tuple[int, list[int]]] = []
    for index, prompt in enumerate(prompts):
        try:
            ids = render(tokenizer, prompt, sampling.chat_template_kwargs)
        except TemplateError as exc:
            results[index] = PromptCompletions([], f"policy chat template rejected the prompt: {exc}")
            continue
        if len(ids) > max_prompt_tokens:
            results[index] = PromptCompletions([], f"prompt longer than --max-prompt-tokens ({max_prompt_tokens})")
        elif len(ids) + max_new_tokens > context:
            results[index] = PromptCompletions([], f"prompt too long for the policy context ({context} tokens) with --max-new-tokens {max_new_tokens}")
        else:
            fitting.append((index, ids))
    return results, fitting


def render_conversations(tokenizer, conversations: list[Conversation], pad_token_id: int | None = None) -> list[list[int]]:
    """Whole conversations in the reward model's own chat template (policy and reward tokenizers differ), tokenized
    in one call: the tokenizer's Rust side then splits the work over its threads instead of one text at a time.

    Each ends at its last token that is not `pad_token_id` (the model config's): that is where transformers' forward
    of a `*ForSequenceClassification` reads a sequence's score, so where the trainers that used it taught the model
    to score. A model whose pad token is the EOS that ends every turn (trained with pad = EOS, as TRL sets it when the
    tokenizer has none) scores the token before it. The reward backends then read the last token of what is left."""
    if not conversations:
        return []
    try:
        texts = [tokenizer.apply_chat_template(conversation, tokenize=False) for conversation in conversations]
    except TemplateSyntaxError:  # the template itself is broken: no conversation's fault
        raise
    except TemplateError as exc:  # `raise_exception` in the template: it refuses this conversation
        raise RejectedInput(f"chat template rejected the conversation: {first_line(exc)}") from exc
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return encoded if pad_token_id is None else [_through_last_non_pad(ids, pad_token_id) for ids in encoded]


def _through_last_non_pad(ids: list[int], pad_token_id: int) -> list[int]:
    end = len(ids)
    while end > 1 and ids[end - 1] == pad_token_id:
        end -= 1
    return ids[:end]
