"""Rewards are read at each conversation's true last token, whatever the reward tokenizer's padding, and in full
precision: checked against `oracles.reference_reward`, one unpadded sequence at a time."""

from __future__ import annotations

import pytest
import torch
from oracles import reference_reward, reward_token_ids
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from rsample.workers.backends.tiny_models import build_reward_model
from rsample.workers.backends.transformers_reward import TransformersRewardModel

SHORT = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]
LONG = [{"role": "user", "content": "write a poem about the river " * 12}, {"role": "assistant", "content": "the river runs to the city " * 14}]
CONVERSATIONS = [
    SHORT,
    LONG,
    [{"role": "system", "content": "be brief"}, {"role": "user", "content": "explain why"}, {"role": "assistant", "content": "the answer"}],
    [{"role": "user", "content": "name a city"}, {"role": "assistant", "content": "a city"}, {"role": "user", "content": "another"},
     {"role": "assistant", "content": "river city music"}],
    [{"role": "user", "content": "list three numbers"}, {"role": "assistant", "content": ""}],
    [{"role": "user", "content": "the the the"}, {"role": "assistant", "content": "the the"}],
]

VARIANTS = {
    "no pad token": {"pad": "none"},
    "pad is EOS": {"pad": "eos"},
    "own pad token, saved left padding": {"pad": "own"},
    "config pad id is an ordinary word": {"pad": "own", "config_pad_token": "the"},
    "config pad id is EOS, tokenizer has none": {"pad": "none", "config_pad_token": "</turn>"},
}


@pytest.fixture(scope="module", params=list(VARIANTS))
def reward_model(request, tmp_path_factory):
    path = build_reward_model(tmp_path_factory.mktemp("rm") / "reward", seed=3, **VARIANTS[request.param])
    return str(path)


def test_the_tiny_reward_model_looks_like_a_real_one(reward_model):
    tokenizer = AutoTokenizer.from_pretrained(reward_model)
    ids = reward_token_ids(tokenizer, SHORT)
    assert ids[-1] == tokenizer.eos_token_id  # the template ends with EOS, which is the config's pad in some variants
    assert ids[0] == tokenizer.bos_token_id and ids[1] != tokenizer.bos_token_id  # one BOS, from the template
    assert tokenizer("hello")["input_ids"][0] == tokenizer.bos_token_id  # the tokenizer adds one to plain text


@pytest.mark.parametrize("micro_batch, token_budget", [(1, 16384), (3, 16384), (16, 16384), (64, 200)])
def test_scores_are_read_at_the_last_token_that_is_not_padding(reward_model, micro_batch, token_budget):
    model = AutoModelForSequenceClassification.from_pretrained(reward_model, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(reward_model)
    expected = [reference_reward(model, tokenizer, c) for c in CONVERSATIONS]
    lengths = [len(reward_token_ids(tokenizer, c)) for c in CONVERSATIONS]
    assert max(lengths) > 8 * min(lengths)  # very different lengths share a micro-batch
    scores = TransformersRewardModel(reward_model, "float32", micro_batch, token_budget).score(CONVERSATIONS)
    assert scores == pytest.approx(expected, abs=1e-5)


def test_scores_are_what_the_models_own_forward_gives_one_conversation(reward_model):
    """transformers' forward of one unpadded conversation is how its trainers scored it, and how its card scores it:
    with a config whose pad token is the EOS that ends every turn, that is the token before it."""
    model = AutoModelForSequenceClassification.from_pretrained(reward_model, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(reward_model)
    with torch.no_grad():
        own = [float(model(input_ids=torch.tensor([reward_token_ids(tokenizer, c)])).logits[0, 0]) for c in CONVERSATIONS]
    assert TransformersRewardModel(reward_model, "float32", 16).score(CONVERSATIONS) == pytest.approx(own, abs=1e-5)
    if model.config.pad_token_id == tokenizer.eos_token_id:  # the variants where it matters: not the last token
        with torch.no_grad():
            at_eos = float(model.model(input_ids=torch.tensor([reward_token_ids(tokenizer, SHORT)])).last_hidden_state[0, -1]
                           @ model.score.weight[0])
        assert abs(at_eos - own[0]) > 1e-3


def test_bf16_scores_keep_full_precision(tmp_path):
    """A bf16 model's trunk is bf16, but its head runs in float32: scores are the head of the bf16 hidden state to
    fp32 precision, close to the fp32 model's, and not rounded to the bf16 grid."""
    path = str(build_reward_model(tmp_path / "reward", seed=4, pad="eos"))
    conversations = CONVERSATIONS * 3
    bf16_scores = TransformersRewardModel(path, "bfloat16", micro_batch=1).score(conversations)  # the oracle's shapes
    batched_bf16_scores = TransformersRewardModel(path, "bfloat16").score(conversations)
    fp32_scores = TransformersRewardModel(path, "float32").score(conversations)

    model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.bfloat16).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    expected = [reference_reward(model, tokenizer, c) for c in conversations]  # bf16 trunk, float64 head
    assert bf16_scores == pytest.approx(expected, rel=1e-5, abs=1e-6)
    for scores in (bf16_scores, batched_bf16_scores):
        assert scores == pytest.approx(fp32_scores, abs=0.05)  # only the trunk's bf16 rounding separates them
        off_grid = [s for s in scores if torch.tensor(s).to(torch.bfloat16).item() != s]
        assert len(off_grid) >= len(scores) - 1


def test_slots_scoring_at_once_get_the_scores_one_gets_alone(tmp_path):
    """A reward worker's slots share one model, whose rounds score their jobs together: none disturbs the others."""
    from concurrent.futures import ThreadPoolExecutor

    model = TransformersRewardModel(str(build_reward_model(tmp_path / "reward", seed=5, pad="own")), "float32", token_budget=256)
    jobs = [CONVERSATIONS[k:] + CONVERSATIONS[:k] for k in range(len(CONVERSATIONS))] * 4
    alone = [model.score(job) for job in jobs]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(model.score, jobs))
    for expected, got in zip(alone, together):
        assert got == pytest.approx(expected, abs=1e-6)


