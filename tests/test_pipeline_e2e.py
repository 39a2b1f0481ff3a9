"""`rsample run` end to end: embedded Redis, real worker processes, tiny real models, real files."""

import statistics
from collections import defaultdict

import pytest
import torch
from conftest import CHAT_ROWS, read_jsonl, rsample, write_jsonl
from oracles import reference_reward

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


JUDGED = ("pair", "dropped_identical", "dropped_tie", "dropped_unfinished", "dropped_disagreement", "dropped_margin", "dropped_unverified")


def outcomes(finished_run):
    return read_jsonl(finished_run["root"] / "pairs.outcomes.jsonl")[1:]


def test_every_unique_prompt_is_judged_once_and_pairs_are_written_once(finished_run):
    ids = [row["prompt_id"] for row in finished_run["pairs"]]
    assert len(ids) == len(set(ids))
    judged = [o["prompt_id"] for o in outcomes(finished_run) if o["outcome"] in JUDGED]
    assert sorted(judged) == sorted(expected_prompts())  # 8 chat rows hold 7 distinct prompts
    assert set(ids) == {o["prompt_id"] for o in outcomes(finished_run) if o["outcome"] == "pair"}
    assert ids, "the tiny run wrote no pair at all: nothing below is checked"


def test_no_chosen_completion_was_cut_off_or_empty(finished_run):
    by_text = {(row["prompt_id"], row["completion"]): row for row in finished_run["scores"]}
    for row in finished_run["scores"]:
        assert row["finish_reason"] in ("stop", "length", "reference") and row["num_tokens"] >= 0
        assert (row["finish_reason"] == "reference") == row["is_reference"]
    for pair in finished_run["pairs"]:
        chosen = by_text[(pair["prompt_id"], pair["chosen"][-1]["content"])]
        assert chosen["finish_reason"] != "length" and chosen["completion"].strip()
    assert any(row["finish_reason"] == "length" for row in finished_run["scores"])  # 12 new tokens do cut some off


def test_every_sample_is_counted_by_the_candidate_it_was_merged_into(finished_run):
    """Identical samples are one candidate: `num_samples` says how many of the n=4 each stands for, so the samples of a
    prompt add up to 4 (the reference, not a sample, to none)."""
    samples = defaultdict(int)
    for row in finished_run["scores"]:
        assert row["num_samples"] >= (row["finish_reason"] != "reference")
        assert row["num_samples"] == 0 or row["finish_reason"] != "reference"
        samples[row["prompt_id"]] += row["num_samples"]
    assert set(samples.values()) == {4}
    merged = [row for row in finished_run["scores"] if row["num_samples"] > 1]
    for row in merged:  # a merged candidate's text occurs once among its prompt's rows
        assert [r["completion"] for r in finished_run["scores"] if r["prompt_id"] == row["prompt_id"]].count(row["completion"]) == 1


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


def standardized(scored: list[dict]) -> list[float]:
    """Two reward models: each one's scores as z-scores over the prompt's candidates, averaged (the default)."""
    columns = []
    for model in scored[0]["scores"]:
        values = [c["scores"][model] for c in scored]
        spread = statistics.pstdev(values)
        columns.append([(v - statistics.fmean(values)) / spread if spread else 0.0 for v in values])
    return [statistics.fmean(column) for column in zip(*columns)]


def test_chosen_is_the_best_finished_candidate_and_rejected_the_worst(finished_run):
    candidates = defaultdict(list)
    for row in finished_run["scores"]:
        candidates[row["prompt_id"]].append(row)
    for row in finished_run["pairs"]:
        scored = candidates[row["prompt_id"]]
        assert len(scored) == row["num_unique"]
        combined = standardized(scored)
        may_be_chosen = [i for i, c in enumerate(scored) if c["finish_reason"] != "length" and c["completion"].strip()]
        best = scored[max(may_be_chosen, key=lambda i: combined[i])]
        worst = scored[min(range(len(scored)), key=lambda i: combined[i])]
        assert row["chosen"][-1]["content"] == best["completion"]
        assert row["rejected"][-1]["content"] == worst["completion"]
        assert row["chosen_score"] == best["scores"]
        references = [c for c in scored if c["is_reference"]]
        if row["reference_completion"] is not None:
            assert [c["completion"] for c in references] == [row["reference_completion"]]
            assert references[0]["scores"] == row["reference_completion_score"]


