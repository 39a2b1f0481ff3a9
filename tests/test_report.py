"""`rsample report`: numbers checked against the files themselves, warnings that fire when they should and only
then, real PNG figures, and files that are still being written."""

import dataclasses
import json
import random
import threading
from collections import Counter
from itertools import combinations

import matplotlib.image
import pytest
from conftest import CHAT_ROWS, read_jsonl, rsample, write_jsonl

from rsample.producer.report.document import write_report
from rsample.producer.report.sample import Reservoir, spearman
from rsample.workers.backends.tiny_models import build_reward_model

ZERO_COST = ["--policy", "p", "--reward-model", "length", "--backend", "echo", "--reward-backend", "length", "--no-progress"]
ROWS = [{"prompt": f"write about the river {'and the city ' * (i % 5)}number {i}"} for i in range(40)]


def check_png(path):
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and 5_000 < path.stat().st_size < 2_000_000
    height, width = matplotlib.image.imread(path).shape[:2]
    assert 300 <= width <= 2000 and 250 <= height <= 1500  # readable, not a thumbnail nor a poster


def test_the_length_reward_is_reported_as_length_bias(tmp_path):
    dataset = write_jsonl(tmp_path / "rows.jsonl", ROWS + [ROWS[0], "{not json"])
    out, scores = tmp_path / "pairs.jsonl", tmp_path / "scores.jsonl"
    run = rsample("run", "--dataset", str(dataset), *ZERO_COST, "--n", "4", "--out", str(out), "--scores-out", str(scores))
    assert "WARNING length bias" in run.stderr and (tmp_path / "pairs.report" / "report.md").exists()  # written at the end of a run
    result = rsample("report", str(out), "--scores", str(scores))
    assert "WARNING length bias" in result.stderr and "rank correlation between length and score +1.00" in result.stderr
    report_dir = tmp_path / "pairs.report"
    assert (report_dir / "report.md").read_text().count("![") == 5  # one model: no agreement matrix
    for name in ("scores", "margins", "lengths", "diversity", "truncation"):
        check_png(report_dir / f"{name}.png")
    outcomes = Counter(row["outcome"] for row in read_jsonl(tmp_path / "pairs.outcomes.jsonl")[1:])
    assert f"outcomes: {', '.join(f'{k} {v:,}' for k, v in sorted(outcomes.items()))}" in result.stdout  # every row accounted
    pairs = read_jsonl(out)
    longer = sum(len(p["chosen"][-1]["content"]) > len(p["rejected"][-1]["content"]) for p in pairs)
    assert f"chosen longer than rejected in {longer / len(pairs):.0%} of pairs" in result.stdout


def test_a_reward_unrelated_to_length_raises_no_warning(tmp_path):
    """Files in the documented format with scores drawn independently of lengths (and chosen the best of them)."""
    rng = random.Random(7)
    pairs, scores = [], []
    for p in range(300):
        candidates = [("word " * rng.randint(5, 200)).strip() for _ in range(6)]
        values = [rng.gauss(0, 1) for _ in candidates]
        for index, (text, value) in enumerate(zip(candidates, values)):
            scores.append({"prompt_id": f"p{p}", "completion_index": index, "completion": text, "scores": {"rm": value},
                           "is_reference": False, "finish_reason": "stop", "num_tokens": len(text.split())})
        best, worst = max(range(6), key=values.__getitem__), min(range(6), key=values.__getitem__)
        prompt = [{"role": "user", "content": "q"}]
        pairs.append({"prompt_id": f"p{p}", "messages": prompt, "chosen": prompt + [{"role": "assistant", "content": candidates[best]}],
                      "rejected": prompt + [{"role": "assistant", "content": candidates[worst]}], "chosen_score": {"rm": values[best]},
                      "rejected_score": {"rm": values[worst]}, "num_candidates": 6, "num_unique": 6})
    write_jsonl(tmp_path / "pairs.jsonl", pairs)
    write_jsonl(tmp_path / "scores.jsonl", scores)
    report = write_report(tmp_path / "pairs.jsonl", tmp_path / "scores.jsonl", tmp_path / "report")
    assert report.warnings == []
    margins = [p["chosen_score"]["rm"] - p["rejected_score"]["rm"] for p in pairs]
    assert f"margin mean {sum(margins) / len(margins):.3f}" in "\n".join(report.lines)


def test_two_reward_models_agreement_matches_the_scores_file(tmp_path, tiny_models):
    second = str(build_reward_model(tmp_path / "reward-2", seed=11, pad="eos"))
    dataset = write_jsonl(tmp_path / "rows.jsonl", ROWS[:12])
    out, scores = tmp_path / "pairs.jsonl", tmp_path / "scores.jsonl"
    rsample("run", "--dataset", str(dataset), "--policy", tiny_models["policy"], "--reward-model", tiny_models["reward"],
            "--reward-model", second, "--n", "4", "--temperature", "1.0", "--max-new-tokens", "24", "--keep-truncated",
            "--out", str(out), "--scores-out", str(scores), "--no-progress")
    report = write_report(out, scores, tmp_path / "report")
    by_prompt = {}
    for row in read_jsonl(scores):
        if not row["is_reference"]:
            by_prompt.setdefault(row["prompt_id"], []).append(row["scores"])
    first_name, second_name = sorted(by_prompt[next(iter(by_prompt))][0])
    same_best = sum(max(range(len(c)), key=lambda i: c[i][first_name]) == max(range(len(c)), key=lambda i: c[i][second_name])
                    for c in by_prompt.values())
    pairs = [(a, b) for c in by_prompt.values() for a, b in combinations(c, 2)
             if a[first_name] != b[first_name] and a[second_name] != b[second_name]]
    alike = sum((a[first_name] - b[first_name]) * (a[second_name] - b[second_name]) > 0 for a, b in pairs)
    assert (f"{first_name} and {second_name}: same best generated candidate on {same_best / len(by_prompt):.0%} of prompts, "
            f"{alike / len(pairs):.0%} of candidate pairs ordered alike (of the {len(pairs):,} neither model ties)") in report.lines
    check_png(report.figures["agreement"])


