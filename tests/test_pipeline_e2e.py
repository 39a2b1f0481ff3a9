"""`rsample run` end to end: embedded Redis, real worker processes, tiny real models, real files."""

from collections import defaultdict

import pytest
import torch
from conftest import CHAT_ROWS, read_jsonl, rsample, write_jsonl

from rsample.producer.prompts import extract_prompt

LONG_ROW = {"prompt": "river city " * 150}  # longer than the tiny policy's 256-token context


@pytest.fixture(scope="module")
def finished_run(tiny_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    dataset = write_jsonl(root / "chat.jsonl", [*CHAT_ROWS, LONG_ROW, "{broken", {"prompt": ""}])
    result = rsample(
        "run", "--dataset", str(dataset), "--policy", tiny_models["policy"],
        "--reward-model", tiny_models["reward"], "--reward-model", tiny_models["reward2"],
        "--n", "4", "--max-new-tokens", "12", "--temperature", "1.0", "--batch-size", "3",
        "--include-reference", "--out", str(root / "pairs.jsonl"), "--scores-out", str(root / "scores.jsonl"),
    )
    return {"root": root, "stdout": result.stdout, "pairs": read_jsonl(root / "pairs.jsonl"), "scores": read_jsonl(root / "scores.jsonl")}


def expected_prompts():
    records = [extract_prompt(row, i) for i, row in enumerate(CHAT_ROWS)]
    return {r.prompt_id: r for r in records}


def test_every_unique_prompt_gives_exactly_one_pair(finished_run):
    ids = [row["prompt_id"] for row in finished_run["pairs"]]
    assert len(ids) == len(set(ids))
    assert set(ids) == set(expected_prompts())  # 8 chat rows hold 7 distinct prompts


def test_pairs_have_the_open_instruct_shape(finished_run, tiny_models):
    prompts = expected_prompts()
    models = {tiny_models["reward"], tiny_models["reward2"]}
    for row in finished_run["pairs"]:
        record = prompts[row["prompt_id"]]
        assert row["messages"] == record.messages
        for side in ("chosen", "rejected"):
            assert row[side][:-1] == record.messages
            assert row[side][-1]["role"] == "assistant"
            assert set(row[f"{side}_score"]) == models
        assert row["chosen"][-1]["content"] != row["rejected"][-1]["content"]
        assert row["reference_completion"] == record.reference_completion
        has_reference = record.reference_completion is not None
        assert (row["reference_completion_score"] is not None) == has_reference
        assert row["num_candidates"] == 4 + has_reference
        assert 2 <= row["num_unique"] <= row["num_candidates"]


def test_chosen_and_rejected_are_the_best_and_worst_mean_score(finished_run):
    candidates = defaultdict(list)
    for row in finished_run["scores"]:
        candidates[row["prompt_id"]].append(row)
    mean = lambda scores: sum(scores.values()) / len(scores)  # noqa: E731
    for row in finished_run["pairs"]:
        scored = candidates[row["prompt_id"]]
        assert len(scored) == row["num_unique"]
        best = max(scored, key=lambda c: mean(c["scores"]))
        worst = min(scored, key=lambda c: mean(c["scores"]))
        assert row["chosen"][-1]["content"] == best["completion"]
        assert row["rejected"][-1]["content"] == worst["completion"]
        assert row["chosen_score"] == best["scores"]
        assert mean(row["chosen_score"]) >= mean(row["rejected_score"])
        references = [c for c in scored if c["is_reference"]]
        if row["reference_completion"] is not None:
            assert [c["completion"] for c in references] == [row["reference_completion"]]
            assert references[0]["scores"] == row["reference_completion_score"]


def test_scores_match_a_direct_forward_pass_of_each_reward_model(finished_run, tiny_models):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    messages = {row["prompt_id"]: row["messages"] for row in finished_run["pairs"]}
    for key in ("reward", "reward2"):
        path = tiny_models[key]
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32).eval()
        for row in finished_run["scores"]:
            conversation = [*messages[row["prompt_id"]], {"role": "assistant", "content": row["completion"]}]
            ids = tokenizer(tokenizer.apply_chat_template(conversation, tokenize=False), add_special_tokens=False, return_tensors="pt")
            with torch.no_grad():
                expected = model(**ids).logits[0, 0].item()
            assert row["scores"][path] == pytest.approx(expected, abs=1e-3)


def test_summary_and_ledger_account_for_every_row(finished_run):
    out = finished_run["stdout"]
    assert "rows                 11" in out
    assert "pairs written        7" in out
    assert "duplicate rows       1" in out
    assert "prompt longer than the policy context: 1" in out
    assert "invalid JSON: 1" in out and "empty content: 1" in out
    assert "completions          28 in" in out  # the 7 prompts that fit x n=4
    ledger = read_jsonl(finished_run["root"] / "pairs.outcomes.jsonl")[1:]
    assert sorted(row["row_index"] for row in ledger) == list(range(11))
    by_outcome = {}
    for row in ledger:
        by_outcome.setdefault(row["outcome"], []).append(row)
    assert {row["prompt_id"] for row in by_outcome["pair"]} == {row["prompt_id"] for row in finished_run["pairs"]}
    assert [row["row_index"] for row in by_outcome["duplicate"]] == [4]


def test_prompts_whose_samples_are_all_identical_are_dropped(tiny_models, chat_dataset, tmp_path):
    out = tmp_path / "pairs.jsonl"
    result = rsample(
        "run", "--dataset", str(chat_dataset), "--policy", tiny_models["policy"], "--reward-model", tiny_models["reward"],
        "--n", "3", "--max-new-tokens", "6", "--top-p", "0.000001", "--out", str(out), "--no-progress",
    )
    assert "dropped, identical   7" in result.stdout
    assert "pairs written        0" in result.stdout
    assert out.read_text() == ""


@pytest.mark.parametrize(
    "args, message",
    [
        (["--policy", "/no/such/policy"], "error: policy model not found: /no/such/policy"),
        (["--n", "1"], "error: --n must be at least 2 (got 1)"),
        (["--dataset", "/no/such.jsonl"], "error: dataset file not found: /no/such.jsonl"),
        (["--redis-url", "redis://:pw@127.0.0.1:1/0"], "error: cannot reach Redis at redis://:***@127.0.0.1:1/0"),
    ],
)
def test_bad_input_fails_in_one_line(tiny_models, chat_dataset, tmp_path, args, message):
    base = {"--dataset": str(chat_dataset), "--policy": tiny_models["policy"], "--reward-model": tiny_models["reward"], "--n": "2"}
    for flag, value in zip(args[::2], args[1::2]):
        base[flag] = value
    flat = [item for pair in base.items() for item in pair]
    result = rsample("run", *flat, "--out", str(tmp_path / "o.jsonl"), check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(message), result.stderr
    assert "Traceback" not in result.stderr


def test_a_causal_lm_as_reward_model_is_refused_before_anything_runs(tiny_models, chat_dataset, tmp_path):
    result = rsample("run", "--dataset", str(chat_dataset), "--policy", tiny_models["policy"], "--reward-model", tiny_models["policy"],
                     "--out", str(tmp_path / "o.jsonl"), check=False)
    assert result.returncode == 2
    assert "is not a sequence classifier" in result.stderr
    assert not (tmp_path / "o.jsonl").exists()
