"""Policies that answer in the harmony format (gpt-oss): completions are split by channel into the answer, which the
rewards read and `content` holds, and the thinking, which `thinking` holds, as gpt-oss's own chat template wants them
for training. The tiny harmony policy writes that structure with real special tokens, and its template refuses channel
markers in a message, as gpt-oss's does."""

from __future__ import annotations

import json

import pytest
from conftest import read_jsonl, rsample, write_jsonl

from rsample.workers.backends.harmony import HarmonyTokens, Reply
from rsample.workers.backends.tiny_models import BODY_WORDS, build_harmony_policy


@pytest.fixture(scope="module")
def harmony_policy(tmp_path_factory) -> str:
    return str(build_harmony_policy(tmp_path_factory.mktemp("models") / "gpt-oss-like"))


@pytest.fixture(scope="module")
def tokenizer(harmony_policy):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(harmony_policy)


A, F = "<|channel|>analysis<|message|>", "<|channel|>final<|message|>"
NEXT = "<|end|><|start|>assistant"


@pytest.mark.parametrize(("generated", "expected"), [
    (f"{A}Let me add 2 and 2.{NEXT}{F}It is 4.<|return|>", Reply("Let me add 2 and 2.", "It is 4.")),
    (f"{F}Just 4.<|return|>", Reply("", "Just 4.")),
    (f"{A}First.{NEXT}{A}Second.{NEXT}{F}Done.", Reply("First.\n\nSecond.", "Done.")),  # EOS already cut off by the backend
    (f"{A}Still thinking about the", Reply("Still thinking about the", None)),  # cut at --max-new-tokens while thinking
    (f"{A}Enough.{NEXT}<|channel|>fin", Reply("Enough.", None)),  # cut inside the final channel's header
    (f"{A}Enough.{NEXT}{F}The answer is", Reply("Enough.", "The answer is")),  # cut while answering: the answer so far
    (f"{A}Call it.{NEXT} to=functions.lookup<|channel|>commentary <|constrain|>json<|message|>{{\"q\": 1}}<|call|>",
     Reply('Call it.\n\n{"q": 1}', None)),  # a tool call instead of an answer
    (f"{A}Think.{NEXT}{F}Café ☕<|return|>", Reply("Think.", "Café ☕")),
])
def test_a_completion_is_split_by_channel(tokenizer, generated, expected):
    harmony = HarmonyTokens.of(tokenizer)
    tokens = tokenizer(generated, add_special_tokens=False)["input_ids"]
    assert harmony.split_with(tokenizer, tokens) == expected


def test_a_character_cut_in_its_bytes_is_left_out(tokenizer):
    harmony = HarmonyTokens.of(tokenizer)
    tokens = tokenizer(f"{F}Café ☕", add_special_tokens=False)["input_ids"]
    assert harmony.split_with(tokenizer, tokens[:-1]) == Reply("", "Café")  # the cup's 3 bytes are 3 tokens here


def test_only_a_tokenizer_with_every_marker_is_taken_for_harmony(tokenizer, tiny_models):
    from transformers import AutoTokenizer

    assert HarmonyTokens.of(AutoTokenizer.from_pretrained(tiny_models["policy"])) is None  # ChatML: its text decodes as it is
    assert HarmonyTokens.of(tokenizer).start == tokenizer.convert_tokens_to_ids("<|start|>")


def test_the_transformers_backend_splits_what_the_policy_wrote(harmony_policy):
    from rsample.workers.backends.transformers_generation import TransformersGenerator
    from rsample.workers.common.config import SamplingConfig

    generator = TransformersGenerator(harmony_policy, dtype="float32")
    [result] = generator.generate([[{"role": "user", "content": "add 2 and 2"}]],
                                  SamplingConfig(n=12, temperature=1.0, top_k=0, max_new_tokens=40), seed=3)
    tokenizer = generator.tokenizer
    for completion in result.completions:
        # What the chain can write in a message's text: its body words. Header words or markers there would be a leak.
        assert set(completion.text.split()) <= set(BODY_WORDS) and set(completion.reasoning.split()) <= set(BODY_WORDS)
        assert "<|" not in completion.text + completion.reasoning
    answered = [c for c in result.completions if c.text]
    assert answered and len(answered) < len(result.completions)  # some answered, some only thought
    assert {c.finish_reason for c in result.completions} <= {"stop", "length"}
    assert tokenizer.eos_token == "<|return|>"


REWARD = '''
def words(conversations, rows):
    """Words of the answer the reward sees; -100 if it sees any thinking or channel name."""
    last = [c[-1] for c in conversations]
    return [-100.0 if ("thinking" in m or "analysis" in m["content"] or "<|" in m["content"]) else float(len(m["content"].split()))
            for m in last]
'''