def test_a_decoder_scores_its_batches_without_a_mask_and_an_encoder_keeps_it(tmp_path):
    """Padding after a decoder's real tokens cannot reach them, so its batches need no attention mask (SDPA's causal
    kernel, no mask read back per pass); a bidirectional trunk's real tokens see the padding, so it keeps the mask.
    The scores of the mask-free batches are those of one unpadded sequence at a time (the oracle)."""
    from transformers import BertConfig, BertModel

    from rsample.workers.backends.transformers_reward import padding_is_invisible

    encoder = BertModel(BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)).eval()
    assert not padding_is_invisible(encoder, "cpu")
    path = str(build_reward_model(tmp_path / "reward", seed=6, pad="none"))
    for dtype in ("float32", "bfloat16"):
        model = TransformersRewardModel(path, dtype, micro_batch=16)
        assert not model.needs_mask, dtype
    scores = TransformersRewardModel(path, "float32", micro_batch=16).score(CONVERSATIONS)
    oracle = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert scores == pytest.approx([reference_reward(oracle, tokenizer, c) for c in CONVERSATIONS], abs=1e-5)


def test_a_score_that_overflows_leaves_its_candidate_unscored_and_no_pair_is_built_on_it(tmp_path, caplog):
    """A reward model whose activations overflow (as fp16 trunks do) gives NaN: it must rank nothing, and never reach
    the output, where strict JSON readers refuse `NaN`."""
    import json
    import math

    from rsample.workers.common.config import DataSelection, RunConfig
    from rsample.workers.common.messages import Candidate, GeneratedBatch, GeneratedPrompt, PromptRecord
    from rsample.workers.stages.aggregate import aggregate_batch
    from rsample.workers.stages.score import score_isolating_failures

    path = build_reward_model(tmp_path / "rm", seed=7, pad="none")
    model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(path)
    with torch.no_grad():
        model.model.embed_tokens.weight[tokenizer.convert_tokens_to_ids("Ġmusic")] = float("inf")  # the word " music" alone
    model.save_pretrained(tmp_path / "overflows")
    tokenizer.save_pretrained(tmp_path / "overflows")
    backend = TransformersRewardModel(str(tmp_path / "overflows"), "float32")
    prompt = [{"role": "user", "content": "name a sound"}]
    texts = ("river music", "the river", "a city")
    raw = backend.score([[*prompt, {"role": "assistant", "content": text}] for text in texts])
    assert math.isnan(raw[0]) and all(math.isfinite(score) for score in raw[1:])  # the model's own output

    record = PromptRecord("p", prompt, row_index=0)
    candidates = [Candidate(text, [i], num_tokens=1, finish_reason="stop") for i, text in enumerate(texts)]
    batch = GeneratedBatch("b", [GeneratedPrompt(record, candidates, 3, None)])
    verdicts = score_isolating_failures(backend, 0, batch.prompts)
    assert verdicts["p"]["scores"] == [None, *raw[1:]]
    assert "reward model 0 gave 1 candidate(s) a score that is not a finite number" in caplog.text
    config = RunConfig(run_id="r", data=DataSelection("d"), policy="p", reward_models=("rm",))
    (row,) = aggregate_batch(config, batch, [verdicts]).rows
    best, worst = (1, 2) if raw[1] > raw[2] else (2, 1)
    assert (row["chosen"][-1]["content"], row["rejected"][-1]["content"]) == (candidates[best].text, candidates[worst].text)
    json.dumps(row, allow_nan=False)


