"""`--reward-backend transformers`: an `AutoModelForSequenceClassification` whose single logit is the score.

The score is read where the model's own forward reads an unpadded conversation: its last token that is not the
config's pad token (`render_conversations`). In a batch, that token is found from each conversation's length,
never by looking for pad ids in the padded batch, so the batch's padding cannot move it. The head runs in float32 on the trunk's last hidden state, so a bf16 model's scores are not rounded to the bf16
grid (a step of 1/16 between 8 and 16, where candidates would tie). Batches are right-padded, and a decoder's
(causal) trunk gets no attention mask at all: padding after a real token never reaches it, and without a mask
SDPA runs its causal kernel and the host never waits for the device between passes (`padding_is_invisible`).
"""

from __future__ import annotations

import logging

from rsample.workers.backends.batching import TokenBudget
from rsample.workers.backends.device_clock import pass_clock
from rsample.workers.backends.models import check_reward_model, context_length, load_tokenizer, load_weights, resolve_device, resolve_dtype
from rsample.workers.backends.render_processes import make_renderer
from rsample.workers.backends.scoring_rounds import ScoringRounds
from rsample.workers.backends.templates import render_conversations
from rsample.workers.common import defaults
from rsample.workers.common.config import RunConfig
from rsample.workers.common.errors import RsampleError, first_line
from rsample.workers.common.messages import Conversation

log = logging.getLogger(__name__)


TRIAL_CONVERSATIONS = [
    [{"role": "user", "content": "Hello."}, {"role": "assistant", "content": "Hello!"}],
    [{"role": "user", "content": "Name three rivers of Europe."}, {"role": "assistant", "content": "The Danube, the Rhine and the Seine."}],
]


def linear_score_head(model):
    """The model's trunk and its one-output linear head, when it has the usual layout (`base_model` + `score`, as
    every decoder `*ForSequenceClassification` of transformers) and reads them as transformers' own forward does;
    else None. A class of its own (`--trust-remote-code`) with that layout may pool, scale or pick its token otherwise
    in a forward of its own, which must then run: only a forward that transformers defines is known to read the head
    at the last token."""
    import torch

    head = getattr(model, "score", None)
    trunk = getattr(model, "base_model", None)
    forward_from = getattr(type(model).forward, "__module__", "") or ""
    if (isinstance(head, torch.nn.Linear) and head.out_features == 1 and trunk is not None and trunk is not model
            and forward_from.startswith("transformers.")):  # remote code is loaded as `transformers_modules.…`
        return trunk, head
    return None


