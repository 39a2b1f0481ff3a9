"""The aggregation stage's decisions on plain data: identical drops, margins, skips, failed batches, who may be chosen,
ties, and candidates too long for a reward model."""

import pytest

from rsample.workers.common.config import DataSelection, RunConfig
from rsample.workers.common.messages import (
    DROPPED_IDENTICAL,
    DROPPED_MARGIN,
    DROPPED_TIE,
    DROPPED_UNFINISHED,
    PAIR,
    SKIPPED,
    Candidate,
    GeneratedBatch,
    GeneratedPrompt,
    Outcome,
    PromptRecord,
)
from rsample.workers.stages.aggregate import BatchOutcome, aggregate_batch

ROWS = {"pair": 0, "same": 1, "long": 2, "close": 3, "rm-skip": 4, "a": 5, "b": 6, "cut": 7, "tie": 8, "three": 9}


def config(**overrides):
    return RunConfig(run_id="r", data=DataSelection("d"), policy="p", reward_models=("rm-a", "rm-b"), **overrides)


def prompt(pid, texts, skip=None, finish=None):
    """`finish`: each candidate's finish reason (default "stop")."""
    record = PromptRecord(pid, [{"role": "user", "content": pid}], row_index=ROWS[pid])
    finish = finish or ["stop"] * len(texts)
    candidates = [Candidate(t, [i], num_tokens=len(t), finish_reason=f) for i, (t, f) in enumerate(zip(texts, finish))]
    return GeneratedPrompt(record, candidates, len(texts), skip)


def verdicts(scores_a, scores_b):
    return [{pid: {"scores": s, "skip_reason": None} for pid, s in scores.items()} for scores in (scores_a, scores_b)]


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
        {"pair": [2.0, 4.0, 1.0], "close": [1.0, 1.1], "rm-skip": [0.0, None]},  # None: longer than model 1's context
    )
    outcome = aggregate_batch(config(min_margin=0.5, combine="mean"), batch, scored)
    assert [row["prompt_id"] for row in outcome.rows] == ["pair"]
    assert outcome.rows[0]["chosen"][-1]["content"] == "y"
    assert outcome.rows[0]["rejected"][-1]["content"] == "z"
    assert outcome.rows[0]["chosen_score"] == {"rm-a": 5.0, "rm-b": 4.0}
    assert outcome.outcomes == [
        Outcome(0, "pair", PAIR),
        Outcome(1, "same", DROPPED_IDENTICAL),
        Outcome(2, "long", SKIPPED, "prompt longer than the policy context"),
        Outcome(3, "close", DROPPED_MARGIN),
        Outcome(4, "rm-skip", SKIPPED, "fewer than two candidates scored by every reward model (too long for its context, or given no score)"),
    ]
    assert {row["prompt_id"] for row in outcome.score_rows} == {"pair", "close", "rm-skip"}
    too_long = [row for row in outcome.score_rows if row["prompt_id"] == "rm-skip" and row["completion_index"] == 1]
    assert too_long[0]["scores"] == {"rm-a": 1.0, "rm-b": None}


def test_a_failed_scoring_job_skips_only_the_prompts_it_had_to_score():
    batch = GeneratedBatch("r5", [prompt("a", ["x", "y"]), prompt("b", ["same"])])
    outcome = aggregate_batch(config(), batch, [], failure="scoring with reward model 0 failed: RuntimeError: boom")
    assert outcome.rows == []
    assert outcome.outcomes == [
        Outcome(5, "a", SKIPPED, "scoring with reward model 0 failed: RuntimeError: boom"),
        Outcome(6, "b", DROPPED_IDENTICAL),
    ]


def test_a_candidate_too_long_for_a_reward_model_drops_that_candidate_not_the_prompt():
    batch = GeneratedBatch("r9", [prompt("three", ["x", "yy", "zzz"])])
    scored = verdicts({"three": [0.0, 9.0, 1.0]}, {"three": [0.0, None, 1.0]})  # the best one is too long for model b
    outcome = aggregate_batch(config(combine="mean"), batch, scored)
    assert outcome.outcomes == [Outcome(9, "three", PAIR)]
    assert (outcome.rows[0]["chosen"][-1]["content"], outcome.rows[0]["rejected"][-1]["content"]) == ("zzz", "x")