def test_a_second_model_that_prefers_the_rejected_and_ties_are_said_with_their_shares(tmp_path):
    """Chosen by `rm` alone: `judge` scores the rejected higher on every third pair and ties half its candidates. The
    margin line counted such pairs nowhere (only |margin| under 0.1 std), and the pair-order share left the ties out
    of its denominator without saying so."""
    prompt = [{"role": "user", "content": "q"}]
    pairs, scores = [], []
    for p in range(30):
        rm = [0.0, 1.0, 2.0, 3.0]
        judge = [1.0, 1.0, 2.0, 0.0] if p % 3 == 0 else [0.0, 2.0, 2.0, 5.0]  # ties between 0 and 1, or 1 and 2
        for index in range(4):
            scores.append({"prompt_id": f"p{p}", "completion_index": index, "completion": f"answer {p} {index}",
                           "scores": {"rm": rm[index], "judge": judge[index]}, "is_reference": False, "finish_reason": "stop", "num_tokens": 3})
        pairs.append({"prompt_id": f"p{p}", "messages": prompt, "chosen": prompt + [{"role": "assistant", "content": f"answer {p} 3"}],
                      "rejected": prompt + [{"role": "assistant", "content": f"answer {p} 0"}], "chosen_score": {"rm": 3.0, "judge": judge[3]},
                      "rejected_score": {"rm": 0.0, "judge": judge[0]}, "num_candidates": 4, "num_unique": 4})
    write_jsonl(tmp_path / "pairs.jsonl", pairs)
    write_jsonl(tmp_path / "scores.jsonl", scores)
    report = write_report(tmp_path / "pairs.jsonl", tmp_path / "scores.jsonl", tmp_path / "report")
    judge_margins = report.lines[report.lines.index("reward model judge:") + 1]
    assert judge_margins.startswith("  margin mean 3.000") and "the rejected scored higher in 33% of pairs" in judge_margins  # -1 on 10 of 30, else 5
    assert sum("the rejected scored higher" in line for line in report.lines) == 1  # rm chose: never against it
    # each prompt: 6 candidate pairs, 1 tied by judge; of the other 5, judge reverses 0-3, 1-3 and 2-3 on a third of the
    # prompts (2 alike) and none on the others (5 alike)
    untied = 30 * 5
    alike = 10 * 2 + 20 * 5
    assert f"judge and rm: same best generated candidate on 67% of prompts, {alike / untied:.0%} of candidate pairs ordered alike (of the {untied} neither model ties)" in report.lines


def test_few_distinct_candidates_are_reported_as_low_diversity(tmp_path):
    prompt = [{"role": "user", "content": "q"}]
    rows = [{"prompt_id": f"p{i}", "messages": prompt, "chosen": prompt + [{"role": "assistant", "content": f"yes {i}"}],
             "rejected": prompt + [{"role": "assistant", "content": f"nay {i}"}], "chosen_score": {"rm": 1.0}, "rejected_score": {"rm": 0.0},
             "num_candidates": 8, "num_unique": 2 if i % 2 else 8} for i in range(40)]
    write_jsonl(tmp_path / "pairs.jsonl", rows)
    write_jsonl(tmp_path / "pairs.outcomes.jsonl", [{"rsample_run": "x"}] + [
        {"row_index": i, "prompt_id": f"p{i}", "outcome": "pair", "reason": None} for i in range(40)] + [
        {"row_index": 40 + i, "prompt_id": f"d{i}", "outcome": "dropped_identical", "reason": None} for i in range(10)])
    report = write_report(tmp_path / "pairs.jsonl", None, tmp_path / "report")
    assert report.warnings == ["low diversity: 60% of prompts have 2 or fewer distinct candidates (temperature too low?)"]  # (20 + 10) / 50
    check_png(report.figures["diversity"])


def test_with_two_samples_a_prompt_is_of_low_diversity_only_when_they_are_alike(tmp_path):
    """With --n 2 no prompt can have more than 2 distinct candidates: every run was warned of low diversity (100%)."""
    prompt = [{"role": "user", "content": "q"}]
    rows = [{"prompt_id": f"p{i}", "messages": prompt, "chosen": prompt + [{"role": "assistant", "content": f"yes {i}"}],
             "rejected": prompt + [{"role": "assistant", "content": f"nay {i}"}], "chosen_score": {"rm": 1.0}, "rejected_score": {"rm": 0.0},
             "num_candidates": 2, "num_unique": 2} for i in range(8)]
    write_jsonl(tmp_path / "pairs.jsonl", rows)
    header = {"rsample_run": "x", "settings": {"sampling": {"n": 2}}}
    outcomes = [{"row_index": i, "prompt_id": f"p{i}", "outcome": "pair", "reason": None} for i in range(8)]
    write_jsonl(tmp_path / "pairs.outcomes.jsonl", [header, *outcomes])
    report = write_report(tmp_path / "pairs.jsonl", None, tmp_path / "report")
    assert report.warnings == []
    assert "distinct candidates per prompt: mean 2.0; 1 on 0% of prompts" in report.lines
    identical = [{"row_index": 8 + i, "prompt_id": f"d{i}", "outcome": "dropped_identical", "reason": None} for i in range(2)]
    write_jsonl(tmp_path / "pairs.outcomes.jsonl", [header, *outcomes, *identical])
    report = write_report(tmp_path / "pairs.jsonl", None, tmp_path / "report")
    assert report.warnings == ["low diversity: 20% of prompts have 1 distinct candidates (temperature too low?)"]  # 2 / 10


