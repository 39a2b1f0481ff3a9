"""Both backends sample the same distribution: the policy's generation_config defaults, applied alike (explicit flags
override), and a stop at every EOS id the policy declares."""

from __future__ import annotations

import pytest
import torch
from conftest import rsample

from rsample.workers.backends.base import Completion
from rsample.workers.backends.tiny_models import build_policy
from rsample.workers.backends.transformers_generation import TransformersGenerator
from rsample.workers.common.config import SamplingConfig, resolve_sampling
from rsample.workers.runtime.run_state import load_run

PROMPTS = [[{"role": "user", "content": "write a poem about the river"}], [{"role": "user", "content": "name a city"}]]


@pytest.fixture(scope="module")
def greedy_policy(tmp_path_factory):
    """A policy whose authors ship top_k=1 (greedy) and a repetition penalty."""
    return str(build_policy(tmp_path_factory.mktemp("policy") / "greedy", generation_defaults={"top_k": 1, "repetition_penalty": 1.3,
                                                                                               "temperature": 0.9}))


def test_flags_then_policy_defaults_then_rsample_defaults():
    sampling, sources = resolve_sampling({"temperature": 0.5, "top_p": None, "top_k": None, "min_p": None, "repetition_penalty": None},
                                         {"temperature": 0.9, "top_k": 20, "repetition_penalty": 1.1}, n=4, max_new_tokens=8)
    assert (sampling.temperature, sampling.top_k, sampling.repetition_penalty, sampling.top_p, sampling.min_p) == (0.5, 20, 1.1, 1.0, 0.0)
    assert sources == {"temperature": "command line", "top_p": "rsample default", "top_k": "policy generation_config",
                       "min_p": "rsample default", "repetition_penalty": "policy generation_config"}


def test_a_run_stores_the_policy_defaults_it_will_sample_with(greedy_policy, chat_dataset, redis_server, redis_client):
    run_id = rsample("enqueue", "--redis-url", redis_server.url, "--dataset", str(chat_dataset), "--policy", greedy_policy,
                     "--reward-model", "r", "--reward-backend", "length", "--top-p", "0.95", "--max-new-tokens", "16").stdout.strip()
    sampling = load_run(redis_client, run_id).sampling
    assert (sampling.top_k, sampling.repetition_penalty, sampling.temperature, sampling.top_p) == (1, 1.3, 0.9, 0.95)


def test_transformers_applies_the_resolved_settings_and_nothing_else(greedy_policy):
    generator = TransformersGenerator(greedy_policy, "float32")
    greedy = resolve_sampling({}, {"top_k": 1}, n=4, max_new_tokens=10)[0]
    for result in generator.generate(PROMPTS, greedy, seed=1):
        assert len({c.text for c in result.completions}) == 1  # top_k=1: every sample is the greedy one
    sampled = SamplingConfig(n=4, temperature=1.0, max_new_tokens=10, top_k=0)  # an explicit --top-k 0 wins
    assert any(len({c.text for c in r.completions}) > 1 for r in generator.generate(PROMPTS, sampled, seed=1))


def eos2_policy(directory, prompt):
    """A policy whose first token after `prompt` is, by a wide margin, its second EOS id (not the tokenizer's EOS)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = build_policy(directory)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    second_eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert second_eos != tokenizer.eos_token_id and second_eos in model.generation_config.eos_token_id
    ids = tokenizer(tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True), add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        hidden = model.model(**ids).last_hidden_state[0, -1]
        model.lm_head.weight[second_eos] = 50 * hidden / hidden.norm()
    model.save_pretrained(path)
    return str(path), second_eos


def test_a_completion_ends_at_any_declared_eos(tmp_path):
    path, _ = eos2_policy(tmp_path / "policy", PROMPTS[0])
    result = TransformersGenerator(path, "float32").generate(PROMPTS[:1], SamplingConfig(n=4, temperature=1.0, max_new_tokens=10), seed=0)[0]
    assert [(c.text, c.num_tokens, c.finish_reason) for c in result.completions] == [("", 1, "stop")] * 4


def test_a_checkpoint_without_generation_config_ends_at_the_eos_ids_of_its_config_json(tmp_path):
    """mergekit writes no generation_config.json: the EOS ids are then config.json's (Llama 3.1: three), which
    transformers' own `generate` and vLLM both stop at."""
    import json

    from transformers import AutoModelForCausalLM, AutoTokenizer

    path, second_eos = eos2_policy(tmp_path / "policy", PROMPTS[0])
    (tmp_path / "policy" / "generation_config.json").unlink()
    tokenizer = AutoTokenizer.from_pretrained(path)
    config = json.loads((tmp_path / "policy" / "config.json").read_text())
    (tmp_path / "policy" / "config.json").write_text(json.dumps({**config, "eos_token_id": [tokenizer.eos_token_id, second_eos]}))
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    ids = tokenizer(tokenizer.apply_chat_template(PROMPTS[0], tokenize=False, add_generation_prompt=True), add_special_tokens=False,
                    return_tensors="pt")
    torch.manual_seed(0)
    own = model.generate(**ids, do_sample=True, max_new_tokens=10)[0, ids["input_ids"].shape[1]:].tolist()
    assert own == [second_eos]  # transformers' own generate stops there
    result = TransformersGenerator(path, "float32").generate(PROMPTS[:1], SamplingConfig(n=4, temperature=1.0, max_new_tokens=10), seed=0)[0]
    assert [(c.text, c.num_tokens, c.finish_reason) for c in result.completions] == [("", 1, "stop")] * 4


