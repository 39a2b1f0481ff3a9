"""Progress that moves inside a job: tokens counted as they are generated, published while the job runs, handed
over atomically to the final counters, and shown as bars, status lines and a time left."""

import json
import time

import pytest
from conftest import rsample, write_jsonl
from faults import start, wait_for

from rsample.workers.backends.tiny_models import build_policy
from rsample.workers.backends.transformers_generation import TransformersGenerator
from rsample.workers.common.config import SamplingConfig
from rsample.workers.runtime.keys import RunKeys
from rsample.workers.runtime.live_progress import LiveReporter, read_progress
from rsample.workers.runtime.progress import StageBars, TokenRate


def test_the_transformers_backend_counts_every_token_as_it_is_generated(tmp_path):
    generator = TransformersGenerator(str(build_policy(tmp_path / "policy", eos_logit=3.0)), "float32")
    calls = []
    prompts = [[{"role": "user", "content": f"write about the river number {i}"}] for i in range(3)]
    results = generator.generate(prompts, SamplingConfig(n=4, temperature=1.0, max_new_tokens=40), seed=3,
                                 progress=lambda share, tokens: calls.append((share, tokens)))
    lengths = [c.num_tokens for r in results for c in r.completions]
    assert min(lengths) < 40 <= max(lengths)  # some stopped early, some ran to the limit: both counted right
    assert len(calls) >= 10  # it moved during the call, not once at the end
    assert calls[-1][1] == sum(lengths)  # the EOS token counts, as in num_tokens; padding after it does not
    assert all(a <= b for a, b in zip(calls, calls[1:])) and 0 < calls[-1][0] <= 1


def test_a_running_job_shows_its_progress_and_hands_it_over_to_the_counters(redis_server, redis_client, tmp_path):
    policy = build_policy(tmp_path / "policy", max_position_embeddings=1024, hidden_size=512, layers=8, eos_logit=None)  # seconds a job
    from rsample.workers.backends.tiny_models import build_reward_model

    reward = build_reward_model(tmp_path / "reward")
    rows = [{"prompt": f"write a long story about the city number {i}"} for i in range(6)]
    dataset = write_jsonl(tmp_path / "rows.jsonl", rows)
    url = redis_server.url
    run_id = rsample("enqueue", "--redis-url", url, "--dataset", str(dataset), "--policy", str(policy), "--reward-model", str(reward),
                     "--n", "4", "--temperature", "1.0", "--max-new-tokens", "300", "--batch-size", "6").stdout.strip()
    log = tmp_path / "processes.log"
    processes = [start("worker", "both", "--redis-url", url, log=log),
                 start("aggregate", "--redis-url", url, "--run", run_id, "--out", str(tmp_path / "pairs.jsonl"), "--no-progress", log=log)]
    try:
        seen = []

        def moving_inside_the_job():
            assert processes[1].poll() is None, log.read_text()[-3000:]
            stats, live = read_progress(redis_client, run_id)
            if stats.get("rows_generated") == 0 and live.jobs:
                seen.append(live)
            return len({round(s.rows, 3) for s in seen}) >= 2  # it moved at least once more while the job ran

        wait_for(moving_inside_the_job, 240, "progress moving inside the one generation job", interval=0.2)
        # the job's last step reports all its rows until the job hands them to the counters: a slow step is polled there
        assert all(0 < s.rows <= len(rows) and s.tokens > 0 for s in seen)
        assert processes[1].wait(timeout=300) == 0, log.read_text()[-3000:]
        stats, live = read_progress(redis_client, run_id)
        assert live.jobs == 0 and redis_client.hlen(RunKeys(run_id).live) == 0  # handed over: nothing counted twice
        tokens = int(stats.get("tokens_generated"))
        assert stats.get("rows_generated") == len(rows) and max(s.tokens for s in seen) <= tokens <= len(rows) * 4 * 300
    finally:
        for process in processes:
            process.kill()
            process.wait()
    [status] = json.loads(rsample("status", "--redis-url", url, "--run", run_id, "--json").stdout)
    assert status["tokens"] == tokens and status["generating"] == 0 and status["eta_seconds"] is None
    # the coordinator sampled the counters as it went, and the run's time is the time it took, not the time since
    assert redis_client.llen(RunKeys(run_id).pace) >= 1 and status["recent"] is None
    [later] = json.loads(rsample("status", "--redis-url", url, "--run", run_id, "--json").stdout)
    assert later["seconds"] == status["seconds"] > 0