def test_a_cut_off_or_empty_completion_is_never_chosen_but_may_be_rejected():
    batch = GeneratedBatch("r7", [prompt("cut", ["finished", "cut off", "  ", "worst"], finish=["stop", "length", "stop", "stop"])])
    scored = verdicts({"cut": [1.0, 9.0, 8.0, -5.0]}, {"cut": [1.0, 9.0, 8.0, -5.0]})
    row = aggregate_batch(config(combine="mean"), batch, scored).rows[0]
    assert (row["chosen"][-1]["content"], row["rejected"][-1]["content"]) == ("finished", "worst")
    row = aggregate_batch(config(combine="mean", keep_truncated=True), batch, scored).rows[0]
    assert row["chosen"][-1]["content"] == "cut off"  # --keep-truncated: the old behaviour
    # the cut-off candidate is the worst one: it is rejected
    scored = verdicts({"cut": [1.0, -9.0, 0.0, 0.5]}, {"cut": [1.0, -9.0, 0.0, 0.5]})
    row = aggregate_batch(config(combine="mean"), batch, scored).rows[0]
    assert (row["chosen"][-1]["content"], row["rejected"][-1]["content"]) == ("finished", "cut off")


def test_a_prompt_without_a_finished_candidate_is_dropped_with_its_own_reason():
    batch = GeneratedBatch("r7", [prompt("cut", ["one", "two"], finish=["length", "length"])])
    outcome = aggregate_batch(config(), batch, verdicts({"cut": [1.0, 2.0]}, {"cut": [1.0, 2.0]}))
    assert outcome.rows == [] and outcome.outcomes == [Outcome(7, "cut", DROPPED_UNFINISHED)]
    assert [row["finish_reason"] for row in outcome.score_rows] == ["length", "length"]
    assert [row["num_tokens"] for row in outcome.score_rows] == [3, 3]


def test_a_tie_carries_no_preference_and_is_counted():
    batch = GeneratedBatch("r8", [prompt("tie", ["a", "b"])])
    outcome = aggregate_batch(config(), batch, verdicts({"tie": [2.0, 2.0]}, {"tie": [-1.0, -1.0]}))
    assert outcome.rows == [] and outcome.outcomes == [Outcome(8, "tie", DROPPED_TIE)]


def test_the_sft_row_is_the_best_eligible_candidate_even_where_no_pair_is_written():
    """--sft: one row per prompt with its best finished candidate: with one distinct candidate, on a tie, beside a pair."""
    sft = config(sft=True, combine="mean")
    batch = GeneratedBatch("r0", [
        prompt("same", ["only answer"]),  # every sample identical: no pair, but an SFT example
        prompt("tie", ["x", "y"]),
        prompt("pair", ["good", "bad", "cut"], finish=["stop", "stop", "length"]),
        prompt("cut", ["cut one"], finish=["length"]),  # cut at --max-new-tokens: never an example
    ])
    scores = {"same": [0.4], "tie": [1.0, 1.0], "pair": [0.5, 0.1, 0.9], "cut": [2.0]}
    result = aggregate_batch(sft, batch, verdicts(scores, scores))
    kinds = {o.prompt_id: o.outcome for o in result.outcomes}
    assert kinds == {"same": DROPPED_IDENTICAL, "tie": DROPPED_TIE, "pair": PAIR, "cut": DROPPED_IDENTICAL}
    examples = {row["prompt_id"]: row for row in result.sft_rows}
    assert set(examples) == {"same", "tie", "pair"}
    assert examples["same"]["messages"] == [{"role": "user", "content": "same"}, {"role": "assistant", "content": "only answer"}]
    assert examples["same"]["score"] == {"rm-a": 0.4, "rm-b": 0.4} and examples["same"]["num_unique"] == 1
    assert examples["tie"]["messages"][-1]["content"] == "x"  # the first of equals, as the pair's choice
    assert examples["pair"]["messages"][-1]["content"] == "good"  # "cut" scores higher but was cut off
    without = aggregate_batch(config(combine="mean"), GeneratedBatch("r1", [prompt("same", ["only answer"])]), [])
    assert without.sft_rows == [] and without.outcomes[0].outcome == DROPPED_IDENTICAL  # not scored without --sft


