"""`--retry-failed`: a resumed run produces again the rows skipped because their work failed, and only those, without
writing any row twice; with the run's Redis gone (the embedded one) and with the run still in a shared Redis,
finished, its feed cursor past those rows."""

import json
import re

import pytest
from conftest import read_jsonl, rsample, write_jsonl

REWARDS = '''
import os


def flaky_length(conversations, rows):
    """The answer's length; fails on the prompt about the flaky server while the marker file exists."""
    if os.path.exists(os.environ["FLAKY_MARKER"]) and any("flaky" in c[0]["content"] for c in conversations):
        raise RuntimeError("reward server unreachable")
    return [float(len(c[-1]["content"])) for c in conversations]
'''
ROWS = [{"prompt": "name a river"}, {"prompt": "ask the flaky server"}, {"prompt": "   "}, {"prompt": "name a mountain"},
        {"prompt": "name a lake"}, {"prompt": "ask the flaky server"}]
FLAKY_REASON = "reward model 0 (fn:flaky_rewards:flaky_length) failed: RuntimeError: reward server unreachable"
EMPTY_REASON = "empty content"


@pytest.fixture
def flaky(tmp_path, monkeypatch):
    folder = tmp_path / "user_code"
    folder.mkdir()
    (folder / "flaky_rewards.py").write_text(REWARDS)
    monkeypatch.setenv("PYTHONPATH", str(folder))
    marker = tmp_path / "server-down"
    marker.touch()
    monkeypatch.setenv("FLAKY_MARKER", str(marker))
    return marker


def final_outcomes(out):
    """Each row's outcome as the outcomes file records it, read line by line: a retry line opens its rows again."""
    final = {}
    for line in read_jsonl(out.with_name(f"{out.stem}.outcomes.jsonl"))[1:]:
        for row in line.get("rsample_retry", ()):
            del final[row]
        if "row_index" in line:
            assert line["row_index"] not in final, f"row {line['row_index']} settled twice"
            final[line["row_index"]] = (line["outcome"], line.get("reason"))
    return final


@pytest.mark.parametrize("shared_redis", [False, True], ids=["embedded-redis", "shared-redis"])
def test_a_resume_with_retry_failed_produces_the_failed_rows_and_nothing_twice(flaky, tmp_path, request, shared_redis):
    dataset = write_jsonl(tmp_path / "rows.jsonl", ROWS)
    out, scores = tmp_path / "pairs.jsonl", tmp_path / "scores.jsonl"
    url = ["--redis-url", request.getfixturevalue("redis_server").url] if shared_redis else []
    command = ["run", "--dataset", str(dataset), "--policy", "echo", "--backend", "echo", "--n", "3",
               "--reward-model", "fn:flaky_rewards:flaky_length", "--out", str(out), "--scores-out", str(scores), "--no-progress", *url]

    first = rsample(*command)
    assert re.search(rf"\n +{re.escape(FLAKY_REASON)}: 1\n", first.stdout), first.stdout
    assert final_outcomes(out)[1] == ("skipped", FLAKY_REASON)
    assert "(1 of them because their work failed: once its cause is fixed, resume with --retry-failed)" in first.stdout
    run_id = first.stdout.split()[1].rstrip(":")
    if shared_redis:
        assert ("(1 skipped because their work failed: once its cause is fixed, resume with --retry-failed)"
                in rsample("status", *url, "--run", run_id).stdout)
    flaky.unlink()  # the server is back

    again = rsample(*command)  # a plain resume keeps the skip: it is the run's recorded outcome
    assert re.search(rf"\n +{re.escape(FLAKY_REASON)}: 1\n", again.stdout), again.stdout
    assert len(read_jsonl(out)) == 3

    retried = rsample(*command, "--retry-failed")
    assert f"retrying 1 rows skipped because their work failed ({FLAKY_REASON}: 1)" in retried.stderr
    assert FLAKY_REASON not in retried.stdout and "--retry-failed" not in retried.stdout and re.search(rf"skipped +1\n +{EMPTY_REASON}: 1\n", retried.stdout), retried.stdout
    assert final_outcomes(out) == {0: ("pair", None), 1: ("pair", None), 2: ("skipped", EMPTY_REASON), 3: ("pair", None),
                                   4: ("pair", None), 5: ("duplicate", "same prompt as row 1")}
    pairs = read_jsonl(out)
    assert sorted(p["messages"][-1]["content"] for p in pairs) == sorted(r["prompt"] for r in ROWS[:2] + ROWS[3:5])
    flaky_pair = next(p for p in pairs if p["messages"][-1]["content"] == "ask the flaky server")
    # echo's candidates are the prompt plus 1, 2, 3 marks; the length reward prefers the longest, rejects the shortest
    assert (flaky_pair["chosen"][-1]["content"], flaky_pair["rejected"][-1]["content"]) == ("ask the flaky server ###", "ask the flaky server #")
    score_rows = read_jsonl(scores)
    assert len(score_rows) == 4 * 3 and len({(r["prompt_id"], r["completion_index"]) for r in score_rows}) == 4 * 3

    nothing_left = rsample(*command, "--retry-failed")  # nothing failed any more: a plain resume
    assert "retrying" not in nothing_left.stderr and len(read_jsonl(out)) == 4
    if shared_redis:
        status = json.loads(rsample("status", *url, "--run", run_id, "--json").stdout)[0]
        assert status["complete"] and status["rows"] == len(ROWS)
        assert status["generated"] == status["scored"] == status["written"] == len(ROWS)
        assert status["skip_reasons"] == {EMPTY_REASON: 1}
        assert status["report"]["pairs"] == 4  # the whole run's, though this last coordinator wrote none
        assert "--retry-failed" not in rsample("status", *url, "--run", run_id).stdout


