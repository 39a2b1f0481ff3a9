"""`--reward-model judge:MODEL`: a chat model rates each candidate against a rubric, and the score is its expected
rating: the ratings 1 to 9 weighted by the probabilities the judge gives their tokens as the first token of its
reply, read from one forward pass. Finer-grained than a parsed answer (two candidates the judge would both call
"7" still differ), and never unparseable.

The rubric is a Jinja template (`--judge-template FILE`; a general one ships) of `conversation` (the prompt's
messages) and `answer` (the candidate); it becomes the judge's one user message, rendered with the judge's own
chat template and opened for its reply. The template travels in the run's settings, so it is rendered in a
sandbox: a shared Redis can hand workers a template, never code to run.
"""

from __future__ import annotations

import logging
import re
import threading

from jinja2 import StrictUndefined, TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from rsample.workers.backends.batching import TokenBudget
from rsample.workers.backends.models import check_judge_model, context_length, load_tokenizer, load_weights, resolve_device, resolve_dtype
from rsample.workers.backends.reward_specs import JUDGE_PREFIX, model_path
from rsample.workers.backends.transformers_reward import device_rounds, padded_on_device
from rsample.workers.common import defaults
from rsample.workers.common.config import RunConfig
from rsample.workers.common.errors import RsampleError, first_line
from rsample.workers.common.messages import Conversation
from rsample.workers.common.reasoning import THINKING_END

log = logging.getLogger(__name__)

RATINGS = tuple(range(1, 10))
TRIAL_CONVERSATION = [{"role": "user", "content": "What is the capital of France?"},
                      {"role": "assistant", "content": "The capital of France is Paris."}]
"""Single digits: each has a token of its own in common vocabularies, so that one forward pass reads them all."""

DEFAULT_TEMPLATE = """Please act as an impartial judge of the response an AI assistant gave to the conversation below. \
Consider its helpfulness, correctness, relevance, depth and clarity. Rate it from 1 (very poor) to 9 (excellent).

[Conversation]
{% for message in conversation %}{{ message.role }}: {{ message.content }}
{% endfor %}
[Response]
{{ answer }}

Reply with the rating alone: a single digit from 1 to 9."""


OTHER_SCALE = re.compile(r"\b(?:(?:from|between) (?:0|1|one|zero)\b.{0,40}?\b(?:to|and) (?:10|100|ten|a hundred)|out of (?:10|100|ten)"
                         r"|(?<![\d.])(?:0|1|one|zero)\s+(?:to|through)\s+(?:10|100|ten|a hundred)(?!\.\d)"
                         r"|(?<![\d.])[01]\s*[-–]\s*(?:10|100)(?!\.\d)|(?:10|100|ten)\s*=\s*(?:best|excellent|perfect|highest))\b", re.IGNORECASE | re.DOTALL)
"""A rubric that asks for a rating on another scale than 1 to 9 (1-10, 0-100, out of 10)."""


def compile_template(text: str | None):
    """The rubric (None: the one that ships), compiled in a sandbox and tried on a small conversation when the run is
    made: a broken one fails, as does one that never shows the candidate (every candidate would get the prompt's one
    score, and every prompt end as a tie). One that asks for another scale than 1 to 9 is warned about."""
    try:
        template = ImmutableSandboxedEnvironment(undefined=StrictUndefined).from_string(text or DEFAULT_TEMPLATE)
        rendered = template.render(conversation=[{"role": "user", "content": "q"}], answer="The first answer.")
        other = template.render(conversation=[{"role": "user", "content": "q"}], answer="Another one, 42.")
    except TemplateError as exc:
        raise RsampleError(f"--judge-template does not render: {first_line(exc)}") from None
    if rendered == other:
        raise RsampleError("--judge-template never shows the candidate ({{ answer }}): every candidate of a prompt would get "
                           "the same score")
    if (other := OTHER_SCALE.search(rendered)) is not None:
        log.warning("--judge-template asks for %r: a judge's score is its expected rating over the single digits 1 to 9 "
                    "(\"10\" is read as \"1\" by many tokenizers); ask for a rating from 1 to 9", other.group(0))
    return template


def judge_prompt(template, conversation: Conversation) -> Conversation:
    """The one user message the judge reads: the rubric filled with the prompt and the candidate."""
    return [{"role": "user", "content": template.render(conversation=conversation[:-1], answer=conversation[-1]["content"])}]


