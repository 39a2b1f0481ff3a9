"""Fault injection on the real pipeline: workers, the coordinator and Redis killed or restarted mid-run.

Every test ends with the exactly-once check over the whole dataset: each row has one outcome, each
pair and score row is written once.
"""

import time
from pathlib import Path

import pytest
import redis
from conftest import rsample, write_jsonl
from faults import assert_exactly_once, kill, kill_mid_job, outcome_rows, processes_mentioning, prompts_that_got_candidates, start, wait_for

from rsample.workers.runtime.embedded_redis import EmbeddedRedis
from rsample.workers.runtime.keys import RunKeys
from rsample.workers.runtime.queues import make_queue, worker_processes

GOOD = [{"prompt": f"write a story about the {w} river number {i}"} for i, w in enumerate("city music science poem code test".split() * 3)]
BAD = [
    "{not json",
    {"prompt": ""},
    {"messages": [{"role": "user", "content": "first"}, {"role": "user", "content": "second"}]},  # the policy template refuses it
    {"prompt": "river city " * 150},  # longer than the policy context
    GOOD[0],  # a duplicate
]
ROWS = GOOD[:9] + BAD + GOOD[9:]


@pytest.fixture(scope="module")
def slow_models(tmp_path_factory):
    """Models big enough that a job lasts a fraction of a second, so that it can be killed mid-flight."""
    from rsample.workers.backends.tiny_models import build_policy, build_reward_model

    root = tmp_path_factory.mktemp("slow-models")
    return {"policy": str(build_policy(root / "policy", hidden_size=512, layers=6)),
            "reward": str(build_reward_model(root / "reward", hidden_size=512, layers=6))}


@pytest.fixture(scope="module")
def long_job_models(slow_models, tmp_path_factory):
    """The slow models with a policy that never ends a completion early and has room for long ones: a job of
    several seconds, whatever the sampled EOS would have done."""
    from rsample.workers.backends.tiny_models import build_policy

    root = tmp_path_factory.mktemp("long-job-models")
    policy = build_policy(root / "policy", hidden_size=512, layers=6, max_position_embeddings=1024, eos_logit=None)
    return {**slow_models, "policy": str(policy)}


@pytest.fixture
def dataset(tmp_path):
    return write_jsonl(tmp_path / "rows.jsonl", ROWS)


def settings(dataset, models, *extra):
    return ["--dataset", str(dataset), "--policy", models["policy"], "--reward-model", models["reward"], "--n", "3",
            "--temperature", "1.0", "--max-new-tokens", "48", "--batch-size", "2", "--reward-batch-size", "1",
            "--heartbeat-ttl", "3", "--max-in-flight", "6", *extra]


def check_counts(counts):
    assert prompts_that_got_candidates(counts) == len(GOOD)
    assert counts["duplicate"] == 1
    assert counts["skipped"] == 4  # bad JSON, empty, refused by the template, too long


def test_workers_killed_mid_job_lose_and_duplicate_nothing(redis_server, redis_client, slow_models, dataset, tmp_path):
    url = redis_server.url
    run_id = rsample("enqueue", "--redis-url", url, *settings(dataset, slow_models)).stdout.strip()
    keys = RunKeys(run_id)
    log = tmp_path / "processes.log"
    new_generator = lambda: start("worker", "generate", "--redis-url", url, log=log)  # noqa: E731
    new_scorer = lambda: start("worker", "reward", "--redis-url", url, log=log)  # noqa: E731
    generator, scorer = new_generator(), new_scorer()
    out, scores = tmp_path / "pairs.jsonl", tmp_path / "scores.jsonl"
    coordinator = start("aggregate", "--redis-url", url, "--run", run_id, "--out", str(out), "--scores-out", str(scores), "--no-progress", log=log)
    try:
        killed_generation, generator = kill_mid_job(generator, redis_client, keys.generate_queue, new_generator)
        killed_scoring, scorer = kill_mid_job(scorer, redis_client, keys.score_queue(0), new_scorer)
        assert coordinator.wait(timeout=300) == 0, log.read_text()[-3000:]
    finally:
        for process in (generator, scorer, coordinator):
            process.kill()
    check_counts(assert_exactly_once(out, scores, ROWS))
    status = rsample("status", "--redis-url", url, "--run", run_id, "--json").stdout
    assert '"failed": 0' in status and '"failed": 1' not in status  # both killed jobs were requeued and finished