def test_any_seed_samples_and_a_small_one_samples_as_torch_seeded_with_it_does(greedy_policy):
    """`--seed` is any int; torch takes 64 bits: a nanosecond timestamp as the seed made every transformers job fail."""
    from rsample.workers.common.config import DataSelection, RunConfig
    from rsample.workers.stages.generate import batch_seed

    def seed_of(seed, first_row):
        return batch_seed(RunConfig(run_id="r", data=DataSelection("d"), policy="p", reward_models=("rm",),
                                    sampling=SamplingConfig(seed=seed)), first_row)

    generator = TransformersGenerator(greedy_policy, "float32")
    sampling = SamplingConfig(n=2, temperature=1.0, max_new_tokens=4)
    for seed in (1_764_000_000_123_456_789, 2**70, -3):
        [result] = generator.generate(PROMPTS[:1], sampling, seed=seed_of(seed, 16))
        assert len(result.completions) == 2
    assert seed_of(42, 16) == 42 * 1_000_003 + 16  # unchanged where it fitted: a run resumed across versions samples alike


def test_a_completion_that_ends_inside_a_character_leaves_its_bytes_out_whether_cut_or_stopped(greedy_policy):
    """As vLLM writes it: `decode` marks the incomplete bytes U+FFFD; a completion of nothing else is empty (never chosen)."""
    from transformers import AutoTokenizer

    generator = TransformersGenerator(greedy_policy, "float32")
    tokenizer = AutoTokenizer.from_pretrained(greedy_policy)
    letter, first_byte_of_e_acute = tokenizer.convert_tokens_to_ids(["a", "Ã"])  # byte-level: "é" is C3 A9
    eos = tokenizer.eos_token_id
    assert tokenizer.decode([letter, first_byte_of_e_acute]) == "a\ufffd"
    assert generator._completion([letter, first_byte_of_e_acute]) == Completion("a", 2, "length")
    assert generator._completion([letter, first_byte_of_e_acute, eos, letter]) == Completion("a", 3, "stop")
    assert generator._completion([first_byte_of_e_acute, eos]) == Completion("", 2, "stop")


def test_a_prompt_over_max_prompt_tokens_is_skipped_with_its_reason(greedy_policy):
    generator = TransformersGenerator(greedy_policy, "float32")
    long_prompt = [{"role": "user", "content": "river city music " * 12}]  # well inside the 256-token context
    sampling = SamplingConfig(n=2, temperature=1.0, max_new_tokens=4, max_prompt_tokens=30)
    short, long = generator.generate([PROMPTS[1], long_prompt], sampling, seed=0)
    assert long.completions == [] and long.skip_reason == "prompt longer than --max-prompt-tokens (30)"
    assert short.skip_reason is None and len(short.completions) == 2


def test_what_else_the_policy_ships_in_its_generation_config_does_not_apply(tmp_path):
    """`generate` applies a generation_config.json's every field; vLLM applies none but the sampling settings the run
    resolved. The same weights with `no_repeat_ngram_size` and `min_new_tokens` shipped must sample the same text."""
    plain = TransformersGenerator(str(build_policy(tmp_path / "plain")), "float32")
    shipped = TransformersGenerator(str(build_policy(tmp_path / "shipped", generation_defaults={"no_repeat_ngram_size": 1,
                                                                                                "min_new_tokens": 40})), "float32")
    sampling = SamplingConfig(n=8, temperature=1.0, max_new_tokens=40)
    texts = [[(c.text, c.finish_reason) for c in r.completions] for r in plain.generate(PROMPTS, sampling, seed=3)]
    assert [[(c.text, c.finish_reason) for c in r.completions] for r in shipped.generate(PROMPTS, sampling, seed=3)] == texts
    assert any(reason == "stop" for prompt in texts for _, reason in prompt)  # min_new_tokens 40 would have forbidden it