REPLY_OPENINGS = re.compile(r"\s+|\s*(?:<think>)?\s*</think>\s*|<\|channel\|>final<\|message\|>")
"""What a template may write before a reply's text and be taken for part of the reply's opening: a space (Llama 2's),
an empty thought (Qwen3's), the close of a thought its generation prompt opened (Qwen3 Thinking-2507's), the final
channel (gpt-oss's). Anything else (a template that renders replies as another turn) is no opening to trust."""


def reply_opening(tokenizer, template) -> str:
    """What the judge's chat template writes between the opened reply and the rating, appended to every judge prompt so
    that the rating is read where the judge writes it: Qwen3's empty thought before an answer (read where the reply
    opens, the judge is read where it writes `<think>`), the space of Llama 2's `[/INST] 7` (a lone `▁` piece, then the
    digit), gpt-oss's final channel; or, where the generation prompt opens a thought (DeepSeek-R1's `<think>\\n`), its
    close. Found by rendering a reply "7" to a trial prompt; "" where the rating follows the opened reply directly, or
    where the reply's tokens spell that text with the digit (`Ġ7`: the rating tokens read it)."""
    from rsample.workers.backends.templates import opened_thinking

    probe = judge_prompt(template, [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}])
    try:
        opened = tokenizer.apply_chat_template(probe, tokenize=False, add_generation_prompt=True)
        replied = tokenizer.apply_chat_template([*probe, {"role": "assistant", "content": "7"}], tokenize=False)
    except TemplateError:
        return ""
    if replied.startswith(opened) and (digit := replied.find("7", len(opened))) >= 0:
        between = replied[len(opened):digit]
        encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
        with_between = encode(opened + between)
        if REPLY_OPENINGS.fullmatch(between) and encode(replied)[:len(with_between)] == with_between:
            return between
    return f"{THINKING_END}\n\n" if opened_thinking(tokenizer, probe, None, THINKING_END) else ""


def judge_texts(tokenizer, template, opening: str, conversations: list[Conversation]) -> list[str]:
    """Each candidate's judge prompt as the judge's model reads it: the rubric in its chat template, opened for its
    reply and up to where it writes the rating (`reply_opening`)."""
    return [tokenizer.apply_chat_template(judge_prompt(template, conversation), tokenize=False, add_generation_prompt=True) + opening
            for conversation in conversations]


def warn_if_ratings_unlikely(spec: str, rating_share) -> None:
    """Said once, at load: the scores renormalise over the ratings, which hides a judge that would write something
    else where they are read. `rating_share(conversation)` is the ratings' share of its next-token probability there."""
    try:  # a warning only: a rubric that fails on the trial conversation fails on the rows, with their reason
        share = rating_share(TRIAL_CONVERSATION)
    except Exception as exc:
        log.info("%s: the ratings' share of its probability was not tried (%s)", spec, first_line(exc, with_type=True))
        return
    if share < defaults.JUDGE_LEAST_RATING_SHARE:
        log.warning("%s: on a trial conversation, the ratings 1 to 9 take %.1f%% of the judge's probability for the first token "
                    "of its reply: its rubric or chat template may not make it answer with a rating there (a rubric that asks "
                    "for an explanation first, a judge too small), and its scores, read from those shares, would be noise",
                    spec, 100 * share)


def expected_rating(per_rating) -> float:
    """Σ rating × p(rating) / Σ p(rating), over the ratings' probabilities (any iterable of numbers, in RATINGS order)."""
    weights = list(per_rating)
    return sum(rating * weight for rating, weight in zip(RATINGS, weights)) / sum(weights)


def rating_token_ids(tokenizer, spec: str) -> list[list[int]]:
    """For each rating, the ids of the single tokens that spell it, bare or after a space: what encoding the digit
    alone gives, and the vocabulary's own pieces (a SentencePiece tokenizer, as Llama 2's and Mistral's, encodes "7"
    as a prefix piece and a digit, yet the model replies with the digit's piece)."""
    vocabulary = tokenizer.get_vocab()
    ids = []
    for rating in RATINGS:
        spellings = {encoded[0] for text in (str(rating), f" {rating}")
                     if len(encoded := tokenizer.encode(text, add_special_tokens=False)) == 1}
        pieces = (vocabulary.get(piece) for piece in (str(rating), f"\u2581{rating}", f"\u0120{rating}"))  # bare, SentencePiece, byte-level
        spellings |= {token for token in pieces if token is not None and tokenizer.decode([token]).strip() == str(rating)}
        if not spellings:
            raise RsampleError(f"judge {spec!r}: its tokenizer has no single token for the rating {rating}")
        ids.append(sorted(spellings))
    return ids