def test_prompts_dropped_for_unfinished_candidates_do_not_raise_the_low_diversity_warning(tmp_path):
    """A reasoning run whose thinking rarely ends writes few pairs, and one of those few has 2 distinct candidates: the
    share is over every prompt that got candidates (6 distinct each, by the scores file), not over the pairs alone."""
    prompt = [{"role": "user", "content": "q"}]
    pairs = [{"prompt_id": f"p{i}", "messages": prompt, "chosen": prompt + [{"role": "assistant", "content": "yes"}],
              "rejected": prompt + [{"role": "assistant", "content": "no"}], "chosen_score": {"rm": 1.0}, "rejected_score": {"rm": 0.0},
              "num_candidates": 6, "num_unique": 6 if i else 2} for i in range(2)]
    write_jsonl(tmp_path / "pairs.jsonl", pairs)
    write_jsonl(tmp_path / "pairs.outcomes.jsonl", [{"rsample_run": "x"}] + [
        {"row_index": i, "prompt_id": f"p{i}", "outcome": "pair" if i < 2 else "dropped_unfinished", "reason": None} for i in range(10)])
    scores = [{"prompt_id": f"p{i}", "completion_index": k, "completion": f"thinking {k}", "scores": {"rm": k / 10}, "is_reference": False,
               "finish_reason": "length", "num_tokens": 9} for i in range(10) for k in range(6 if i else 2)]
    write_jsonl(tmp_path / "scores.jsonl", scores)
    with_scores = write_report(tmp_path / "pairs.jsonl", tmp_path / "scores.jsonl", tmp_path / "report")
    assert not [w for w in with_scores.warnings if w.startswith("low diversity")], with_scores.warnings
    assert "distinct candidates per prompt: mean 5.6; 2 or fewer on 10% of prompts" in with_scores.lines  # (2 + 9 * 6) / 10
    without = write_report(tmp_path / "pairs.jsonl", None, tmp_path / "report-pairs")
    assert not [w for w in without.warnings if w.startswith("low diversity")], without.warnings  # 1 of 10, the 8 unknown not low


def test_identical_prompts_scored_for_an_sft_file_are_counted_once(tmp_path):
    """With --sft, a prompt of one distinct candidate is scored too: its group in the scores file is its count, and
    its `dropped_identical` outcome must not count it a second time."""
    prompt = [{"role": "user", "content": "q"}]
    pairs = [{"prompt_id": f"p{i}", "messages": prompt, "chosen": prompt + [{"role": "assistant", "content": "a longer one"}],
              "rejected": prompt + [{"role": "assistant", "content": "short"}], "chosen_score": {"rm": 1.0}, "rejected_score": {"rm": 0.0},
              "num_candidates": 6, "num_unique": 6} for i in range(7)]
    write_jsonl(tmp_path / "pairs.jsonl", pairs)
    write_jsonl(tmp_path / "pairs.outcomes.jsonl", [{"rsample_run": "x"}] + [
        {"row_index": i, "prompt_id": f"p{i}", "outcome": "pair" if i < 7 else "dropped_identical", "reason": None} for i in range(10)])
    scores = [{"prompt_id": f"p{i}", "completion_index": k, "completion": f"answer {k}", "scores": {"rm": k / 10}, "is_reference": False,
               "finish_reason": "stop", "num_tokens": 9} for i in range(10) for k in range(6 if i < 7 else 1)]
    write_jsonl(tmp_path / "scores.jsonl", scores)
    report = write_report(tmp_path / "pairs.jsonl", tmp_path / "scores.jsonl", tmp_path / "report")
    assert "distinct candidates per prompt: mean 4.5; 2 or fewer on 30% of prompts" in report.lines  # (7 * 6 + 3) / 10, 3 of 10


def test_a_growing_file_is_read_up_to_its_last_complete_line(tmp_path):
    row = {"prompt_id": "a", "messages": [], "chosen": [{"role": "assistant", "content": "long answer"}],
           "rejected": [{"role": "assistant", "content": "short"}], "chosen_score": {"rm": 1.0}, "rejected_score": {"rm": 0.0},
           "num_candidates": 2, "num_unique": 2}
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps(row) + "\n" + json.dumps(row)[:40])  # the writer is in the middle of its second row
    report = write_report(path, None, tmp_path / "report")
    assert report.lines[0] == "pairs 1" and any("no scores file" in line for line in report.lines)


def test_rank_correlation_and_sampling_against_hand_computed_values():
    assert spearman([(1, 10), (2, 20), (3, 30), (4, 25)]) == pytest.approx(0.8)  # ranks 1 2 4 3: 1 - 6*2/(4*15)
    assert spearman([(1, 5), (2, 4), (3, 3)]) == pytest.approx(-1.0)
    assert spearman([(1, 1), (1, 2), (2, 3)]) == pytest.approx(0.8660254)  # tied x: average ranks
    sample = Reservoir(capacity=1000)
    for value in range(100_000):
        sample.add(value)
    assert len(sample.items) == 1000 and not sample.exact
    assert 40_000 < sum(sample.items) / len(sample.items) < 60_000  # uniform over everything seen


def test_status_shows_the_reports_numbers_of_a_run_being_written(redis_server, tmp_path):
    from faults import start

    url = redis_server.url
    dataset = write_jsonl(tmp_path / "rows.jsonl", ROWS)
    run_id = rsample("enqueue", "--redis-url", url, "--dataset", str(dataset), *ZERO_COST[:-1], "--n", "4").stdout.strip()
    log = tmp_path / "processes.log"
    worker = start("worker", "both", "--redis-url", url, log=log)
    try:
        rsample("aggregate", "--redis-url", url, "--run", run_id, "--out", str(tmp_path / "pairs.jsonl"), "--no-progress")
    finally:
        worker.kill()
        worker.wait()
    [status] = json.loads(rsample("status", "--redis-url", url, "--run", run_id, "--json").stdout)
    pairs = read_jsonl(tmp_path / "pairs.jsonl")
    assert status["report"]["pairs"] == len(pairs) and status["report"]["chosen_longer"] == 1.0
    assert status["report"]["models"]["length"]["length_rho"] == pytest.approx(1.0)
    assert status["report"]["truncated"] == 0.0
    text = rsample("status", "--redis-url", url, "--run", run_id).stdout
    assert f"data so far: {len(pairs)} pairs; length: " in text and "chosen longer in 100% of pairs" in text