def test_a_candidate_too_big_for_the_device_alone_costs_only_itself(tmp_path):
    """It fits the context, not the device's memory: it is left unscored as one over the context is, and the other
    candidates of its job keep their scores (it used to fail every prompt of the job, on every retry)."""
    from oracles import reference_reward

    from rsample.workers.common.messages import Candidate, GeneratedPrompt, PromptRecord
    from rsample.workers.stages.score import score_isolating_failures

    path = str(build_reward_model(tmp_path / "rm", seed=3))
    backend = TransformersRewardModel(path, "float32", token_budget=4096)
    forward = backend.rounds._run_batch

    def small_device(batch):  # memory for one sequence of 60 tokens
        if max(len(ids) for ids in batch) > 60:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return forward(batch)

    backend.rounds._run_batch = small_device
    texts = {"a": ["river city", "a city"], "b": ["the river runs " * 30, "ok"], "c": ["x", "y"]}
    prompts = [GeneratedPrompt(PromptRecord(pid, [{"role": "user", "content": "q"}], row_index=row),
                               [Candidate(text, [i], num_tokens=2, finish_reason="stop") for i, text in enumerate(candidates)], 2, None)
               for row, (pid, candidates) in enumerate(texts.items())]
    verdicts = score_isolating_failures(backend, 0, prompts)
    model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    for pid, candidates in texts.items():
        expected = [None if len(text) > 100 else reference_reward(model, tokenizer, [{"role": "user", "content": "q"},
                                                                                       {"role": "assistant", "content": text}])
                    for text in candidates]
        assert verdicts[pid]["skip_reason"] is None
        assert verdicts[pid]["scores"] == pytest.approx(expected, abs=1e-5)


def test_a_job_whose_time_is_up_is_not_retried_prompt_by_prompt():
    """RQ's job timer raises JobTimeoutException in the job's thread: caught as a batch failure, the prompts were then
    retried one by one with no timer left, and a check that never ended kept the job claimed for ever."""
    from rq.timeouts import JobTimeoutException

    from rsample.workers.stages.isolation import run_isolating_failures

    retried = []

    def run_all(items):
        raise JobTimeoutException("Task exceeded maximum timeout value (60 seconds)")

    with pytest.raises(JobTimeoutException):
        run_isolating_failures([1, 2, 3], run_all, retried.append, lambda item, why: None, "scoring")
    assert retried == []

    def run_one(item):
        raise JobTimeoutException("Task exceeded maximum timeout value (60 seconds)")

    with pytest.raises(JobTimeoutException):
        run_isolating_failures([1, 2, 3], lambda items: 1 / 0, run_one, lambda item, why: None, "scoring")


@pytest.mark.parametrize("left", [False, True])
def test_a_padded_batch_holds_every_sequence_as_it_is_with_zeros_around_it(left):
    from rsample.workers.backends.transformers_reward import padded_on_device

    batch = [[5], [7, 8, 9, 10], [128255, 3]]
    input_ids, attention_mask, lengths = padded_on_device(batch, "cpu", left=left)
    padded = [[0] * (4 - len(ids)) + ids if left else ids + [0] * (4 - len(ids)) for ids in batch]
    masks = [[int(token_index >= 4 - len(ids)) if left else int(token_index < len(ids)) for token_index in range(4)] for ids in batch]
    assert input_ids.tolist() == padded and input_ids.dtype == torch.long
    assert attention_mask.tolist() == masks and lengths.tolist() == [1, 4, 2]
