"""Both backends sample the same distribution: the policy's generation_config defaults, applied alike (explicit flags
override), and a stop at every EOS id the policy declares."""

from __future__ import annotations

import pytest
import torch
from conftest import rsample

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
                     "--reward-model", "r", "--reward-backend", "length", "--top-p", "0.95").stdout.strip()
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


def test_a_prompt_over_max_prompt_tokens_is_skipped_with_its_reason(greedy_policy):
    generator = TransformersGenerator(greedy_policy, "float32")
    long_prompt = [{"role": "user", "content": "river city music " * 12}]  # well inside the 256-token context
    sampling = SamplingConfig(n=2, temperature=1.0, max_new_tokens=4, max_prompt_tokens=30)
    short, long = generator.generate([PROMPTS[1], long_prompt], sampling, seed=0)
    assert long.completions == [] and long.skip_reason == "prompt longer than --max-prompt-tokens (30)"
    assert short.skip_reason is None and len(short.completions) == 2