def test_a_run_written_again_to_another_output_is_fed_again_at_once(redis_server, tmp_path):
    """The run is finished in its Redis (feed cursor at the end), and a new output holds none of its rows: they are fed
    again from the first row, a window at a time, instead of after the wait for lost work (two heartbeat TTLs)."""
    dataset = write_jsonl(tmp_path / "rows.jsonl", [{"prompt": f"name river number {i}"} for i in range(40)])
    command = ["run", "--redis-url", redis_server.url, "--dataset", str(dataset), "--policy", "echo", "--backend", "echo",
               "--n", "3", "--reward-model", "r", "--reward-backend", "length", "--batch-size", "4", "--max-in-flight", "8",
               "--heartbeat-ttl", "600", "--no-progress"]
    first = tmp_path / "first" / "pairs.jsonl"
    rsample(*command, "--out", str(first))
    second = tmp_path / "second" / "pairs.jsonl"
    result = rsample(*command, "--out", str(second), timeout=120)
    assert "40 rows this Redis fed are not in" in result.stderr, result.stderr
    assert sorted(p["prompt_id"] for p in read_jsonl(second)) == sorted(p["prompt_id"] for p in read_jsonl(first))
    assert len(read_jsonl(second)) == 40


def test_a_failure_left_in_the_stream_by_a_dead_coordinator_does_not_settle_the_retried_row(redis_client, tmp_path):
    """The coordinator commits a failure, then dies before deleting its message from the stream. A coordinator with
    --retry-failed reads that message first and then opens the row: it must not settle the row as failed again."""
    from rsample.producer.driver.coordinator import Coordinator
    from rsample.producer.registration import register_run
    from rsample.workers.common.config import DataSelection, ModelSettings, RunConfig
    from rsample.workers.common.messages import SKIPPED, Outcome
    from rsample.workers.runtime.keys import RunKeys
    from rsample.workers.runtime.queues import make_queue

    dataset = write_jsonl(tmp_path / "rows.jsonl", ROWS[:2])
    config = RunConfig(run_id="", data=DataSelection(str(dataset)), policy="p", reward_models=("r",),
                       models=ModelSettings(generation_backend="echo", reward_backend="length"))
    config, _ = register_run(redis_client, config)
    keys, out = RunKeys(config.run_id), tmp_path / "pairs.jsonl"
    first = Coordinator(redis_client, config, out)
    first.feeder.top_up()
    [job] = make_queue(redis_client, keys.generate_queue).jobs
    prompts = [[p["row_index"], p["prompt_id"]] for p in job.args[2]]
    reason = "generation failed: RuntimeError: CUDA out of memory"
    redis_client.xadd(keys.ready, {"batch_id": job.args[1], "failed": reason, "prompts": json.dumps(prompts)})
    first.ledger.commit([Outcome(row, pid, SKIPPED, reason) for row, pid in prompts], [], [])  # ...and it died here
    first.close()
    make_queue(redis_client, keys.generate_queue).empty()

    second = Coordinator(redis_client, config, out, retry_failed=True)
    try:
        assert redis_client.xlen(keys.ready) == 0 and second.ledger.rows == set()
        second.feeder.top_up()
        second.collector.step(block_ms=None)
        assert second.ledger.rows == set()  # still open: its new job is queued
        assert {p["row_index"] for job in make_queue(redis_client, keys.generate_queue).jobs for p in job.args[2]} == {0, 1}
    finally:
        second.close()