def test_the_live_numbers_of_a_resumed_run_count_the_rows_written_before_once(tmp_path):
    """A coordinator that resumes (or takes over) starts from the files: `rsample status` shows the whole run's numbers.
    Rows the files gain after it measured them come through `add`, as commits do, and count once."""
    from rsample.producer.report.live import LiveNumbers

    def pair(i):
        prompt = [{"role": "user", "content": f"q{i}"}]
        return {"prompt_id": f"p{i}", "chosen": prompt + [{"role": "assistant", "content": "x" * (10 + i)}],
                "rejected": prompt + [{"role": "assistant", "content": "y"}], "chosen_score": {"m": float(i)},
                "rejected_score": {"m": 0.0}, "num_unique": 2}

    def candidates(i):
        return [{"prompt_id": f"p{i}", "completion_index": k, "completion": text, "scores": {"m": score},
                 "is_reference": False, "finish_reason": "length" if k == 1 and i % 2 else "stop", "num_tokens": 3}
                for k, (text, score) in enumerate((("x" * (10 + i), float(i)), ("y", 0.0)))]

    pairs, scores = tmp_path / "pairs.jsonl", tmp_path / "scores.jsonl"
    write_jsonl(pairs, [pair(i) for i in range(30)])
    write_jsonl(scores, [row for i in range(30) for row in candidates(i)])
    live = LiveNumbers()
    live.start_from(pairs, scores)
    later_pairs, later_scores = [pair(i) for i in range(30, 40)], [row for i in range(30, 40) for row in candidates(i)]
    with pairs.open("a") as handle:  # the ledger commits on, while the earlier rows are still being read
        handle.write("".join(json.dumps(row) + "\n" for row in later_pairs))
    with scores.open("a") as handle:
        handle.write("".join(json.dumps(row) + "\n" for row in later_scores))
    live.add(later_pairs, later_scores)
    numbers = json.loads(live.summary())
    assert numbers["pairs"] == 40
    assert numbers["models"]["m"]["margin_mean"] == pytest.approx(sum(range(40)) / 40)
    assert numbers["truncated"] == pytest.approx(20 / 80)  # one of the two candidates of every odd prompt
    fresh = LiveNumbers()
    fresh.start_from(tmp_path / "none.jsonl", None)  # a fresh run: nothing to read
    assert json.loads(fresh.summary())["pairs"] == 0


def test_a_row_retried_with_retry_failed_is_counted_once_by_its_new_outcome(tmp_path):
    """The outcomes file keeps a failed row's old `skipped` line, then `rsample_retry`, then its new outcome: the report
    counted both lines (3 outcomes for 2 rows, and a skip reason that no longer held), where the summary said 2 pairs."""
    from rsample.producer.driver.ledger import Ledger
    from rsample.producer.report.stats import read_run
    from rsample.workers.common.messages import PAIR, SKIPPED, Outcome

    def pair(prompt_id):
        user = [{"role": "user", "content": prompt_id}]
        return {"prompt_id": prompt_id, "messages": user, "chosen": [*user, {"role": "assistant", "content": "long answer"}],
                "rejected": [*user, {"role": "assistant", "content": "no"}], "chosen_score": {"rm": 1.0},
                "rejected_score": {"rm": 0.0}, "num_unique": 2}

    out = tmp_path / "pairs.jsonl"
    ledger = Ledger(out, None, "run1")
    ledger.commit([Outcome(0, "p0", PAIR), Outcome(1, "p1", SKIPPED, "generation failed: worker died")], [pair("p0")], [])
    assert [outcome.row_index for outcome in ledger.retry_failed()] == [1]
    ledger.commit([Outcome(1, "p1", PAIR)], [pair("p1")], [])
    ledger.close()
    lines = [json.loads(line) for line in out.with_name("pairs.outcomes.jsonl").read_text().splitlines()]
    assert sum("outcome" in line for line in lines) == 3  # the case: three outcome lines for two rows
    numbers = read_run(out)
    assert numbers.pairs == 2 and dict(numbers.outcomes) == {PAIR: 2} and not numbers.skip_reasons


def test_a_sample_merged_with_the_reference_counts_among_the_generated_and_unscored_ones_are_counted(tmp_path):
    """A sample identical to the reference keeps its own finish reason (`length` here) and `is_reference`: the report
    left it out of its candidates and truncation. A candidate a reward could not score (None) is counted per reward."""
    from rsample.producer.report.document import summary_lines
    from rsample.producer.report.stats import read_run

    pairs, scores = tmp_path / "pairs.jsonl", tmp_path / "scores.jsonl"
    pairs.write_text("")
    write_jsonl(scores, [
        {"prompt_id": "p", "completion_index": 0, "completion": "Paris", "scores": {"rm": 1.0}, "is_reference": True,
         "finish_reason": "length", "num_tokens": 4},
        {"prompt_id": "p", "completion_index": 1, "completion": "Lyon", "scores": {"rm": None}, "is_reference": False,
         "finish_reason": "stop", "num_tokens": 3},
        {"prompt_id": "p", "completion_index": 2, "completion": "Nice", "scores": {"rm": 0.0}, "is_reference": False,
         "finish_reason": "stop", "num_tokens": 3},
        {"prompt_id": "p", "completion_index": 3, "completion": "the capital", "scores": {"rm": 0.5}, "is_reference": True,
         "finish_reason": "reference", "num_tokens": 0},
    ])
    numbers = read_run(pairs, scores)
    assert numbers.candidates == 3 and numbers.truncated == 1  # the reference alone is left out
    assert numbers.models["rm"].unscored == 1
    assert "  gave no score to 1 of 3 generated candidates (33.3%): pairs are chosen among the others" in summary_lines(numbers)