def test_an_sft_row_says_whether_its_answer_was_cut_at_max_new_tokens():
    """With --keep-truncated the best may be a cut-off answer: its row says so, as a pair's chosen_finish_reason does,
    so that a trainer's script can leave it out (it would learn to stop mid-answer)."""
    batch = GeneratedBatch("r0", [prompt("pair", ["finished", "cut off mid"], finish=["stop", "length"])])
    scores = {"pair": [0.1, 0.9]}
    kept = aggregate_batch(config(sft=True, combine="mean", keep_truncated=True), batch, verdicts(scores, scores)).sft_rows
    assert [(r["messages"][-1]["content"], r["finish_reason"], r["num_tokens"]) for r in kept] == [("cut off mid", "length", 11)]
    default = aggregate_batch(config(sft=True, combine="mean"), batch, verdicts(scores, scores)).sft_rows
    assert [(r["messages"][-1]["content"], r["finish_reason"], r["num_tokens"]) for r in default] == [("finished", "stop", 8)]


def test_with_a_verifier_only_a_verified_best_makes_an_sft_row():
    verified = RunConfig(run_id="r", data=DataSelection("d"), policy="p", reward_models=("verify:math", "rm"), sft=True)
    assert verified.combine == "lexicographic"
    batch = GeneratedBatch("r0", [prompt("a", ["right", "wrong"]), prompt("b", ["wrong", "also wrong"])])
    per_model = [{"a": {"scores": [1.0, 0.0], "skip_reason": None}, "b": {"scores": [0.0, 0.0], "skip_reason": None}},
                 {"a": {"scores": [0.1, 0.9], "skip_reason": None}, "b": {"scores": [0.3, 0.2], "skip_reason": None}}]
    result = aggregate_batch(verified, batch, per_model)
    assert [(row["prompt_id"], row["messages"][-1]["content"]) for row in result.sft_rows] == [("a", "right")]
    assert [(o.prompt_id, o.outcome) for o in result.outcomes] == [("a", PAIR), ("b", "dropped_unverified")]  # b: nothing right


def test_any_verified_answer_makes_an_sft_row_whatever_the_combination():
    """A verifier second, combined by standardized scores: the reward model prefers the wrong answer, the SFT row
    still takes the verified one."""
    config_ = RunConfig(run_id="r", data=DataSelection("d"), policy="p", reward_models=("rm", "verify:math"), sft=True)
    assert config_.combine == "standardized"
    per_model = [{"a": {"scores": [9.0, 0.0, 1.0], "skip_reason": None}}, {"a": {"scores": [0.0, 1.0, 1.0], "skip_reason": None}}]
    result = aggregate_batch(config_, GeneratedBatch("r0", [prompt("a", ["wrong", "right", "also right"])]), per_model)
    assert [row["messages"][-1]["content"] for row in result.sft_rows] == ["also right"]  # verified, then the best of those