def test_entries_of_dead_workers_are_ignored_and_removed(redis_client):
    keys = RunKeys("r1")
    redis_client.hset(keys.stats, mapping={"rows_total": 10, "tokens_generated": 5})
    LiveReporter(redis_client, "r1", "b1", "generate", rows=4)(0.5, 100)
    old = {"stage": "generate", "rows": 4, "share": 0.9, "tokens": 999, "at": time.time() - 3600}
    redis_client.hset(keys.live, "b0", json.dumps(old))
    stats, live = read_progress(redis_client, "r1")
    assert (live.rows, live.tokens, live.jobs) == (2.0, 100, 1) and stats.get("tokens_generated") == 5
    assert redis_client.hkeys(keys.live) == [b"b1"]


def test_the_generation_bar_says_it_waits_for_a_model_to_load(redis_client):
    redis_client.hset(RunKeys("r3").stats, mapping={"rows_total": 16})
    bars = StageBars(redis_client, "r3")
    bars.update()
    assert "waiting for a generation worker to load its model" in str(bars.bars[0])
    bars.close()
    # rows the coordinator settles itself (a bad row, a duplicate) hid the wait: "0 tokens, 0 tokens/s" for minutes
    redis_client.hset(RunKeys("r4").stats, mapping={"rows_total": 16, "rows_generated": 3, "rows_scored": 3, "rows_written": 3})
    bars = StageBars(redis_client, "r4")
    bars.update()
    assert bars.bars[0].n == 3 and "waiting for a generation worker to load its model" in str(bars.bars[0])
    bars.close()
    redis_client.hset(RunKeys("r5").stats, mapping={"rows_total": 2, "rows_generated": 2, "rows_scored": 2, "rows_written": 2})
    bars = StageBars(redis_client, "r5")  # every row settled so: nothing waits
    bars.update()
    assert "waiting" not in str(bars.bars[0]) and "0 tokens" in str(bars.bars[0])
    bars.close()


def test_the_generation_bar_moves_with_running_jobs(redis_client):
    keys = RunKeys("r2")
    redis_client.hset(keys.stats, mapping={"rows_total": 16, "rows_generated": 4, "tokens_generated": 1000})
    LiveReporter(redis_client, "r2", "b1", "generate", rows=8)(0.25, 300)
    bars = StageBars(redis_client, "r2")  # shown (a disabled tqdm counts nothing); pytest captures it
    bars.update()
    generated, scored, _ = bars.bars
    assert generated.n == pytest.approx(6.0) and generated.total == 16 and scored.n == 0
    assert "1,300 tokens" in str(generated)
    bars.close()


def test_token_rate_follows_the_recent_pace():
    rate = TokenRate(window=10)
    assert rate.add(0, now=0.0) is None
    assert rate.add(100, now=1.0) == pytest.approx(100)
    for second in range(2, 30):
        rate.add(100 + (second - 1) * 10, now=float(second))  # the pace drops to 10 tokens/s
    assert rate.add(100 + 29 * 10, now=30.0) == pytest.approx(10, rel=0.01)