def test_shares_count_samples_not_distinct_candidates(tmp_path):
    """Three samples cut alike are one candidate: of 4 samples 3 were cut (75 %), not 1 of 2 candidates (50 %). A
    file written before `num_samples` counts each row as one sample."""
    from rsample.producer.report.document import summary_lines
    from rsample.producer.report.stats import read_run

    def row(prompt_id, index, text, finish, **extra):
        return {"prompt_id": prompt_id, "completion_index": index, "completion": text, "scores": {"rm": float(index)},
                "is_reference": False, "finish_reason": finish, "num_tokens": 4, **extra}

    pairs, scores = tmp_path / "pairs.jsonl", tmp_path / "scores.jsonl"
    pairs.write_text("")
    write_jsonl(scores, [row("p", 0, "cut alike", "length", num_samples=3), row("p", 1, "ended", "stop", num_samples=1),
                         row("old", 0, "cut", "length"), row("old", 1, "ended", "stop")])
    numbers = read_run(pairs, scores)
    assert (numbers.samples, numbers.candidates, numbers.truncated) == (6, 4, 4)
    assert sorted(numbers.truncated_share_per_prompt.items) == [0.5, 0.75]
    assert "truncated at --max-new-tokens: 66.7% of 6 samples (4 distinct)" in summary_lines(numbers)


def test_the_report_reads_an_outcomes_file_whose_header_a_crash_cut(tmp_path):
    """The resume's reader the report now shares failed on a header cut short (no row is settled in such a file)."""
    from click.testing import CliRunner

    from rsample.producer.cli import main

    (tmp_path / "pairs.jsonl").write_text("")
    (tmp_path / "pairs.outcomes.jsonl").write_text('{"rsample_run": "x", "outp')
    result = CliRunner().invoke(main, ["report", str(tmp_path / "pairs.jsonl"), "--out-dir", str(tmp_path / "r")])
    assert result.exit_code == 0, repr(result.exception)
    assert "pairs 0" in result.output


def test_a_coordinator_stopped_before_the_end_publishes_what_it_wrote(redis_client, tmp_path):
    """The live numbers are published at most every 10 s: a coordinator stopped (Ctrl-C, SIGTERM) between two
    publications left `rsample status` showing fewer pairs than the files hold, until another coordinator started."""

    from rsample.producer.driver.coordinator import Coordinator
    from rsample.producer.registration import register_run
    from rsample.workers.backends.zero_cost import EchoGenerator, LengthReward
    from rsample.workers.common.config import DataSelection, ModelSettings, RunConfig, SamplingConfig
    from rsample.workers.runtime import worker_context
    from rsample.workers.runtime.keys import RunKeys
    from rsample.workers.runtime.queues import make_queue
    from rsample.workers.stages.generate import generate_batch
    from rsample.workers.stages.score import score_batch

    dataset = write_jsonl(tmp_path / "chat.jsonl", CHAT_ROWS)
    config = RunConfig(run_id="", data=DataSelection(str(dataset)), policy="p", reward_models=("len",), prompts_per_job=4,
                       sampling=SamplingConfig(n=3), models=ModelSettings(generation_backend="echo", reward_backend="length"))
    config, _ = register_run(redis_client, config)
    keys = RunKeys(config.run_id)
    coordinator = Coordinator(redis_client, config, tmp_path / "pairs.jsonl")
    worker_context.install(worker_context.WorkerContext(redis_client, config, EchoGenerator(), {0: LengthReward()}))

    def work(job) -> None:
        run_id, batch_id, prompts = job.args
        generate_batch(run_id, batch_id, prompts)
        score_batch(run_id, batch_id, 0)

    class Stopped(Exception):
        pass

    def stop() -> None:
        raise Stopped

    try:
        coordinator.feeder.top_up()
        first, second = make_queue(redis_client, keys.generate_queue).jobs
        work(first)
        coordinator.collector.step(block_ms=50)  # written and published (the first publication is due at once)
        published = json.loads(redis_client.hget(keys.stats, "report"))["pairs"]
        assert published == len(read_jsonl(tmp_path / "pairs.jsonl")) == len(first.args[2])
        work(second)
        with pytest.raises(Stopped):
            coordinator.run(check=stop)  # one step writes the second batch, then the coordinator is stopped
    finally:
        worker_context.install(None)
    pairs = read_jsonl(tmp_path / "pairs.jsonl")
    assert len(pairs) > published
    assert json.loads(redis_client.hget(keys.stats, "report"))["pairs"] == len(pairs)


PROMPT = [{"role": "user", "content": "q"}]


def pair_row(pid, chosen, rejected, scores_c, scores_r, num_candidates, num_unique, **extra):
    return {"prompt_id": pid, "messages": PROMPT, "chosen": PROMPT + [{"role": "assistant", "content": chosen}],
            "rejected": PROMPT + [{"role": "assistant", "content": rejected}], "chosen_score": scores_c, "rejected_score": scores_r,
            "reference_completion": None, "reference_completion_score": None, "num_candidates": num_candidates,
            "num_unique": num_unique, "chosen_finish_reason": "stop", "rejected_finish_reason": "stop", **extra}


def score_row(pid, index, text, scores, finish="stop", is_reference=False):
    return {"prompt_id": pid, "completion_index": index, "num_samples": 0 if finish == "reference" else 1, "completion": text,
            "scores": scores, "is_reference": is_reference, "finish_reason": finish, "num_tokens": 0 if finish == "reference" else 5}


def test_the_report_of_a_reasoning_run_reads_its_marker_from_the_runs_settings(tmp_path):
    """`rsample report pairs.jsonl --scores scores.jsonl` of a run made with --reasoning-end, without the flag: it warned
    that the rewards read the thinking (they did not) and measured lengths on the thinking (so it said 0% where the
    chosen answer is always the longer)."""
    pairs, scores = [], []
    outcomes = [{"rsample_run": "x", "settings": {"sampling": {"n": 3}, "reasoning_end": "</think>"}}]
    for i in range(20):
        texts = [f"<think>{'t' * (50 - k * 20)}</think>{'a' * (5 + 10 * k)}" for k in range(3)]  # longer answer, shorter thinking
        scores += [score_row(f"p{i}", k, text, {"rm": float(k)}) for k, text in enumerate(texts)]
        pairs.append(pair_row(f"p{i}", texts[2], texts[0], {"rm": 2.0}, {"rm": 0.0}, 3, 3))
        outcomes.append({"row_index": i, "prompt_id": f"p{i}", "outcome": "pair", "reason": None})
    write_jsonl(tmp_path / "pairs.jsonl", pairs)
    write_jsonl(tmp_path / "scores.jsonl", scores)
    write_jsonl(tmp_path / "pairs.outcomes.jsonl", outcomes)
    report = write_report(tmp_path / "pairs.jsonl", tmp_path / "scores.jsonl", tmp_path / "report")
    assert not [warning for warning in report.warnings if warning.startswith("thinking scored")], report.warnings
    assert "chosen longer than rejected in 100% of pairs" in report.lines, report.lines  # answers: 25 > 5 characters