def test_with_a_verifier_first_a_pair_needs_a_chosen_that_passed_it():
    """Correctness first: a prompt none of whose answers passed the verifier makes no pair of two wrong ones (the
    reward model would rank them, and DPO would learn to prefer a wrong answer); one with a right answer pairs it with
    the worst wrong one; all right, the reward model ranks them."""
    from rsample.workers.common.messages import DROPPED_UNVERIFIED

    verified = RunConfig(run_id="r", data=DataSelection("d"), policy="p", reward_models=("verify:math", "rm"))
    batch = GeneratedBatch("r0", [prompt("a", ["wrong 1", "wrong 2", "wrong 3"]), prompt("b", ["right", "wrong", "worse"]),
                                  prompt("pair", ["right 1", "right 2"]), prompt("cut", ["right but cut", "wrong"], finish=["length", "stop"])])
    scored = verdicts({"a": [0.0, 0.0, 0.0], "b": [1.0, 0.0, 0.0], "pair": [1.0, 1.0], "cut": [1.0, 0.0]},
                      {"a": [3.0, 1.0, 2.0], "b": [0.5, 2.0, -1.0], "pair": [0.2, 0.9], "cut": [1.0, 2.0]})
    result = aggregate_batch(verified, batch, scored)
    assert [(o.prompt_id, o.outcome) for o in result.outcomes] == [
        ("a", DROPPED_UNVERIFIED), ("b", PAIR), ("pair", PAIR), ("cut", DROPPED_UNVERIFIED)]  # the right one was cut: none may be chosen
    pairs = {row["prompt_id"]: (row["chosen"][-1]["content"], row["rejected"][-1]["content"]) for row in result.rows}
    assert pairs == {"b": ("right", "worse"), "pair": ("right 2", "right 1")}


@pytest.mark.parametrize("combine", ["standardized", "mean", "vote"])
def test_with_a_verifier_anywhere_the_chosen_passed_it(combine):
    """Named after a reward model, the verifier was one preference more: a pair of two wrong answers was written (its
    scores all 0.0), or a wrong answer chosen over the right one the reward model rated low, while the --sft-out row
    of the same prompt took the right one."""
    from rsample.workers.common.messages import DROPPED_DISAGREEMENT, DROPPED_UNVERIFIED

    second = RunConfig(run_id="r", data=DataSelection("d"), policy="p", reward_models=("rm", "verify:math"), combine=combine, sft=True)
    batch = GeneratedBatch("r0", [prompt("a", ["wrong 1", "wrong 2", "wrong 3"]), prompt("b", ["right", "wrong", "worse"]),
                                  prompt("tie", ["right", "wrong", "worst"]), prompt("three", ["right", "wrong 1", "wrong 2"]),
                                  prompt("cut", ["right", "wrong 1", "wrong 2"], finish=["stop", "length", "length"])])
    scored = verdicts({"a": [3.0, 1.0, 2.0], "b": [2.0, 2.5, -1.0], "tie": [-10.0, 0.0, 1.0], "three": [None, 1.0, 2.0], "cut": [None, 1.0, 2.0]},
                      {"a": [0.0, 0.0, 0.0], "b": [1.0, 0.0, 0.0], "tie": [1.0, 0.0, 0.0], "three": [1.0, 0.0, 0.0], "cut": [1.0, 0.0, 0.0]})
    result = aggregate_batch(second, batch, scored)
    outcomes = dict((o.prompt_id, o.outcome) for o in result.outcomes)
    assert outcomes["a"] == DROPPED_UNVERIFIED
    pairs = {row["prompt_id"]: (row["chosen"][-1]["content"], row["rejected"][-1]["content"]) for row in result.rows}
    assert outcomes["b"] == PAIR and pairs["b"] == ("right", "worse")
    # the reward model's -10 outweighs the verifier's 1 in the mean: the one right answer rates below every wrong one
    assert outcomes["tie"] == (DROPPED_DISAGREEMENT if combine == "mean" else PAIR)
    assert pairs.get("tie", ("right",))[0] == "right"
    # a right answer was there, but the reward model gave it no score (too long for it): not "unverified", nor, where
    # the wrong ones were cut, "unfinished"
    assert [o.reason for o in result.outcomes if o.prompt_id in ("three", "cut")] == [
        "no verified candidate scored by every reward model (too long for its context, or given no score)"] * 2
    assert {row["prompt_id"]: row["messages"][-1]["content"] for row in result.sft_rows} == {"b": "right", "tie": "right", "three": "right", "cut": "right"}