def test_coordinator_killed_and_restarted(redis_server, slow_models, dataset, tmp_path):
    url = redis_server.url
    run_id = rsample("enqueue", "--redis-url", url, *settings(dataset, slow_models)).stdout.strip()
    log = tmp_path / "processes.log"
    workers = [start("worker", "generate", "--redis-url", url, log=log), start("worker", "reward", "--redis-url", url, log=log)]
    out, scores = tmp_path / "pairs.jsonl", tmp_path / "scores.jsonl"
    aggregate = ["aggregate", "--redis-url", url, "--run", run_id, "--out", str(out), "--scores-out", str(scores), "--no-progress"]
    try:
        first = start(*aggregate, log=log)
        wait_for(lambda: out.with_name("pairs.outcomes.jsonl").exists() and 4 <= len(outcome_rows(out)) < len(ROWS), 180, "some rows written")
        kill(first)
        second = start(*aggregate, log=log)  # takes over the dead coordinator's lock at once
        assert second.wait(timeout=300) == 0, log.read_text()[-3000:]
        assert "taking over run" in log.read_text()
    finally:
        for process in workers:
            process.kill()
    check_counts(assert_exactly_once(out, scores, ROWS))


@pytest.mark.parametrize("appendonly", [True, False], ids=["aof", "no-persistence"])
def test_redis_restarted_mid_run(slow_models, dataset, tmp_path, appendonly):
    server = EmbeddedRedis(data_dir=tmp_path / "redis", appendonly=appendonly).start()
    out, scores, log = tmp_path / "pairs.jsonl", tmp_path / "scores.jsonl", tmp_path / "run.log"
    try:
        run = start("run", "--redis-url", server.url, *settings(dataset, slow_models), "--out", str(out), "--scores-out", str(scores), "--no-progress", log=log)
        wait_for(lambda: out.with_name("pairs.outcomes.jsonl").exists() and 4 <= len(outcome_rows(out)) < len(ROWS), 180, "some rows written")
        server.stop()
        wait_for(lambda: "waiting for Redis" in log.read_text(), 30, "the coordinator to notice", interval=0.2)
        server.start()
        assert run.wait(timeout=300) == 0, log.read_text()[-3000:]
    finally:
        server.close()
    text = log.read_text()
    worker_logs = "".join(p.read_text() for p in (tmp_path / ".rsample-logs").rglob("*.log"))
    assert "waiting for Redis" in worker_logs and "is back" in worker_logs
    assert "Traceback" not in worker_logs + text, (worker_logs + text)[-3000:]  # a job that ran through the loss: one line
    assert ("Redis lost run" in text) is not appendonly  # with AOF nothing is lost; without, the run is re-fed
    check_counts(assert_exactly_once(out, scores, ROWS))


def test_a_killed_run_resumes_and_a_finished_run_does_nothing(slow_models, dataset, tmp_path):
    out, scores, log = tmp_path / "pairs.jsonl", tmp_path / "scores.jsonl", tmp_path / "run.log"
    command = ["run", *settings(dataset, slow_models), "--out", str(out), "--scores-out", str(scores), "--no-progress"]
    first = start(*command, log=log)
    wait_for(lambda: out.with_name("pairs.outcomes.jsonl").exists() and 6 <= len(outcome_rows(out)) < len(ROWS), 180, "some rows written")
    written_before = {o["row_index"] for o in outcome_rows(out)}
    kill(first)
    run_id = next((tmp_path / ".rsample-logs").iterdir()).name  # workers name the run, not the output
    wait_for(lambda: not processes_mentioning(str(out)) and not processes_mentioning(run_id), 30,
             "the killed run's workers and Redis to exit with it", interval=0.2)
    second = rsample(*command)
    assert "resuming run" in second.stderr
    completions = int(second.stdout.split("completions")[1].split()[0])
    prompts_left = len([r for r in range(len(ROWS)) if r not in written_before])
    assert completions <= 3 * prompts_left  # rows already written were not generated again
    check_counts(assert_exactly_once(out, scores, ROWS))
    third = rsample(*command)
    assert "completions          0 in" in third.stdout
    check_counts(assert_exactly_once(out, scores, ROWS))