def test_a_rewind_leaves_alone_rows_whose_jobs_are_queued_when_the_counters_overcount_returns(redis_client, tmp_path):
    """A Redis fed again may count a batch's return twice, so that the counters say nothing is in flight while its
    jobs still wait in the queue. A coordinator writing to another --out must not feed those rows a second time."""
    from rsample.producer.driver.coordinator import Coordinator
    from rsample.producer.registration import register_run
    from rsample.workers.common.config import DataSelection, JobSettings, ModelSettings, RunConfig
    from rsample.workers.runtime.keys import RunKeys
    from rsample.workers.runtime.queues import make_queue

    dataset = write_jsonl(tmp_path / "rows.jsonl", [{"prompt": f"name river number {i}"} for i in range(8)])
    config = RunConfig(run_id="", data=DataSelection(str(dataset)), policy="p", reward_models=("r",), prompts_per_job=2,
                       jobs=JobSettings(max_in_flight=4), models=ModelSettings(generation_backend="echo", reward_backend="length"))
    config, _ = register_run(redis_client, config)
    keys = RunKeys(config.run_id)
    first = Coordinator(redis_client, config, tmp_path / "a" / "pairs.jsonl")
    first.feeder.top_up()
    first.close()
    enqueued = int(redis_client.hget(keys.stats, "prompts_enqueued"))
    assert enqueued == 4
    redis_client.hset(keys.stats, "prompts_returned", enqueued)  # overcounted: the two jobs are still queued

    second = Coordinator(redis_client, config, tmp_path / "b" / "pairs.jsonl")
    try:
        assert redis_client.hget(keys.stats, "feed_pass") is None  # no rewind
        second.feeder.top_up()
        rows = [p["row_index"] for job in make_queue(redis_client, keys.generate_queue).jobs for p in job.args[2]]
        assert sorted(rows) == list(range(8)), rows  # rows 0-3 once, in their first jobs; 4-7 fed after them

        make_queue(redis_client, keys.generate_queue).empty()  # the jobs are gone without a result, the counters still say none in flight
        redis_client.hset(keys.stats, "prompts_returned", redis_client.hget(keys.stats, "prompts_enqueued"))
        second.recover_lost_work()  # the pipeline is idle: the rows the new output lacks are fed again from the first, through the window
        assert redis_client.hget(keys.stats, "feed_pass") == b"1"
        second.feeder.top_up()
        again = [p["row_index"] for job in make_queue(redis_client, keys.generate_queue).jobs for p in job.args[2]]
        assert again == [0, 1, 2, 3], again  # a window of 4, not the 8 rows at once
    finally:
        second.close()