def test_a_text_one_sample_ended_and_another_was_cut_in_is_an_ended_candidate():
    """Compared stripped, "Paris." ended by EOS and "Paris.\\n" cut at --max-new-tokens are one candidate: the policy
    ended it, so it may be chosen, whichever sample came first."""
    from rsample.workers.backends.base import Completion, PromptCompletions
    from rsample.workers.common.messages import PromptRecord
    from rsample.workers.stages.dedup import merge_candidates

    record = PromptRecord("p", [{"role": "user", "content": "capital of France?"}], row_index=0)
    cut_first = PromptCompletions([Completion("Paris.", 3, "length"), Completion("Paris.", 2, "stop"), Completion("Lyon", 3, "length")])
    merged = merge_candidates(record, cut_first, include_reference=False)
    assert [(c.text, c.completion_indices, c.num_tokens, c.finish_reason) for c in merged.candidates] == [
        ("Paris.", [1, 0], 2, "stop"), ("Lyon", [2], 3, "length")]  # the sample it holds first: the scores row's completion_index
    ended_first = PromptCompletions([Completion("Paris.", 2, "stop"), Completion("Paris.", 3, "length")])
    assert [(c.num_tokens, c.finish_reason) for c in merge_candidates(record, ended_first, False).candidates] == [(2, "stop")]


def test_a_verified_answer_a_reward_model_could_not_score_still_makes_an_sft_row():
    """`--sft-out` with `verify:`: every prompt with a verified answer gets a row. The only right answer was too long for
    the reward model's context (no score): it got none, though it passed the verifier."""
    run = RunConfig(run_id="r", data=DataSelection("d"), policy="p", reward_models=("verify:math", "rm"), sft=True)
    batch = GeneratedBatch("b", [prompt("pair", ["right, at length", "wrong"]), prompt("same", ["right", "also right", "wrong"])])
    scored = [{"pair": {"scores": [1.0, 0.0], "skip_reason": None}, "same": {"scores": [1.0, 1.0, 0.0], "skip_reason": None}},
              {"pair": {"scores": [None, 0.5], "skip_reason": None}, "same": {"scores": [None, 0.2, 0.9], "skip_reason": None}}]
    result = aggregate_batch(run, batch, scored)
    # the unscored right answer alone; where a right answer was scored, it is preferred to the unscored one
    assert [row["messages"][-1]["content"] for row in result.sft_rows] == ["right, at length", "also right"]


def test_a_batch_is_kept_in_utf8_not_ascii_escapes():
    """A character of CJK text is 3 bytes of UTF-8 and 6 as a JSON escape: the batch, Redis's largest value, was twice its size."""
    import json

    text = "北京是中国的首都。" * 50
    batch = GeneratedBatch("r1", [prompt("a", [text, text + "!"])])
    stored = batch.to_json()
    assert len(stored) < len(json.dumps(json.loads(stored)).encode()) * 0.6  # against the escaped form
    assert GeneratedBatch.from_dict(json.loads(stored)) == batch
    lone = GeneratedBatch("r2", [prompt("b", ["half an emoji \ud83d", "whole"])])  # cannot be UTF-8: escaped, never lost
    assert GeneratedBatch.from_dict(json.loads(lone.to_json())) == lone