def test_two_rewards_agree_on_the_best_when_one_of_them_ties_it_with_others(tmp_path):
    """A verifier passes three of four answers and the reward model's best is one of them: they agree. The report took
    the verifier's first tied index, and said 0%."""
    pairs, scores = [], []
    for i in range(10):
        values = [(1.0, 0.1), (1.0, 0.5), (1.0, 0.9), (0.0, 0.0)]
        scores += [score_row(f"p{i}", k, f"answer {k} of {i}", {"verify:math": v, "rm": r}) for k, (v, r) in enumerate(values)]
        pairs.append(pair_row(f"p{i}", f"answer 2 of {i}", f"answer 3 of {i}", {"verify:math": 1.0, "rm": 0.9},
                              {"verify:math": 0.0, "rm": 0.0}, 4, 4))
    write_jsonl(tmp_path / "pairs.jsonl", pairs)
    write_jsonl(tmp_path / "scores.jsonl", scores)
    report = write_report(tmp_path / "pairs.jsonl", tmp_path / "scores.jsonl", tmp_path / "report")
    line = next(line for line in report.lines if "same best generated candidate" in line)
    assert "same best generated candidate on 100% of prompts" in line, line


def test_a_scores_file_of_another_run_is_refused_not_mixed_in(tmp_path):
    """`rsample report a/pairs.jsonl --scores b/scores.jsonl` gave sections of both runs' rewards, and agreement,
    truncation and diversity across the two, without a word."""
    write_jsonl(tmp_path / "pairs.jsonl", [pair_row("p0", "long answer", "short", {"quality": 2.0}, {"quality": 0.0}, 2, 2)])
    write_jsonl(tmp_path / "scores.jsonl", [score_row("p0", k, f"answer {k}", {"rm": float(k), "f": 1.0}) for k in range(2)])
    result = rsample("report", str(tmp_path / "pairs.jsonl"), "--scores", str(tmp_path / "scores.jsonl"), check=False)
    assert (result.returncode, result.stderr.strip()) == (2, f"error: {tmp_path / 'scores.jsonl'} holds scores of f, rm and "
                                                             f"{tmp_path / 'pairs.jsonl'} of quality: they are not one run's files")
    assert not (tmp_path / "report.md").exists() and not list(tmp_path.rglob("report.md"))


@pytest.mark.parametrize("with_scores", [True, False])
def test_diversity_counts_the_policys_samples_not_the_reference(tmp_path, with_scores):
    """--n 2 --include-reference, each prompt's two samples alike: every prompt has 1 distinct sample. The reference,
    counted as a candidate, hid it (0%, no warning), from the scores file and from the pairs' num_unique alike."""
    pairs, scores = [], []
    outcomes = [{"rsample_run": "x", "settings": {"sampling": {"n": 2}, "include_reference": True}}]
    for i in range(10):
        scores += [score_row(f"p{i}", 0, f"same {i}", {"rm": 0.0}), score_row(f"p{i}", 2, f"reference {i}", {"rm": 1.0}, "reference", True)]
        pairs.append(pair_row(f"p{i}", f"reference {i}", f"same {i}", {"rm": 1.0}, {"rm": 0.0}, 3, 2, chosen_finish_reason="reference",
                              reference_completion=f"reference {i}", reference_completion_score={"rm": 1.0}))
        outcomes.append({"row_index": i, "prompt_id": f"p{i}", "outcome": "pair", "reason": None})
    write_jsonl(tmp_path / "pairs.jsonl", pairs)
    write_jsonl(tmp_path / "scores.jsonl", scores)
    write_jsonl(tmp_path / "pairs.outcomes.jsonl", outcomes)
    report = write_report(tmp_path / "pairs.jsonl", tmp_path / "scores.jsonl" if with_scores else None, tmp_path / "report")
    assert "distinct candidates per prompt: mean 1.0; 1 on 100% of prompts" in report.lines, report.lines
    assert any(warning.startswith("low diversity") for warning in report.warnings), report.warnings


def test_a_reference_merged_with_a_sample_is_one_of_the_samples_in_the_pairs_count():
    from rsample.producer.report.stats import RunNumbers, add_pair

    numbers = RunNumbers()
    merged = pair_row("p", "Paris", "Lyon", {"rm": 1.0}, {"rm": 0.0}, 5, 2, reference_completion="Paris ",
                      reference_completion_score={"rm": 1.0})  # the chosen is the reference's text, with a sample's finish
    apart = pair_row("q", "Paris", "Lyon", {"rm": 1.0}, {"rm": 0.0}, 5, 3, reference_completion="Nice",
                     reference_completion_score={"rm": 0.5})
    add_pair(numbers, merged)
    add_pair(numbers, apart)
    assert numbers.unique_per_prompt == Counter({2: 2})