def test_the_settings_are_applied_in_vllms_order_and_never_to_the_padding():
    """By hand: probabilities .5, .26, .16, .08. vLLM cuts min_p .2 first (below .1: the last), then top_p .8 over the
    rest (.543, .283, .174: the cumulative .174 from the least likely is under .2, so it goes too); transformers'
    own order (top_p first) kept three. The repetition penalty counts the prompt's tokens, not its left padding."""
    from rsample.workers.backends.sampling_order import vllm_order_processor

    scores = torch.tensor([[0.5, 0.26, 0.16, 0.08]]).log()
    cut = vllm_order_processor(SamplingConfig(n=2, temperature=1.0, top_p=0.8, min_p=0.2), torch.tensor([0]))(torch.tensor([[0]]), scores)
    assert torch.isfinite(cut).tolist() == [[True, True, False, False]]
    assert torch.allclose(cut[0, :2], scores[0, :2])  # what is kept keeps its logit: the draw renormalises

    logits = torch.tensor([[2.0, 2.0, -1.0, -1.0], [2.0, 2.0, -1.0, -1.0]])
    ids = torch.tensor([[1, 1, 0, 2], [3, 0, 0, 2]])  # row 0: two pads (id 1) before its prompt; row 1: none
    penalized = vllm_order_processor(SamplingConfig(n=2, temperature=2.0, repetition_penalty=2.0), torch.tensor([2, 0]))(ids, logits)
    # seen: row 0 ids 0 and 2 (not the pad 1); row 1 ids 3, 0, 2. Positive logits halve, negative double; then / 2
    assert penalized.tolist() == [[0.5, 1.0, -1.0, -0.5], [0.5, 1.0, -1.0, -1.0]]
    top_two = vllm_order_processor(SamplingConfig(n=2, temperature=1.0, top_k=2), torch.tensor([0]))(torch.tensor([[0]]), scores)
    assert torch.isfinite(top_two).tolist() == [[True, True, False, False]]


def test_a_padded_prompt_samples_as_it_would_alone(tmp_path):
    """A policy without a pad token pads with its EOS; transformers releases before 5.2x counted that padding towards
    the repetition penalty, so a padded prompt's EOS was penalised and its completions ran longer. top_k 1: greedy."""
    from transformers import AutoTokenizer

    path = build_policy(tmp_path / "no-pad")
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.pad_token = None
    tokenizer.save_pretrained(path)
    generator = TransformersGenerator(str(path), "float32")
    assert generator.tokenizer.pad_token_id == generator.tokenizer.eos_token_id
    greedy = SamplingConfig(n=2, temperature=1.0, top_k=1, repetition_penalty=1.5, max_new_tokens=12)
    short, long = [{"role": "user", "content": "hi"}], [{"role": "user", "content": "write a poem about the river and the city"}]
    alone = generator.generate([short], greedy, seed=0)[0]
    batched = generator.generate([long, short], greedy, seed=0)[1]
    assert [(c.text, c.finish_reason) for c in batched.completions] == [(c.text, c.finish_reason) for c in alone.completions]


def test_a_policy_with_neither_eos_nor_pad_token_still_generates(tmp_path):
    from transformers import AutoTokenizer

    path = build_policy(tmp_path / "bare")
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.pad_token = None
    tokenizer.eos_token = None
    tokenizer.save_pretrained(path)
    generator = TransformersGenerator(str(path), "float32")
    results = generator.generate(PROMPTS, SamplingConfig(n=2, temperature=1.0, max_new_tokens=5), seed=0)
    assert [len(r.completions) for r in results] == [2, 2] and all(r.skip_reason is None for r in results)


def test_jobs_of_a_workers_slots_sample_as_they_would_one_after_the_other(greedy_policy):
    """Slots run jobs on threads of one process, which share torch's one random generator: a job's completions must
    still follow from its seed alone."""
    import threading

    generator = TransformersGenerator(greedy_policy, "float32")
    sampling = SamplingConfig(n=4, temperature=1.0, max_new_tokens=16, top_k=0)
    texts = lambda results: [[c.text for c in r.completions] for r in results]  # noqa: E731
    alone = {seed: texts(generator.generate(PROMPTS, sampling, seed=seed)) for seed in (1, 2)}
    together = {}
    threads = [threading.Thread(target=lambda s=seed: together.__setitem__(s, texts(generator.generate(PROMPTS, sampling, seed=s))))
               for seed in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert together == alone and alone[1] != alone[2]


def test_a_completion_cut_inside_a_character_ends_before_it_as_with_vllm(greedy_policy):
    """Byte-level tokens spread "é" over two; cut after the first, decoding marks the half with U+FFFD, which vLLM
    leaves out."""
    generator = TransformersGenerator(greedy_policy, "float32")
    first_half = generator.tokenizer.tokenize("é")[0]
    tokens = generator.tokenizer.convert_tokens_to_ids(["a", first_half])
    assert generator.tokenizer.decode(tokens) == "a\ufffd"  # the case
    completion = generator._completion(tokens)
    assert (completion.text, completion.num_tokens, completion.finish_reason) == ("a", 2, "length")