@pytest.mark.parametrize("shape", ["harmony", "reasoning_end"])
def test_samples_that_think_differently_towards_one_answer_are_one_candidate(shape):
    """The rewards read the answer alone: two samples of one answer scored apart differ by rounding only (the tiny reward
    model scored one answer -0.5753067 and -0.5753068 in two batches), and made a pair of that answer against itself."""
    from rsample.workers.backends.base import Completion, PromptCompletions
    from rsample.workers.common.messages import PromptRecord, PromptScores
    from rsample.workers.stages.aggregate import settle_prompt
    from rsample.workers.stages.dedup import merge_candidates

    config = RunConfig(run_id="r", data=DataSelection("d"), policy="p", reward_models=("rm",),
                       reasoning_end="</think>" if shape == "reasoning_end" else None)
    record = PromptRecord("p", [{"role": "user", "content": "what is 6 x 7?"}], row_index=0)

    def sample(thinking: str, answer: str, finish: str = "stop") -> Completion:
        if shape == "harmony":
            return Completion(answer, 30, finish, thinking)
        return Completion(f"<think>{thinking}</think>{answer}", 30, finish)

    one_answer = PromptCompletions([sample("cut short", "42", "length"), sample("6 x 7 = 42.", "42"), sample("Six sevens.", "42")])
    merged = merge_candidates(record, one_answer, False, config.reasoning_end)
    [candidate] = merged.candidates
    assert candidate.completion_indices == [1, 0, 2] and candidate.finish_reason == "stop"  # the thinking of the first that ended
    assert (candidate.reasoning, candidate.text) == (("6 x 7 = 42.", "42") if shape == "harmony" else (None, "<think>6 x 7 = 42.</think>42"))
    result = BatchOutcome()
    assert settle_prompt(config, merged, [PromptScores(scores=[-0.5753067135810852])], result) == DROPPED_IDENTICAL

    two_answers = PromptCompletions([sample("a", "42"), sample("b", "42"), sample("c", "41")])
    merged = merge_candidates(record, two_answers, False, config.reasoning_end)
    result = BatchOutcome()
    assert settle_prompt(config, merged, [PromptScores(scores=[-0.5753067135810852, -0.9])], result) == PAIR
    [row] = result.rows
    assert row["chosen"][-1]["content"].endswith("42") and row["rejected"][-1]["content"].endswith("41")


def test_a_batch_reads_across_releases_on_one_run():
    """A cluster upgraded one machine at a time: a candidate without thinking is written as the release before wrote it,
    and a field a newer release adds is left aside, not a failed job."""
    import json

    batch = GeneratedBatch("r1", [prompt("a", ["x", "y"])])
    written = json.loads(batch.to_json())
    assert {frozenset(c) for c in written["prompts"][0]["candidates"]} == {
        frozenset({"text", "completion_indices", "is_reference", "num_tokens", "finish_reason"})}
    assert set(written["prompts"][0]["prompt"]) == {"prompt_id", "messages", "reference_completion", "row_index", "columns"}
    assert set(batch.prompts[0].prompt.to_dict()) == set(written["prompts"][0]["prompt"])  # a generation job's prompts too
    written["prompts"][0]["candidates"][0]["confidence"] = 0.9  # what a later release might add
    written["prompts"][0]["prompt"]["language"] = "en"
    assert GeneratedBatch.from_dict(written) == batch


def test_a_sample_whose_thinking_never_ended_is_judged_by_its_whole_text_and_held_by_none():
    """With --reasoning-end, "42" whose thinking never ended (no marker) is judged by its whole text, "42": the same as
    an answered sample's answer, or the reference's. They are one candidate, which holds the answered sample (or the
    reference: may be chosen), never two of one text that rounding would make a pair of. With a harmony policy,
    samples that never reached their final channel stay apart (each is counted, none is chosen)."""
    from rsample.workers.backends.base import Completion, PromptCompletions
    from rsample.workers.common.messages import PromptRecord, PromptScores
    from rsample.workers.stages.aggregate import settle_prompt
    from rsample.workers.stages.dedup import merge_candidates

    config = RunConfig(run_id="r", data=DataSelection("d"), policy="p", reward_models=("rm",), reasoning_end="</think>")
    record = PromptRecord("p", [{"role": "user", "content": "what is 6 x 7?"}], "42", row_index=0)
    samples = PromptCompletions([Completion("42", 9, "stop"), Completion("6 x 7 = 42.</think>42", 9, "stop"),
                                 Completion("6 x 7 = 41.</think>41", 9, "stop")])
    merged = merge_candidates(record, samples, False, config.reasoning_end)
    assert [(c.text, c.completion_indices) for c in merged.candidates] == [("6 x 7 = 42.</think>42", [1, 0]), ("6 x 7 = 41.</think>41", [2])]
    result = BatchOutcome()
    assert settle_prompt(config, merged, [PromptScores(scores=[42.0, 41.0])], result) == PAIR
    assert (result.rows[0]["chosen"][-1]["content"], result.rows[0]["rejected"][-1]["content"]) == (
        "6 x 7 = 42.</think>42", "6 x 7 = 41.</think>41")

    with_reference = merge_candidates(record, PromptCompletions([Completion("42", 3, "stop")]), True, config.reasoning_end)
    [candidate] = with_reference.candidates  # the sample and the reference are one text: no pair of it against itself
    assert candidate.is_reference and candidate.completion_indices == [0, 1]
    assert settle_prompt(config, with_reference, [PromptScores(scores=[-0.5753067])], BatchOutcome()) == DROPPED_IDENTICAL

    unanswered = PromptCompletions([Completion("", 40, "length", "still thinking"), Completion("", 40, "length", "other thoughts"),
                                    Completion("", 12, "stop", "a tool call instead"), Completion("4", 20, "stop", "so 4")])
    assert [c.completion_indices for c in merge_candidates(record, unanswered, False).candidates] == [[0], [1], [2], [3]]