def test_a_prompt_that_kills_its_worker_ends_alone_in_the_failed_registry(redis_server, redis_client, slow_models, tmp_path):
    """A row that crashes the model process every time: its batch is split, the healthy half is written, the poison
    prompt is skipped with the error after bounded retries, and the run finishes."""
    from faults import job_status, running_entries
    from rq.exceptions import NoSuchJobError
    from rq.serializers import JSONSerializer

    from rsample.producer.prompts import extract_prompt
    from rsample.workers.runtime.safe_job import SafeJob

    poison = {"prompt": "the prompt that crashes the model"}
    rows = GOOD[:5] + [poison] + GOOD[5:8]
    poison_id = extract_prompt(poison, 5).prompt_id
    dataset = write_jsonl(tmp_path / "rows.jsonl", rows)
    url = redis_server.url
    command = settings(dataset, slow_models, "--retries", "1")
    command[command.index("--max-new-tokens") + 1] = "160"  # jobs of about a second: long enough to be caught running
    run_id = rsample("enqueue", "--redis-url", url, *command).stdout.strip()
    queue_name = RunKeys(run_id).generate_queue
    log, out = tmp_path / "processes.log", tmp_path / "pairs.jsonl"
    generator = start("worker", "generate", "--redis-url", url, log=log)
    scorer = start("worker", "reward", "--redis-url", url, log=log)
    coordinator = start("aggregate", "--redis-url", url, "--run", run_id, "--out", str(out), "--no-progress", log=log)
    killed = set()
    try:
        while coordinator.poll() is None:
            for entry in running_entries(redis_client, queue_name):
                job_id = entry.split(":")[0]
                if entry in killed or job_status(redis_client, job_id) != "started":
                    continue
                try:
                    prompts = SafeJob.fetch(job_id, connection=redis_client, serializer=JSONSerializer).args[2]
                except NoSuchJobError:  # finished in the meantime
                    continue
                if poison_id in {p["prompt_id"] for p in prompts}:  # the crash this row causes
                    kill(generator)
                    killed.add(entry)
                    generator = start("worker", "generate", "--redis-url", url, log=log)
            time.sleep(0.01)
        assert coordinator.returncode == 0, log.read_text()[-3000:]
    finally:
        for process in (generator, scorer, coordinator):
            process.kill()
    assert len(killed) == 4  # the batch twice (1 retry), then the half holding the poison prompt twice
    counts = assert_exactly_once(out, None, rows)
    assert prompts_that_got_candidates(counts) == len(rows) - 1
    skipped = [o for o in outcome_rows(out) if o["outcome"] == "skipped"]
    assert [o["row_index"] for o in skipped] == [5]
    assert skipped[0]["reason"].startswith("generation failed: AbandonedJobError")
    failed = make_queue(redis_client, queue_name).failed_job_registry.get_job_ids()
    assert sorted(failed) == sorted([f"{run_id}-generate-r4", f"{run_id}-generate-r4_1"])
    assert '"failed": 2' in rsample("status", "--redis-url", url, "--run", run_id, "--json").stdout


def test_a_worker_waiting_for_a_vanished_redis_still_stops(redis_server, tmp_path):
    """Patient workers wait for Redis forever; a second SIGTERM (a supervisor's or a user's) must still end them."""
    import signal

    dataset = write_jsonl(tmp_path / "rows.jsonl", GOOD[:4])
    url = redis_server.url
    rsample("enqueue", "--redis-url", url, "--dataset", str(dataset), "--policy", "p", "--reward-model", "r",
            "--backend", "echo", "--reward-backend", "length")
    log = tmp_path / "worker.log"
    worker = start("worker", "generate", "--redis-url", url, log=log)
    wait_for(lambda: "serving run" in log.read_text(), 60, "the worker to start", interval=0.1)
    redis_server.stop()
    worker.send_signal(signal.SIGTERM)
    time.sleep(1.5)
    if worker.poll() is None:
        worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=15) is not None


def test_redis_back_from_an_older_snapshot_loses_nothing(slow_models, dataset, tmp_path):
    """Redis restarted from a snapshot taken earlier in the run (a stock Redis with RDB snapshots, or a failover to
    a replica that lagged): jobs and results written since are gone while the counters say they are in flight."""
    import redis as redis_py

    server = EmbeddedRedis(data_dir=tmp_path / "redis").start()
    url = server.url
    log = tmp_path / "processes.log"
    out, scores = tmp_path / "pairs.jsonl", tmp_path / "scores.jsonl"
    try:
        run_id = rsample("enqueue", "--redis-url", url, *settings(dataset, slow_models)).stdout.strip()
        workers = [start("worker", role, "--redis-url", url, log=log) for role in ("generate", "reward")]
        coordinator = start("aggregate", "--redis-url", url, "--run", run_id, "--out", str(out), "--scores-out", str(scores),
                            "--no-progress", log=log)
        wait_for(lambda: out.with_name("pairs.outcomes.jsonl").exists() and len(outcome_rows(out)) >= 4, 180, "some rows written")
        client = redis_py.Redis.from_url(url)
        client.save()  # the snapshot Redis will come back from
        client.close()
        written = len(outcome_rows(out))
        wait_for(lambda: len(outcome_rows(out)) >= written + 4, 180, "more rows written after the snapshot")
        server.stop()  # no save on the way down: the snapshot is older than what the run has done since
        server.start()
        assert coordinator.wait(timeout=300) == 0, log.read_text()[-3000:]
        for worker in workers:
            worker.terminate()
            worker.wait(timeout=30)
    finally:
        server.close()
    check_counts(assert_exactly_once(out, scores, ROWS))