def test_a_run_writes_the_answer_as_content_and_the_thinking_apart(harmony_policy, tmp_path, monkeypatch):
    from datasets import load_dataset
    from transformers import AutoTokenizer

    from rsample.workers.stages.output import features

    folder = tmp_path / "user_code"
    folder.mkdir()
    (folder / "answer_words.py").write_text(REWARD)
    monkeypatch.setenv("PYTHONPATH", str(folder))
    rows = [{"messages": [{"role": "user", "content": f"question {i}: the river and the city"}]} for i in range(9)]
    rows.append({"messages": [{"role": "user", "content": "name a city"}, {"role": "assistant", "content": "the city"},
                              {"role": "user", "content": "and a river?"}]})  # an earlier assistant turn, without thinking
    rows.append({"messages": [{"role": "user", "content": "what is it"},  # gpt-oss's own data format: the reply's thinking apart
                              {"role": "assistant", "content": "A reference answer.", "thinking": "The user asks what it is."}]})
    dataset = write_jsonl(tmp_path / "rows.jsonl", rows)
    out, scores, sft = tmp_path / "pairs.jsonl", tmp_path / "scores.jsonl", tmp_path / "sft.jsonl"
    reward = "fn:answer_words:words"
    result = rsample("run", "--dataset", str(dataset), "--policy", harmony_policy, "--reward-model", reward,
                     "--dtype", "float32", "--n", "6", "--max-new-tokens", "40", "--temperature", "1.0", "--top-k", "0",
                     "--include-reference", "--sft",
                     "--out", str(out), "--scores-out", str(scores), "--sft-out", str(sft), "--parquet", "--no-progress")
    candidates = read_jsonl(scores)
    generated = [c for c in candidates if c["finish_reason"] != "reference"]
    assert generated and all(set(c) >= {"completion", "thinking"} for c in candidates)
    for candidate in generated:  # the rewards read the answer alone, as the output holds it
        assert candidate["scores"][reward] == len(candidate["completion"].split())
        assert set(candidate["completion"].split()) <= set(BODY_WORDS) and set(candidate["thinking"].split()) <= set(BODY_WORDS)
    [reference] = [c for c in candidates if c["finish_reason"] == "reference"]
    assert (reference["completion"], reference["thinking"]) == ("A reference answer.", "The user asks what it is.")
    samples_per_prompt: dict[str, int] = {}
    for candidate in generated:
        samples_per_prompt[candidate["prompt_id"]] = samples_per_prompt.get(candidate["prompt_id"], 0) + candidate["num_samples"]
    assert set(samples_per_prompt.values()) == {6}  # every sample of n=6 is one candidate's, the reference none
    unanswered = sum(c["num_samples"] for c in generated if not c["completion"])
    assert unanswered  # the chain thinks without answering often enough
    pairs = read_jsonl(out)
    assert pairs
    for pair in pairs:
        chosen = pair["chosen"][-1]
        assert chosen["content"] and set(chosen) == {"role", "content", "thinking"}  # no empty answer is ever chosen
        assert set(pair["rejected"][-1]) == {"role", "content", "thinking"}
    report = (tmp_path / "pairs.report" / "report.md").read_text()
    samples = 6 * len(samples_per_prompt)
    assert (f"no answer (the final channel never began): {unanswered / samples:.1%} of {samples} samples ({len(generated)} distinct)"
            in report)
    assert "thinking scored" not in result.stderr and "no run report" not in result.stderr

    # What a trainer does: load the pairs with their declared types, and render them with the policy's own template,
    # which refuses channel markers in a message and puts the thinking in its analysis channel.
    loaded = load_dataset("json", data_files=str(out), features=features("pairs", [reward], thinking=True), split="train")
    from_parquet = load_dataset("parquet", data_files=str(out.with_suffix(".parquet")), split="train")
    assert from_parquet.features == loaded.features and from_parquet.to_list() == loaded.to_list()
    policy_tokenizer = AutoTokenizer.from_pretrained(harmony_policy)
    for row in loaded:
        rendered = policy_tokenizer.apply_chat_template(row["chosen"], tokenize=False)
        chosen = row["chosen"][-1]
        assert rendered.endswith(f"<|start|>assistant<|channel|>analysis<|message|>{chosen['thinking']}<|end|>"
                                 f"<|start|>assistant<|channel|>final<|message|>{chosen['content']}<|return|>")
    sft_rows = read_jsonl(sft)
    assert all(row["messages"][-1]["thinking"] is not None for row in sft_rows)
    [multi_turn] = [row for row in sft_rows if len(row["messages"]) == 4]
    # Read with declared types, every turn has the field: None where a row lacks it, which gpt-oss's template (before
    # transformers 5.24) cannot render on an assistant turn. So every assistant turn carries a thinking, if empty.
    assert multi_turn["messages"][1] == {"role": "assistant", "content": "the city", "thinking": ""}
    for row in load_dataset("json", data_files=str(sft), features=features("sft", [reward], thinking=True), split="train"):
        assert all(isinstance(turn["thinking"], str) for turn in row["messages"] if turn["role"] == "assistant")
    first = json.loads(out.read_text().splitlines()[0])
    assert first["chosen"][0] == {"role": "user", "content": first["chosen"][0]["content"]}  # a user turn gets no thinking


def test_reasoning_end_is_refused_for_a_harmony_policy(harmony_policy, redis_server, tmp_path):
    dataset = write_jsonl(tmp_path / "rows.jsonl", [{"prompt": "hi"}])
    result = rsample("enqueue", "--redis-url", redis_server.url, "--dataset", str(dataset), "--policy", harmony_policy,
                     "--reward-model", "r", "--reward-backend", "length", "--reasoning-end", "<|end|>", check=False)
    assert result.returncode == 2 and result.stderr.strip() == (
        "error: --reasoning-end '<|end|>': the policy answers in the harmony format (gpt-oss), whose thinking and answer "
        "rsample splits by channel by itself; leave --reasoning-end out"), result.stderr