def test_a_complete_run_shows_no_work_in_flight_whatever_redis_went_through(redis_client):
    """After Redis lost state and the coordinator fed again, returns can outnumber handed-out prompts, and a killed
    job's last live report lingers until it goes stale: neither is work still in flight."""
    import json
    import time

    from rsample.workers.common.config import DataSelection, RunConfig
    from rsample.workers.runtime.keys import RunKeys
    from rsample.workers.runtime.run_state import save_run
    from rsample.workers.runtime.status import run_status

    save_run(redis_client, RunConfig(run_id="done", data=DataSelection("d"), policy="p", reward_models=("r",), created_at=1.0))
    keys = RunKeys("done")
    redis_client.hset(keys.stats, mapping={"rows_total": 8, "rows_written": 8, "feed_done": 1, "prompts_enqueued": 8,
                                           "prompts_returned": 12, "tokens_generated": 100})
    redis_client.hset(keys.live, "r0", json.dumps({"stage": "generate", "rows": 4, "share": 0.5, "tokens": 40, "at": time.time()}))
    status = run_status(redis_client, "done")
    assert status.complete and (status.in_flight, status.generating, status.tokens) == (0, 0.0, 100)


def test_a_resumes_bars_show_the_rows_found_written_but_time_only_this_sessions_work(redis_client):
    """A resume that found 900 of 1,000 rows written: shown at once, and its feeder's pass over them counted as
    generated, but tqdm's rate and time left are those of the rows done since (10 in about a second here)."""
    keys = RunKeys("r4")
    redis_client.hset(keys.stats, mapping={"rows_total": 1000, "rows_written": 900, "rows_restored": 900})
    bars = StageBars(redis_client, "r4")
    for bar in bars.bars:
        bar.mininterval = 0  # every update counts for the rate
    bars.update()
    redis_client.hset(keys.stats, mapping={"rows_generated": 900, "rows_scored": 900, "rows_replayed": 900})
    bars.update()  # the feeder passed them again
    time.sleep(1.0)
    redis_client.hincrby(keys.stats, "rows_generated", 10)
    redis_client.hincrby(keys.stats, "rows_scored", 10)
    redis_client.hincrby(keys.stats, "rows_written", 10)
    bars.update()
    for bar in bars.bars:
        assert bar.n == 910
        rate = bar.format_dict["rate"] or (bar.n - bar.initial) / bar.format_dict["elapsed"]
        assert 5 < rate < 20, (bar.desc, rate)  # not 900 rows in a second
    bars.close()
    hidden = StageBars(redis_client, "r4", disable=True)  # --no-progress
    hidden.update()
    hidden.close()


def test_bars_going_to_a_file_are_drawn_once_a_minute(redis_client, capsys):
    """Drawn every second into a Slurm job's log, a day's run left 33 MB of bars; the counts still follow every look."""
    from rsample.workers.runtime.progress import FILE_REDRAW_SECONDS

    keys = RunKeys("r5")
    redis_client.hset(keys.stats, mapping={"rows_total": 100, "rows_generated": 0})
    bars = StageBars(redis_client, "r5")  # pytest's capture: no terminal
    assert bars.redraw_every == FILE_REDRAW_SECONDS
    capsys.readouterr()
    for generated in range(1, 11):
        redis_client.hset(keys.stats, "rows_generated", generated)
        bars.update()
    drawn = capsys.readouterr().err
    assert bars.bars[0].n == 10 and drawn.count("generated:") == 1  # the first look's, then none within the minute
    bars.close()


def test_a_finished_runs_line_still_says_what_asks_for_a_look():
    """`rsample status` gives a finished run one line; rows whose work failed and results set aside still show there."""
    from rsample.workers.runtime.status import RunStatus

    finished = RunStatus(run_id="done", policy="org/policy", rows=1000, generated=1000, scored=1000, written=1000, in_flight=0,
                         complete=True, seconds=3600, completions=16000, outcomes={"pair": 400, "skipped": 600},
                         skip_reasons={"generation failed: out of memory": 597, "empty content": 3}, queues=[], unprocessable=3)
    assert finished.finished_line() == (
        "run done (complete), policy org/policy, took 1 h 00 min: 1000 rows, 400 pairs; 597 skipped because their work failed "
        "(resume with --retry-failed); 3 unprocessable results set aside")