class TransformersRewardModel:
    """Conversations rendered with the reward model's own chat template, length-sorted into right-padded batches that
    fill a token budget.

    Thread-safe for a worker's slots: each renders and tokenizes its job (or has it done in processes of their own,
    `render_processes`) and hands it to `ScoringRounds`, whose one thread runs every waiting job's sequences
    together on the device, so the device is not left waiting for the CPU and short jobs do not batch badly.
    """

    def __init__(self, spec: str, dtype: str = "auto", micro_batch: int = defaults.REWARD_MICRO_BATCH,
                 token_budget: int = defaults.REWARD_TOKEN_BUDGET, trust_remote_code: bool = False,
                 pass_cost: int = defaults.REWARD_PASS_COST, max_model_len: int | None = None):
        from transformers import AutoModelForSequenceClassification

        check_reward_model(spec, trust_remote_code)
        self.spec = spec
        self.device = resolve_device()
        self.tokenizer = load_tokenizer(spec, "reward", trust_remote_code)
        self.model = load_weights(AutoModelForSequenceClassification, spec, "reward", resolve_dtype(dtype, self.device), self.device,
                                  trust_remote_code)
        self.context = context_length(self.model.config, self.tokenizer, max_model_len)
        self.pad_token_id = self.model.config.get_text_config().pad_token_id  # where its forward stops reading
        self.head = linear_score_head(self.model)
        if self.head is not None and not self._head_reads_as_forward():
            log.warning("reward model %r: its own forward does not read its score head at the last token (it pools, scales or "
                        "hooks otherwise): it scores one conversation at a time through that forward", spec)
            self.head = None
        if self.head is None:  # unknown layout: one unpadded sequence at a time, cut after its last non-pad token
            self.model.config.pad_token_id = None
            micro_batch = 1
            self._check_output()
        self.needs_mask = self.head is None or not padding_is_invisible(self.head[0], self.device)
        self.rounds = device_rounds(self.device, TokenBudget(token_budget, micro_batch, pass_cost), self._forward)
        self.renderer = make_renderer(spec, self.tokenizer, trust_remote_code, self.pad_token_id)

    @classmethod
    def from_run(cls, config: RunConfig, model_index: int) -> TransformersRewardModel:
        models = config.models
        spec = config.reward_models[model_index]
        return cls(spec, models.dtype, models.reward_micro_batch, models.reward_token_budget, spec in config.trust_remote_code,
                   models.reward_pass_cost, models.max_model_len)

    def score(self, conversations: list[Conversation]) -> list[float | None]:
        encoded = self.renderer.render(conversations)
        fitting = [i for i, ids in enumerate(encoded) if len(ids) <= self.context]
        scores: list[float | None] = [None] * len(conversations)
        for index, value in zip(fitting, self.rounds.score([encoded[i] for i in fitting])):
            scores[index] = value
        return scores

    def close(self) -> None:
        self.renderer.close()

    def _head_reads_as_forward(self) -> bool:
        """Whether the head read at the last token scores as the model's own forward does, on two trial conversations
        (a transformers class may pool by its config, as Cohere's Compass does; remote code may subclass one and scale
        its head or hook its output): only then may batches skip that forward."""
        import torch

        trunk, head = self.head
        try:
            for ids in render_conversations(self.tokenizer, TRIAL_CONVERSATIONS, self.pad_token_id):
                input_ids = torch.tensor([ids], device=self.device)
                with torch.inference_mode():
                    own = one_score_each(self.model(input_ids=input_ids).logits, 1, self.spec)
                    fast = head_scores(head, trunk(input_ids=input_ids).last_hidden_state[:, -1])
                if not torch.allclose(fast, own, rtol=2e-2, atol=1e-3):  # the head in float32 here, maybe bf16 in its forward
                    return False
        except Exception as exc:  # its own forward fails alone: `_check_output` says so
            log.info("reward model %r: the batched reading was not tried (%s)", self.spec, first_line(exc, with_type=True))
            return False
        return True

    def _check_output(self) -> None:
        """A model with its own forward must give one score per conversation: found out at load, not in every job."""
        import torch

        ids = render_conversations(self.tokenizer, [[{"role": "user", "content": "Hello."}, {"role": "assistant", "content": "Hello!"}]])[0]
        try:
            with torch.inference_mode():
                logits = self.model(input_ids=torch.tensor([ids], device=self.device)).logits
        except Exception as exc:
            raise RsampleError(f"reward model {self.spec!r} fails on a one-turn conversation: {first_line(exc)}") from None
        one_score_each(logits, 1, self.spec)

    def _forward(self, batch: list[list[int]]):
        """The batch's scores as a float32 tensor on the device, not yet read (reading would wait for the device)."""
        import torch

        input_ids, attention_mask, lengths = padded_on_device(batch, self.device)
        with torch.inference_mode():
            if self.head is None:
                return one_score_each(self.model(input_ids=input_ids).logits, len(batch), self.spec)
            trunk, head = self.head
            hidden = trunk(input_ids=input_ids, attention_mask=attention_mask if self.needs_mask else None).last_hidden_state
            return head_scores(head, hidden[torch.arange(len(batch), device=self.device), lengths - 1])


def head_scores(head, last):
    """The one-output head on each sequence's last hidden state, in float32 (see the module's docstring)."""
    import torch

    bias = None if head.bias is None else head.bias.float()
    return torch.nn.functional.linear(last.float(), head.weight.float(), bias)[:, 0]


