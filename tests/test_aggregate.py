"""The aggregator's decisions on plain data: identical drops, margins, skips and failed batches."""

from rsample.workers.common.config import DataSelection, RunConfig
from rsample.workers.common.messages import (
    DROPPED_IDENTICAL,
    DROPPED_MARGIN,
    PAIR,
    SKIPPED,
    Candidate,
    GeneratedBatch,
    GeneratedPrompt,
    Outcome,
    PromptRecord,
)
from rsample.workers.stages.aggregate import aggregate_batch

ROWS = {"pair": 0, "same": 1, "long": 2, "close": 3, "rm-skip": 4, "a": 5, "b": 6}


def config(**overrides):
    return RunConfig(run_id="r", data=DataSelection("d"), policy="p", reward_models=("rm-a", "rm-b"), **overrides)


def prompt(pid, texts, skip=None):
    record = PromptRecord(pid, [{"role": "user", "content": pid}], row_index=ROWS[pid])
    return GeneratedPrompt(record, [Candidate(t, [i]) for i, t in enumerate(texts)], len(texts), skip)


def verdicts(scores_a, scores_b, skip_b=None):
    return [{pid: {"scores": s, "skip_reason": None} for pid, s in scores_a.items()},
            {pid: {"scores": None if skip_b and pid in skip_b else s, "skip_reason": skip_b.get(pid) if skip_b else None} for pid, s in scores_b.items()}]


def test_each_prompt_ends_as_exactly_one_outcome():
    batch = GeneratedBatch("r0", [
        prompt("pair", ["x", "y", "z"]),
        prompt("same", ["only"]),
        prompt("long", [], skip="prompt longer than the policy context"),
        prompt("close", ["a", "b"]),
        prompt("rm-skip", ["c", "d"]),
    ])
    scored = verdicts(
        {"pair": [1.0, 5.0, 0.0], "close": [1.0, 1.1], "rm-skip": [0.0, 1.0]},
        {"pair": [2.0, 4.0, 1.0], "close": [1.0, 1.1], "rm-skip": [0.0, 1.0]},
        skip_b={"rm-skip": "conversation longer than reward model 1's context"},
    )
    outcome = aggregate_batch(config(min_margin=0.5), batch, scored)
    assert [row["prompt_id"] for row in outcome.rows] == ["pair"]
    assert outcome.rows[0]["chosen"][-1]["content"] == "y"
    assert outcome.rows[0]["rejected"][-1]["content"] == "z"
    assert outcome.rows[0]["chosen_score"] == {"rm-a": 5.0, "rm-b": 4.0}
    assert outcome.outcomes == [
        Outcome(0, "pair", PAIR),
        Outcome(1, "same", DROPPED_IDENTICAL),
        Outcome(2, "long", SKIPPED, "prompt longer than the policy context"),
        Outcome(3, "close", DROPPED_MARGIN),
        Outcome(4, "rm-skip", SKIPPED, "conversation longer than reward model 1's context"),
    ]
    assert {row["prompt_id"] for row in outcome.score_rows} == {"pair", "close"}


def test_a_failed_scoring_job_skips_only_the_prompts_it_had_to_score():
    batch = GeneratedBatch("r5", [prompt("a", ["x", "y"]), prompt("b", ["same"])])
    outcome = aggregate_batch(config(), batch, [], failure="scoring with reward model 0 failed: RuntimeError: boom")
    assert outcome.rows == []
    assert outcome.outcomes == [
        Outcome(5, "a", SKIPPED, "scoring with reward model 0 failed: RuntimeError: boom"),
        Outcome(6, "b", DROPPED_IDENTICAL),
    ]