def test_a_resumed_coordinator_holds_no_rows_it_commits_while_it_counts_the_files(tmp_path, monkeypatch):
    """The rows committed while a resume counts the files were held whole until the count ended: a count of minutes
    (a scores file of tens of GB) at a high commit rate held gigabytes. They are counted from the files instead."""
    import threading
    import tracemalloc

    from rsample.producer.report import live as live_module

    release, real_read_rows = threading.Event(), live_module.read_rows

    def held_read_rows(*args, **kwargs):
        release.wait(30)  # the count of the earlier rows takes long
        yield from real_read_rows(*args, **kwargs)

    monkeypatch.setattr(live_module, "read_rows", held_read_rows)
    pairs, scores = tmp_path / "pairs.jsonl", tmp_path / "scores.jsonl"
    write_jsonl(pairs, [pair_row("p0", "a", "b", {"m": 1.0}, {"m": 0.0}, 2, 2)])
    write_jsonl(scores, [score_row("p0", k, text, {"m": 1.0 - k}, "stop") for k, text in enumerate("ab")])
    live = live_module.LiveNumbers()
    live.start_from(pairs, scores)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    margins = [1.0]
    for commit in range(40):  # 40 commits of 16 prompts of 16 candidates of 1,000 characters, committed to the files
        committed_pairs, committed_scores = [], []
        for k in range(16):
            prompt_id, margin = f"c{commit}-{k}", (commit * 16 + k) % 7 / 7
            committed_pairs.append(pair_row(prompt_id, "x" * 1000, "y" * 999, {"m": margin}, {"m": 0.0}, 16, 16))
            committed_scores += [score_row(prompt_id, i, f"{i}" + "z" * 999, {"m": float(i)}, "stop") for i in range(16)]
            margins.append(margin)
        with pairs.open("a") as handle:
            handle.write("".join(json.dumps(row) + "\n" for row in committed_pairs))
        with scores.open("a") as handle:
            handle.write("".join(json.dumps(row) + "\n" for row in committed_scores))
        live.add(committed_pairs, committed_scores)
        del committed_pairs, committed_scores
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    release.set()
    numbers = json.loads(live.summary())
    assert held < 1 << 20, f"{held / 2**20:.1f} MiB held for 640 prompts committed during the count"  # 16 MiB before
    assert numbers["pairs"] == 1 + 640 and numbers["models"]["m"]["margin_mean"] == pytest.approx(sum(margins) / len(margins), abs=1e-4)
    more = [pair_row("after", "x", "y", {"m": 2.0}, {"m": 0.0}, 2, 2)]  # once counted, commits count at once
    live.add(more, [])
    assert json.loads(live.summary())["pairs"] == 642


def test_live_numbers_count_the_rows_committed_during_a_count_that_fails(tmp_path, monkeypatch):
    """The earlier rows cannot be read (a damaged line): the numbers are this session's, the rows committed while the
    count ran included."""
    import threading

    from rsample.producer.report import live as live_module

    release, real_read_rows = threading.Event(), live_module.read_rows

    def held_read_rows(*args, **kwargs):
        release.wait(30)
        yield from real_read_rows(*args, **kwargs)

    monkeypatch.setattr(live_module, "read_rows", held_read_rows)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("{not json\n")
    live = live_module.LiveNumbers()
    live.start_from(pairs, None)
    committed = [pair_row(f"c{i}", "x", "y", {"m": 1.0}, {"m": 0.0}, 2, 2) for i in range(3)]
    with pairs.open("a") as handle:
        handle.write("".join(json.dumps(row) + "\n" for row in committed))
    live.add(committed, [])
    release.set()
    assert json.loads(live.summary())["pairs"] == 3


@pytest.mark.parametrize("scores_file", [None, "scores.jsonl"])
def test_live_numbers_of_a_resume_without_a_scores_file_leave_out_the_candidates_figures(tmp_path, scores_file):
    """The earlier sessions' candidates are in no file (no --scores-out, or one this resume adds, empty so far):
    truncation and length correlation would be this session's alone, beside the whole run's pairs and margins."""
    from rsample.producer.report.live import LiveNumbers

    pairs = tmp_path / "pairs.jsonl"
    write_jsonl(pairs, [pair_row(f"p{i}", "x" * (10 + i), "y", {"m": float(i)}, {"m": 0.0}, 2, 2) for i in range(5)])
    live = LiveNumbers()
    live.start_from(pairs, scores_file and tmp_path / scores_file)
    later = [pair_row(f"p{i}", "x" * (10 + i), "y", {"m": float(i)}, {"m": 0.0}, 2, 2) for i in range(5, 9)]
    later_scores = [score_row(p["prompt_id"], k, text, {"m": float(k)}, "length" if k else "stop")
                    for p in later for k, text in enumerate(("y", "x" * 12, "z" * 20))]
    with pairs.open("a") as handle:  # committed, as the ledger does before the live numbers count them
        handle.write("".join(json.dumps(row) + "\n" for row in later))
    if scores_file:
        write_jsonl(tmp_path / scores_file, later_scores)
    live.add(later, later_scores)
    numbers = json.loads(live.summary())
    assert numbers["pairs"] == 9 and numbers["models"]["m"]["margin_mean"] == pytest.approx(sum(range(9)) / 9)
    assert numbers["truncated"] is None and numbers["models"]["m"]["length_rho"] is None
    fresh = LiveNumbers()
    fresh.start_from(tmp_path / "none.jsonl", None)
    fresh.add(later, [score_row(p["prompt_id"], k, "x" * k, {"m": float(k)}, "length" if k == 1 else "stop")
                      for p in later for k in range(3)])
    assert json.loads(fresh.summary())["truncated"] == round(1 / 3, 4)  # a fresh run's candidates are all this session's


def test_the_end_summary_says_when_its_counts_are_this_sessions():
    from rsample.producer.driver.summary import summarize

    summary = summarize(Counter(pair=3), Counter(), 12, 40, 2.0, unscored={"rm": (3, 12)})
    assert "WARNING rm gave no score to 3 of 12 generated candidates (25.0%" in "\n".join(summary.lines())
    resumed = "\n".join(dataclasses.replace(summary, resumed=True).lines())
    assert "WARNING rm gave no score to 3 of 12 generated candidates this session (25.0%" in resumed
    assert "completions          12 in 2.0 s (6.00/s, 20.0 tokens/s): this session's (the run was resumed)" in resumed