def test_ctrl_c_in_a_terminal_stops_rsample_run_within_seconds_and_the_same_command_resumes(slow_models, dataset, tmp_path):
    """A terminal's Ctrl-C signals its whole foreground process group: `rsample run`, its workers and its embedded
    Redis. The Redis must outlive the coordinator's last writes (it used to die first, and the coordinator then waited
    for it until a second Ctrl-C), the run must say how to go on, and the same command must resume it."""
    import os
    import signal
    import subprocess
    import sys

    from conftest import REPO, _live_descendants
    from faults import STARTED

    out = tmp_path / "pairs.jsonl"
    command = ["run", *settings(dataset, slow_models), "--out", str(out), "--no-progress"]
    log = tmp_path / "run.log"
    with log.open("w") as handle:  # a process group of its own, as a shell gives its foreground job
        run = subprocess.Popen([sys.executable, "-m", "rsample.producer", *command], cwd=REPO, stdout=handle, stderr=subprocess.STDOUT,
                               start_new_session=True)
    STARTED.append(run)
    outcomes = out.with_name("pairs.outcomes.jsonl")
    wait_for(lambda: outcomes.exists() and len(outcomes.read_text().splitlines()) > 1, 240, "a first row written", interval=0.2)
    helpers = _live_descendants(run.pid)
    os.killpg(run.pid, signal.SIGINT)
    assert run.wait(timeout=60) == 130, log.read_text()[-3000:]
    text = log.read_text()
    assert "interrupted: the rows written so far are kept; the same `rsample run` command resumes the run" in text, text[-3000:]
    assert "waiting for Redis" not in text
    wait_for(lambda: not [pid for pid in helpers if Path(f"/proc/{pid}").exists() and _state(pid) != "Z"], 30, "its workers and Redis to exit")
    rsample(*command)
    check_counts(assert_exactly_once(out, None, ROWS))


def test_ctrl_c_does_not_reach_rsample_run_started_in_the_background_by_a_script(slow_models, dataset, tmp_path):
    """A script's `rsample run ... &` runs with SIGINT ignored (POSIX shells do that for background jobs): Ctrl-C at
    the terminal is not for it. Its workers must keep ignoring it too; RQ's handlers took it, the worker stopped, and
    the run ended with an error while its coordinator went on."""
    import os
    import signal
    import subprocess
    import sys

    from conftest import REPO
    from faults import STARTED

    out = tmp_path / "pairs.jsonl"
    command = [sys.executable, "-m", "rsample.producer", "run", *settings(dataset, slow_models), "--out", str(out), "--no-progress"]
    log = tmp_path / "run.log"

    def as_a_background_job():  # what bash does for `cmd &` in a script; in a process group of its own, as the script's
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    with log.open("w") as handle:
        run = subprocess.Popen(command, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True,
                               preexec_fn=as_a_background_job)
    STARTED.append(run)
    outcomes = out.with_name("pairs.outcomes.jsonl")
    wait_for(lambda: outcomes.exists() and len(outcomes.read_text().splitlines()) > 1, 240, "a first row written", interval=0.2)
    os.killpg(run.pid, signal.SIGINT)  # Ctrl-C at the terminal reaches every process of the group
    assert run.wait(timeout=240) == 0, log.read_text()[-3000:]
    check_counts(assert_exactly_once(out, None, ROWS))