def one_score_each(logits, rows: int, spec: str):
    """A model's own output as one float32 score per conversation: logits of shape (rows, 1), or (rows,) as ArmoRM
    returns its gated score."""
    if logits.dim() == 1 and len(logits) == rows:
        return logits.float()
    if logits.dim() == 2 and logits.shape == (rows, 1):
        return logits[:, 0].float()
    raise RsampleError(f"reward model {spec!r} returns logits of shape {tuple(logits.shape)} for {rows} conversation(s); "
                       "rsample needs one score per conversation")


def padding_is_invisible(trunk, device: str, prefix: int = 8, tail: int = 8) -> bool:
    """Whether a right-padded sequence's real tokens are blind to the padding after them (a decoder's causal
    attention): then a batch needs no attention mask, and SDPA runs its causal kernel (flash attention on a GPU)
    without a mask to build, and without transformers reading the mask back at every pass to look for padding,
    which waits for the device. Tried once, at load: one prefix followed by two different tails must give the same
    hidden states over the prefix. A model that looks at later tokens (an encoder), or that fails the trial, keeps
    its mask."""
    import torch

    try:
        vocabulary = trunk.config.vocab_size
        generator = torch.Generator().manual_seed(0)
        head = torch.randint(vocabulary, (1, prefix), generator=generator).expand(2, prefix)
        ids = torch.cat([head, torch.randint(vocabulary, (2, tail), generator=generator)], dim=1).to(device)
        with torch.inference_mode():
            hidden = trunk(input_ids=ids).last_hidden_state[:, :prefix].float()
        scale = hidden.abs().max().item()
        return scale > 0 and (hidden[0] - hidden[1]).abs().max().item() <= 1e-3 * scale
    except Exception as exc:  # a trunk that wants a mask, or other inputs: it keeps the mask
        log.info("reward model trunk keeps its attention mask (the causality trial failed: %s)", first_line(exc))
        return False


def padded_on_device(batch: list[list[int]], device: str, left: bool = False):
    """(input_ids, attention_mask, lengths) of padded sequences on the device, copied without waiting.

    Right padding (the default): every real token keeps the positions it has alone, and causal attention never
    lets the padding (masked, any id) reach them. The pad id is therefore irrelevant; 0 is always a valid one.
    Left padding puts every sequence's last token in the last column (a caller then counts positions from each
    sequence's first real token).
    """
    import numpy
    import torch

    # numpy, not a torch tensor per row: the device thread builds this before every pass, and on a GPU its host time
    # (a few ms a pass the torch way, a tenth of that here) is time the device may wait for
    host_lengths = numpy.fromiter(map(len, batch), dtype=numpy.int64, count=len(batch))
    width = int(host_lengths.max())
    host = numpy.zeros((len(batch), width), dtype=numpy.int64)
    for row, ids in enumerate(batch):
        if left:
            host[row, width - len(ids):] = ids
        else:
            host[row, :len(ids)] = ids
    host_ids, lengths = torch.from_numpy(host), torch.from_numpy(host_lengths)
    if device == "cuda":
        host_ids, lengths = host_ids.pin_memory(), lengths.pin_memory()
    input_ids = host_ids.to(device, non_blocking=True)
    lengths = lengths.to(device, non_blocking=True)
    columns = torch.arange(width, device=device)[None, :]
    attention_mask = (columns >= (width - lengths)[:, None] if left else columns < lengths[:, None]).long()
    return input_ids, attention_mask, lengths


def device_rounds(device: str, budget: TokenBudget, forward) -> ScoringRounds:
    """Scoring rounds for a forward pass that returns a batch's scores as a device tensor, read once per round, and
    timed by the GPU's own events where the device is one."""
    return ScoringRounds(budget, forward, read_scores, clock=pass_clock(device))


def read_scores(per_batch) -> list[float]:
    """A round's scores, read from the device once: its batches were queued back to back."""
    import torch

    return torch.cat(per_batch).tolist()