def test_skip_reasons_that_differ_on_every_row_are_shown_and_published_a_few_with_every_failure_counted(redis_client, tmp_path, caplog):
    """A reward function's error text may name each row's prompt: one reason per row. Published whole after every
    commit (2 MB at 19,000 reasons, a third more coordinator CPU) and printed whole by `rsample status`, the summary
    and the report (19,000 lines), they buried the rest. The commonest are shown; every failed row still counts."""
    from rsample.producer.driver.coordinator import Coordinator
    from rsample.producer.registration import register_run
    from rsample.workers.common.config import DataSelection, ModelSettings, RunConfig
    from rsample.workers.common.messages import REASONS_SHOWN, SKIPPED, Outcome
    from rsample.workers.runtime.status import run_status

    rows = 600
    dataset = write_jsonl(tmp_path / "rows.jsonl", [{"prompt": f"question {i}"} for i in range(rows)])
    config = RunConfig(run_id="", data=DataSelection(str(dataset)), policy="p", reward_models=("r",),
                       models=ModelSettings(generation_backend="echo", reward_backend="length"))
    config, _ = register_run(redis_client, config)
    coordinator = Coordinator(redis_client, config, tmp_path / "pairs.jsonl")
    try:
        unique = [Outcome(i, f"p{i}", SKIPPED, f"reward model 0 (fn:m:f) failed: ValueError: no answer in reply to 'question {i}'")
                  for i in range(500)]
        common = [Outcome(i, f"p{i}", SKIPPED, "empty content") for i in range(500, 560)]
        for start in range(0, 500, 50):
            coordinator.ledger.commit(unique[start:start + 50], [], [])
            coordinator.collector.skips.say(unique[start:start + 50])
        coordinator.ledger.commit(common, [], [])
        coordinator._publish_outcomes()
        published = redis_client.hget(coordinator.keys.stats, "skip_reasons")
        status = run_status(redis_client, config.run_id)
        summary = coordinator.summary().lines()
    finally:
        coordinator.close()
    assert len(summary) < 40 and "  (500 of them because their work failed: once its cause is fixed, resume with --retry-failed)" in summary
    assert len(json.loads(published)) == REASONS_SHOWN + 1 and len(published) < 4096
    lines = status.lines()
    shown = [line for line in lines if line.startswith("  skipped, ")]
    assert shown[0] == "  skipped, empty content: 60" and len(shown) == REASONS_SHOWN + 1
    assert shown[-1] == f"  skipped, {500 - (REASONS_SHOWN - 1)} other reasons (each row's is in the outcomes file): {500 - (REASONS_SHOWN - 1)}"
    assert "  (500 skipped because their work failed: once its cause is fixed, resume with --retry-failed)" in lines
    logged = [record.getMessage() for record in caplog.records if record.getMessage().startswith("skipping row")]
    assert len(logged) == 2 * REASONS_SHOWN
    assert "more skip reasons are counted, not logged (40 logged): every row's reason is in the outcomes file" in caplog.text


def test_status_counts_failed_rows_from_the_reasons_when_an_older_coordinator_published_them_all(redis_client, tmp_path):
    """A newer coordinator published skipped_failed=1; an older one resumed with --retry-failed and published its
    reasons (all of them, none failed) but never that count: status went on asking for --retry-failed."""
    from rsample.producer.registration import register_run
    from rsample.workers.common.config import DataSelection, ModelSettings, RunConfig
    from rsample.workers.runtime.keys import RunKeys
    from rsample.workers.runtime.status import run_status

    dataset = write_jsonl(tmp_path / "rows.jsonl", [{"prompt": "q"}])
    config = RunConfig(run_id="", data=DataSelection(str(dataset)), policy="p", reward_models=("r",),
                       models=ModelSettings(generation_backend="echo", reward_backend="length"))
    config, _ = register_run(redis_client, config)
    stats = RunKeys(config.run_id).stats
    redis_client.hset(stats, mapping={"outcomes": json.dumps({"skipped": 1}), "skip_reasons": json.dumps({"reward model 0 (r) failed: boom": 1}),
                                      "skipped_failed": 1})
    redis_client.hset(stats, mapping={"outcomes": json.dumps({"pair": 1}), "skip_reasons": json.dumps({})})  # the older one's
    status = run_status(redis_client, config.run_id)
    assert status.failed == 0 and not any("--retry-failed" in line for line in status.lines())


def test_a_content_rejection_is_no_failure_whatever_its_text_and_a_named_failure_is_one():
    """The reward's name in parentheses let the failure pattern run over a rejection's own text up to a "failed: "."""
    from rsample.workers.common.messages import is_failure_reason, reward_label

    rejection = (reward_label(0, "judge:Qwen/Qwen3-8B") + " chat template rejected the conversation: the tool call (get_weather) "
                 "failed: roles must alternate")
    assert not is_failure_reason(rejection)
    for name in (None, "fn:my.mod:score", "/models/rm (v2)"):
        assert is_failure_reason(f"{reward_label(1, name)} failed: RuntimeError: x")
        assert is_failure_reason(f"scoring with {reward_label(1, name)} failed: JobTimeoutException: x")


def test_the_dataset_card_carries_the_commonest_skip_reasons_only():
    """20,000 reasons made one 1.3 MB cell of the card's summary table."""
    from collections import Counter

    from rsample.producer.driver.hub import card_figures
    from rsample.producer.driver.summary import summarize

    reasons = Counter({f"reward model 0 (fn:m:f) failed: ValueError: bad row {i}": 1 for i in range(20_000)})
    figures = card_figures(summarize(Counter({"skipped": 20_000, "pair": 5}), reasons, 10, 10, 1.0))
    assert len(figures["skipped"]) == 21 and sum(figures["skipped"].values()) == 20_000