def test_a_local_worker_stopped_from_outside_is_said_so_not_quoted(tmp_path):
    """A worker that exits 0 (a Ctrl-C that reached it alone) or is killed ended for a reason its log does not hold."""
    import subprocess
    import sys

    from rsample.producer.driver.local_run import WorkerProcesses
    from rsample.workers.common.errors import RsampleError

    workers = WorkerProcesses("redis://127.0.0.1:1/0", "r1", tmp_path)
    log = tmp_path / "both-0.log"
    log.write_text("INFO reward rounds: 4 rounds of 1.0 jobs\n")
    for code, said in ((0, "stopped (exit code 0: a Ctrl-C or SIGTERM that reached it alone?)"), (-9, "was killed by SIGKILL")):
        process = subprocess.Popen([sys.executable, "-c", f"import os, signal; os.kill(os.getpid(), 9) if {code} else None"])
        process.wait()
        workers.processes = [("both", process, log)]
        with pytest.raises(RsampleError) as error:
            workers.check_alive()
        assert str(error.value) == f"the both worker {said} before the run was done; the same command resumes it (log: {log})"


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "Z"


@pytest.mark.parametrize("stop", ["twice", "once-with-stop-timeout"])
def test_a_worker_stopped_twice_releases_its_job_for_the_next_sweep(redis_server, redis_client, long_job_models, dataset, tmp_path, stop):
    """Ctrl-C in `rsample run` reaches a worker twice (its own SIGINT, then its parent's SIGTERM): it exits at once,
    and the job it leaves is requeued at the coordinator's next sweep, not after the heartbeat TTL (a minute by
    default), during which a re-run would wait and `rsample status` would count a worker that is gone. Docker and
    Kubernetes send one SIGTERM and then SIGKILL, which cost the job a retry: `--stop-timeout` is the second signal."""
    import signal

    from faults import running_entries
    from rq.registry import StartedJobRegistry
    from rq.serializers import JSONSerializer

    from rsample.producer.driver.ledger import Ledger
    from rsample.producer.feeder import Feeder
    from rsample.workers.runtime.run_state import load_run
    from rsample.workers.runtime.safe_job import SafeJob

    url = redis_server.url
    command = settings(dataset, long_job_models, "--heartbeat-ttl", "600")  # a claim that would outlive the test by far
    # Jobs of several seconds: the signals must reach the worker while it holds one (a job that ended between the
    # check below and the signals let the worker stop between jobs, exit 0, and the test flake).
    command[command.index("--max-new-tokens") + 1] = "600"
    run_id = rsample("enqueue", "--redis-url", url, *command).stdout.strip()
    queue_name = RunKeys(run_id).generate_queue
    Feeder(redis_client, load_run(redis_client, run_id), Ledger(tmp_path / "pairs.jsonl", None, run_id)).top_up()  # as aggregate does
    log = tmp_path / "worker.log"
    worker = start("worker", "generate", "--redis-url", url, *(["--stop-timeout", "1"] if stop != "twice" else []), log=log)
    try:
        wait_for(lambda: running_entries(redis_client, queue_name), 120, "a running job", interval=0.05)
        [entry] = running_entries(redis_client, queue_name)
        job = SafeJob.fetch(entry.split(":")[0], connection=redis_client, serializer=JSONSerializer)
        assert job.retries_left == 2
        if stop == "twice":
            worker.send_signal(signal.SIGINT)
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) != 0
    finally:
        worker.kill()
    registry = StartedJobRegistry(queue=make_queue(redis_client, queue_name), job_class=SafeJob)
    assert redis_client.zscore(registry.key, entry) <= time.time()  # released: expired now, not in 600 s
    registry.cleanup()  # the coordinator's sweep
    assert entry.split(":")[0] in make_queue(redis_client, queue_name).job_ids  # back in the queue for another worker
    job.refresh()
    assert job.get_status() == "queued" and job.retries_left == 2  # a stop is not a failure: no retry used
    said = log.read_text()
    assert "stopping once its running jobs are done (a second stop signal stops it now" in said  # the first Ctrl-C is said
    assert "second stop signal, exiting now" in said
    assert worker_processes(make_queue(redis_client, queue_name)) == 0  # no worker left for `rsample status` to count