def test_a_single_value_has_no_spread(tmp_path):
    write_jsonl(tmp_path / "pairs.jsonl", [pair_row("p", "long answer", "no", {"rm": 1.0}, {"rm": 0.0}, 2, 2)])
    report = write_report(tmp_path / "pairs.jsonl", None, tmp_path / "report")
    assert "  margin mean 1.000, std n/a (one value)" in report.lines


def test_diversity_from_pairs_of_a_thinking_run_with_a_merged_reference():
    """--reasoning-end with --include-reference: a sample with the reference's answer merges with it, and the pair's
    side holds the sample's whole text (thinking included): compared by answer, as dedup merges them, it is one of the
    2 distinct samples (compared whole, 1: a false low diversity)."""
    from rsample.producer.report.stats import RunNumbers, add_pair

    prompt = [{"role": "user", "content": "capital of France?"}]
    row = {"prompt_id": "p", "messages": prompt,
           "chosen": prompt + [{"role": "assistant", "content": "<think>\nhmm</think>\n\nParis"}],
           "rejected": prompt + [{"role": "assistant", "content": "<think>\nhmm</think>\n\nLyon"}],
           "chosen_score": {"rm": 1.0}, "rejected_score": {"rm": 0.0}, "reference_completion": "Paris",
           "reference_completion_score": {"rm": 1.0}, "num_candidates": 3, "num_unique": 2,
           "chosen_finish_reason": "stop", "rejected_finish_reason": "stop"}
    numbers = RunNumbers(reasoning_end="</think>")
    add_pair(numbers, row)
    assert numbers.unique_per_prompt == Counter({2: 1})


def test_a_coordinator_stopped_while_redis_is_away_still_exits(redis_server, tmp_path):
    """Ctrl-C / SIGTERM while Redis is away (the coordinator waits through outages with its patient client): publishing
    its last numbers waited for Redis forever, where the lock's release is bounded on purpose."""
    from rsample.producer.driver.coordinator import Coordinator
    from rsample.producer.registration import register_run
    from rsample.workers.common.config import DataSelection, ModelSettings, RunConfig, SamplingConfig
    from rsample.workers.runtime.connection import connect

    client = connect(redis_server.url)  # patient, as the coordinator's (`rsample run` / `rsample coordinate`)
    dataset = write_jsonl(tmp_path / "chat.jsonl", CHAT_ROWS)
    config = RunConfig(run_id="", data=DataSelection(str(dataset)), policy="p", reward_models=("len",),
                       sampling=SamplingConfig(n=2), models=ModelSettings(generation_backend="echo", reward_backend="length"))
    config, _ = register_run(client, config)
    coordinator = Coordinator(client, config, tmp_path / "pairs.jsonl")

    class Stopped(KeyboardInterrupt):
        pass

    def stop() -> None:
        redis_server.stop()  # Redis goes away; then the user presses Ctrl-C
        raise Stopped

    outcome = []

    def run() -> None:
        try:
            coordinator.run(check=stop)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout=30)  # the last numbers and the lock's release are bounded by LOCK_RELEASE_SECONDS each
    try:
        assert not thread.is_alive(), "coordinator.run() still blocked 30 s after it was stopped (Redis away)"
        assert isinstance(outcome[0], Stopped)
    finally:
        redis_server.start()  # lets the stuck thread finish


def test_a_coordinator_that_lost_its_lock_does_not_overwrite_the_new_owners_numbers(redis_client, tmp_path):
    """A coordinator stopped because another took the run over must not publish its numbers over the new owner's, which
    `rsample status` would show until the new owner's next commit."""
    from rsample.producer.driver.coordinator import Coordinator
    from rsample.producer.registration import register_run
    from rsample.workers.common.config import DataSelection, ModelSettings, RunConfig
    from rsample.workers.common.errors import RsampleError
    from rsample.workers.runtime.keys import RunKeys

    dataset = write_jsonl(tmp_path / "chat.jsonl", CHAT_ROWS)
    config = RunConfig(run_id="", data=DataSelection(str(dataset)), policy="p", reward_models=("r",),
                       models=ModelSettings(generation_backend="echo", reward_backend="length"))
    config, _ = register_run(redis_client, config)
    keys = RunKeys(config.run_id)
    coordinator = Coordinator(redis_client, config, tmp_path / "pairs.jsonl")
    redis_client.set(keys.coordinator_lock, "elsewhere:1:intruder")  # another coordinator took over...
    theirs = json.dumps({"pair": 7})
    redis_client.hset(keys.stats, mapping={"outcomes": theirs})  # ...and published its numbers
    with pytest.raises(RsampleError, match="took over"):
        coordinator.run()
    assert redis_client.hget(keys.stats, "outcomes").decode() == theirs


def test_a_finished_run_written_again_without_its_scores_file_keeps_its_reports_figures(tmp_path):
    """The same command without --scores-out (a finished run aggregated again) rewrote the report without the numbers
    and figures the scores give, and left the earlier report's truncation figure beside it."""
    from conftest import rsample, write_jsonl

    dataset = write_jsonl(tmp_path / "d.jsonl", [{"prompt": f"question {i} in words"} for i in range(6)])
    command = ["run", "--dataset", str(dataset), "--policy", "p", "--reward-model", "r", "--backend", "echo", "--reward-backend", "length",
               "--n", "3", "--no-progress", "--out", str(tmp_path / "o" / "pairs.jsonl")]
    rsample(*command, "--scores-out", str(tmp_path / "o" / "scores.jsonl"))
    report = tmp_path / "o" / "pairs.report"
    first = (report / "report.md").read_text()
    figures = sorted(path.name for path in report.glob("*.png"))
    assert "truncation.png" in figures
    rsample(*command)
    assert (report / "report.md").read_text() == first and sorted(path.name for path in report.glob("*.png")) == figures
    (tmp_path / "o" / "scores.jsonl").unlink()  # gone: a report of the pairs alone, and no figure of the scores left behind
    rsample(*command, check=False)
    left = sorted(path.name for path in report.glob("*.png"))
    assert "truncation.png" not in left and all(f"![{name[:-4]}]({name})" in (report / "report.md").read_text() for name in left)