class TransformersJudge:
    """A causal LM read at the last token of its rendered prompt; batched, pooled and OOM-safe like the reward models."""

    def __init__(self, spec: str, dtype: str = "auto", micro_batch: int = defaults.REWARD_MICRO_BATCH,
                 token_budget: int = defaults.REWARD_TOKEN_BUDGET, template: str | None = None, trust_remote_code: bool = False,
                 pass_cost: int = defaults.REWARD_PASS_COST, max_model_len: int | None = None):
        import torch
        from transformers import AutoModelForCausalLM

        self.spec = spec
        model_spec = spec[len(JUDGE_PREFIX):]
        self.device = resolve_device()
        check_judge_model(spec, trust_remote_code)
        self.tokenizer = load_tokenizer(model_spec, "judge", trust_remote_code)
        self.model = load_weights(AutoModelForCausalLM, model_spec, "judge", resolve_dtype(dtype, self.device), self.device,
                                  trust_remote_code)
        self.context = context_length(self.model.config, self.tokenizer, max_model_len)
        self.template = compile_template(template)
        self.ratings = torch.tensor(RATINGS, dtype=torch.float32, device=self.device)
        self.rating_ids = rating_token_ids(self.tokenizer, spec)
        self.opening = reply_opening(self.tokenizer, self.template)
        self.rounds = device_rounds(self.device, TokenBudget(token_budget, micro_batch, pass_cost), self._forward)
        self._tokenizer_lock = threading.Lock()
        warn_if_ratings_unlikely(spec, self.rating_share)

    def rating_share(self, conversation: Conversation) -> float:
        """The ratings' share of the judge's whole next-token probability where their shares are read: the scores
        renormalise over the ratings alone, which hides a judge that would write something else there."""
        import torch

        text = judge_texts(self.tokenizer, self.template, self.opening, [conversation])[0]
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) >= self.context:
            raise ValueError(f"the trial is {len(ids)} tokens long, over the judge's context")
        ids = torch.tensor([ids], device=self.device)
        with torch.inference_mode():  # as `_forward` calls it
            last = self.model(input_ids=ids, attention_mask=torch.ones_like(ids), logits_to_keep=1).logits[0, -1].double()
        ratings = sorted({token for spellings in self.rating_ids for token in spellings})
        return float(torch.exp(torch.logsumexp(last[ratings], dim=-1) - torch.logsumexp(last, dim=-1)))

    @classmethod
    def from_run(cls, config: RunConfig, model_index: int) -> TransformersJudge:
        models = config.models
        spec = config.reward_models[model_index]
        return cls(spec, models.dtype, models.reward_micro_batch, models.reward_token_budget, config.judge_template,
                   model_path(spec) in config.trust_remote_code, models.reward_pass_cost, models.max_model_len)

    def judge_prompt(self, conversation: Conversation) -> Conversation:
        return judge_prompt(self.template, conversation)

    def score(self, conversations: list[Conversation]) -> list[float | None]:
        with self._tokenizer_lock:
            texts = judge_texts(self.tokenizer, self.template, self.opening, conversations)
            encoded = self.tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
        fitting = [i for i, ids in enumerate(encoded) if len(ids) < self.context]  # room for the rating, as vLLM needs
        scores: list[float | None] = [None] * len(conversations)
        for index, value in zip(fitting, self.rounds.score([encoded[i] for i in fitting])):
            scores[index] = value
        return scores

    def _forward(self, batch: list[list[int]]):
        """Each sequence's expected rating, as a float32 tensor on the device (not yet read).

        Left padding with positions counted from each sequence's first real token, and the model's own forward
        (its head, its final soft-capping, if any) asked for the last position's logits alone."""
        import torch

        input_ids, attention_mask, _ = padded_on_device(batch, self.device, left=True)
        position_ids = (attention_mask.cumsum(dim=-1) - 1).clamp(min=0)
        with torch.inference_mode():
            logits = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, logits_to_keep=1).logits
            last = logits[:, -1].float()
            # each rating's share of the ratings' probability, from the logits: a softmax over the whole vocabulary
            # first would round every rating to 0 where the judge prefers another token by ~100 logits (0/0 = NaN)
            per_rating = torch.stack([torch.logsumexp(last[:, ids], dim=-1) for ids in self.rating_ids], dim=-1)
            return (torch.softmax(per_rating, dim=-1) * self.ratings).sum(dim=-1)