def test_a_script_that_meets_a_full_redis_is_waited_out_and_applied_once(redis_server, redis_client):
    """Redis 6 (the embedded one) answers a script's write on a full Redis with a plain script error, not OOM: the
    generation hand-off failed, and threw its batch's work away, where the `SET NX` it replaced waited."""
    import threading

    from rsample.workers.runtime.connection import connect
    from rsample.workers.stages.generate import HAND_OFF

    patient = connect(redis_server.url)
    redis_client.config_set("maxmemory-policy", "noeviction")
    redis_client.execute_command("DEBUG", "POPULATE", 3000, "junk", 1000)
    redis_client.config_set("maxmemory", "1mb")
    outcome = {}

    def hand_off():
        try:
            outcome["result"] = patient.register_script(HAND_OFF)(keys=["b", "live", "stats", "ready"],
                                                                  args=["{}", "b1", 2, 6, 60, 0.5, 0, 1])
        except Exception as exc:
            outcome["error"] = f"{type(exc).__name__}: {exc}"

    thread = threading.Thread(target=hand_off, daemon=True)
    thread.start()
    time.sleep(2)
    assert outcome == {} and not redis_client.exists("b")  # waiting, nothing written
    redis_client.config_set("maxmemory", "0")
    thread.join(30)
    assert outcome == {"result": 1}, outcome
    assert redis_client.hgetall("stats") == {b"rows_generated": b"2", b"completions_generated": b"6", b"tokens_generated": b"60",
                                             b"generation_seconds": b"0.5", b"rows_scored": b"0"}
    assert redis_client.xlen("ready") == 1
    with pytest.raises(redis.exceptions.ResponseError, match="WRONGTYPE"):  # any other error of Redis's: at once
        redis_client.set("not-a-hash", "x")
        patient.hincrby("not-a-hash", "field", 1)


def test_a_hand_off_retried_after_a_timeout_knows_its_own_result(redis_client):
    """A hand-off that Redis applied but whose answer a timeout lost (`DEBUG SLEEP`) is retried by the client: the
    second try found the batch written and the worker warned that it was generated twice, which it was not."""
    from rsample.workers.stages.generate import HAND_OFF

    hand_off = redis_client.register_script(HAND_OFF)
    keys = ["b", "live", "stats", "ready"]
    assert hand_off(keys=keys, args=['{"texts": 1}', "b1", 2, 6, 60, 0.5, 0, 1]) == 1
    assert hand_off(keys=keys, args=['{"texts": 1}', "b1", 2, 6, 60, 0.5, 0, 1]) == 4  # its own: counted once
    assert hand_off(keys=keys, args=['{"texts": 2}', "b1", 2, 6, 60, 0.5, 0, 1]) == 0  # another sampling: generated before
    assert redis_client.hget("stats", "rows_generated") == b"2" and redis_client.xlen("ready") == 1
    assert redis_client.get("b") == b'{"texts": 1}'


def test_a_full_redis_is_waited_out_by_workers_and_coordinator_and_said_in_one_line(redis_server, redis_client, dataset, tmp_path):
    """Other tenants filled a shared Redis (maxmemory, noeviction): it refuses writes, and the coordinator and every worker
    died with a traceback (`OutOfMemoryError`). They now wait, say why, and go on once memory is freed; a command that
    does not wait says it in one line."""
    echo = ["--policy", "echo", "--backend", "echo", "--reward-model", "length", "--reward-backend", "length", "--n", "3",
            "--batch-size", "2"]
    run_id = rsample("enqueue", "--redis-url", redis_server.url, "--dataset", str(dataset), *echo).stdout.strip().splitlines()[-1]
    redis_client.config_set("maxmemory-policy", "noeviction")
    redis_client.execute_command("DEBUG", "POPULATE", 3000, "junk", 1000)  # about 3 MB of someone else's data
    redis_client.config_set("maxmemory", "2mb")
    refused = rsample("enqueue", "--redis-url", redis_server.url, "--dataset", str(dataset), *echo, "--seed", "9", check=False)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert refused.stderr.strip().splitlines()[-1].startswith("error: Redis refused a write: it is full: maxmemory reached")

    out, log = tmp_path / "pairs.jsonl", tmp_path / "run.log"
    worker = start("worker", "both", "--redis-url", redis_server.url, "--run", run_id, log=log)
    coordinator = start("aggregate", "--redis-url", redis_server.url, "--run", run_id, "--out", str(out), "--no-progress", log=log)
    wait_for(lambda: log.read_text().count("it is full: maxmemory reached") >= 2, 60, "both processes to say that Redis is full")
    time.sleep(2)
    assert worker.poll() is None and coordinator.poll() is None  # waiting, not dead
    redis_client.config_set("maxmemory", "0")  # the tenants' data stays; the limit is lifted
    assert coordinator.wait(timeout=120) == 0, log.read_text()[-3000:]
    assert "Traceback" not in log.read_text()
    assert_exactly_once(out, None, ROWS)
    worker.terminate()
    worker.wait(timeout=60)