def test_scores_match_an_independent_computation_of_each_reward(finished_run, tiny_models):
    """Each reward model's own tokenization by transformers, one unpadded sequence, the head at its last token."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    messages = {prompt_id: record.messages for prompt_id, record in expected_prompts().items()}
    assert finished_run["scores"]
    for key in ("reward", "reward2"):
        path = tiny_models[key]
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32).eval()
        for row in finished_run["scores"]:
            conversation = [*messages[row["prompt_id"]], {"role": "assistant", "content": row["completion"]}]
            assert row["scores"][path] == pytest.approx(reference_reward(model, tokenizer, conversation), abs=1e-4)


def test_summary_and_ledger_account_for_every_row(finished_run):
    out = finished_run["stdout"]
    assert "rows                 11" in out
    counts = {kind: sum(o["outcome"] == kind for o in outcomes(finished_run)) for kind in JUDGED}
    assert sum(counts.values()) == 7
    assert f"pairs written        {counts['pair']}" in out
    assert f"dropped, unfinished  {counts['dropped_unfinished']}" in out and f"dropped, tie         {counts['dropped_tie']}" in out
    assert "duplicate rows       1" in out
    assert "prompt too long for the policy context (256 tokens) with --max-new-tokens 12: 1" in out
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
    base = {"--dataset": str(chat_dataset), "--policy": tiny_models["policy"], "--reward-model": tiny_models["reward"], "--n": "2",
            "--max-new-tokens": "8"}
    for flag, value in zip(args[::2], args[1::2]):
        base[flag] = value
    flat = [item for pair in base.items() for item in pair]
    result = rsample("run", *flat, "--out", str(tmp_path / "o.jsonl"), check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(message), result.stderr
    assert "Traceback" not in result.stderr


def test_a_causal_lm_as_reward_model_is_refused_before_anything_runs(tiny_models, chat_dataset, tmp_path):
    result = rsample("run", "--dataset", str(chat_dataset), "--policy", tiny_models["policy"], "--reward-model", tiny_models["policy"],
                     "--max-new-tokens", "8", "--out", str(tmp_path / "o.jsonl"), check=False)
    assert result.returncode == 2
    assert "is not a sequence classifier" in result.stderr
    assert not (tmp_path / "o.jsonl").exists()


def test_what_push_to_hub_uploads_loads_with_datasets(finished_run, tmp_path):
    """The uploaded layout, through the upload seam into a folder, loads with `datasets` as the Hub would serve it."""
    import datasets
    from test_hub import FolderApi

    from rsample.producer.driver.hub import push_to_hub
    from rsample.producer.driver.summary import Summary
    from rsample.workers.common.config import DataSelection, RunConfig

    root = finished_run["root"]
    models = tuple(finished_run["pairs"][0]["chosen_score"])  # the card declares the score columns by the run's model names
    config = RunConfig(run_id="e2e", data=DataSelection(str(root / "chat.jsonl")), policy="policy", reward_models=models)
    summary = Summary(rows=11, duplicate_rows=1, skipped={}, dropped_identical=0, dropped_margin=0, pairs_written=len(finished_run["pairs"]),
                      completions_generated=28, tokens_generated=0, seconds=1.0)
    push_to_hub("me/pairs", config, summary, {"pairs": root / "pairs.jsonl", "scores": root / "scores.jsonl"}, api=FolderApi(tmp_path / "repo"))
    pairs = datasets.load_dataset(str(tmp_path / "repo"), split="train")
    scores = datasets.load_dataset(str(tmp_path / "repo"), "scores", split="train")
    assert pairs.num_rows == len(finished_run["pairs"]) and scores.num_rows == len(finished_run["scores"])
    assert pairs[0]["chosen"] == finished_run["pairs"][0]["chosen"]
    assert {"prompt_id", "completion_index", "completion", "scores"} <= set(scores.column_names)