@pytest.mark.parametrize("shape", ["plain", "harmony"])
def test_a_reference_whose_answer_a_cut_sample_also_wrote_may_still_be_chosen(shape):
    """The reference is a whole answer: merged with a sample cut where it ends, the candidate is the reference's."""
    from rsample.workers.backends.base import Completion, PromptCompletions
    from rsample.workers.common.messages import PromptRecord, PromptScores
    from rsample.workers.stages.aggregate import settle_prompt
    from rsample.workers.stages.dedup import merge_candidates

    config = RunConfig(run_id="r", data=DataSelection("d"), policy="p", reward_models=("rm",), include_reference=True)
    record = PromptRecord("p", [{"role": "user", "content": "what is 6 x 7?"}], "42", row_index=0, reference_reasoning="Six sevens.")
    thinking = "6 x 7 = 42." if shape == "harmony" else None
    samples = PromptCompletions([Completion("42", 40, "length", thinking), Completion("41", 9, "stop", thinking)])
    merged = merge_candidates(record, samples, True)
    assert [(c.text, c.completion_indices, c.finish_reason, c.is_reference) for c in merged.candidates] == [
        ("42", [0, 2], "length", True), ("41", [1], "stop", False)]  # the sample's own finish reason, as the report counts it
    result = BatchOutcome()
    assert settle_prompt(config, merged, [PromptScores(scores=[42.0, 41.0])], result) == PAIR
    assert result.rows[0]["chosen"][-1]["content"] == "42" and result.rows[0]["rejected"][-1]["content"] == "41"


def test_a_chosen_reference_reads_the_same_in_its_turn_and_in_reference_completion():
    """A dataset's reference with whitespace around it (a trailing newline, often): the candidate was stripped, as
    completions are, and `reference_completion` was not, so a pair that chose the reference told two texts."""
    from rsample.workers.backends.base import Completion, PromptCompletions
    from rsample.workers.common.messages import PromptScores
    from rsample.workers.stages.aggregate import settle_prompt
    from rsample.workers.stages.dedup import merge_candidates

    record = PromptRecord("p", [{"role": "user", "content": "capital of France?"}], " Paris\n", row_index=0)
    merged = merge_candidates(record, PromptCompletions([Completion("Lyon", 2, "stop")]), True)
    result = BatchOutcome()
    one_model = RunConfig(run_id="r", data=DataSelection("d"), policy="p", reward_models=("rm",))
    assert settle_prompt(one_model, merged, [PromptScores(scores=[0.1, 0.9])], result) == PAIR
    [row] = result.rows
    assert row["chosen_finish_reason"] == "reference"
    assert row["chosen"][-1]["content"] == row["reference_completion"] == "Paris"
