"""A shared Redis: passwords and TLS through the URL, secrets kept out of every output, runs kept apart."""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import _cmdline, _live_descendants, read_jsonl, rsample, write_jsonl
from faults import assert_exactly_once, start

from rsample.workers.runtime.embedded_redis import EmbeddedRedis

ROWS = [{"prompt": f"question number {i}"} for i in range(12)] + [{"prompt": ""}, {"prompt": "question number 3"}]
FAST = ["--policy", "echo-policy", "--reward-model", "length-reward", "--backend", "echo", "--reward-backend", "length", "--batch-size", "3"]


def everything_printed(result, tmp_path: Path) -> str:
    logs = "".join(p.read_text() for p in tmp_path.rglob("*.log"))
    return result.stdout + result.stderr + logs


def test_password_in_the_url_works_and_never_shows(tmp_path):
    dataset = write_jsonl(tmp_path / "d.jsonl", ROWS)
    with EmbeddedRedis(data_dir=tmp_path / "redis", password="hunter2-secret") as server:
        out = tmp_path / "pairs.jsonl"
        result = rsample("run", "--redis-url", server.url, "--dataset", str(dataset), *FAST, "--out", str(out), "--no-progress")
        assert "pairs written        12" in result.stdout
        assert "hunter2-secret" not in everything_printed(result, tmp_path)
        assert_exactly_once(out, None, ROWS)
        status = rsample("status", "--redis-url", server.url)
        assert "14 rows, 12 pairs" in status.stdout  # a finished run's line
        assert "hunter2-secret" not in status.stdout + status.stderr
        wrong = rsample("status", "--redis-url", server.url.replace("hunter2-secret", "wrong-guess"), check=False)
        assert wrong.returncode == 2
        assert "refused the credentials" in wrong.stderr and "wrong-guess" not in wrong.stderr


def make_certificates(directory: Path) -> dict[str, Path]:
    directory.mkdir()
    files = {name: directory / f"{name}.pem" for name in ("ca", "ca-key", "cert", "key")}
    run = lambda *args: subprocess.run(["openssl", *args], check=True, capture_output=True)  # noqa: E731
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=rsample-test-ca",
        "-keyout", str(files["ca-key"]), "-out", str(files["ca"]))
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", str(files["key"]), "-out", str(directory / "req.pem"))
    (directory / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    run("x509", "-req", "-in", str(directory / "req.pem"), "-CA", str(files["ca"]), "-CAkey", str(files["ca-key"]),
        "-CAcreateserial", "-days", "1", "-out", str(files["cert"]), "-extfile", str(directory / "ext.cnf"))
    return files


@pytest.mark.skipif(not (shutil.which("openssl") and Path("/usr/bin/redis-server").exists()), reason="needs openssl and a TLS-built redis-server")
def test_tls_with_rediss_url(tmp_path):
    dataset = write_jsonl(tmp_path / "d.jsonl", ROWS)
    tls = make_certificates(tmp_path / "certs")
    with EmbeddedRedis(data_dir=tmp_path / "redis", password="tls-secret", tls_files=tls, binary="/usr/bin/redis-server") as server:
        assert server.url.startswith("rediss://")
        out = tmp_path / "pairs.jsonl"
        result = rsample("run", "--redis-url", server.url, "--dataset", str(dataset), *FAST, "--out", str(out), "--no-progress")
        assert "pairs written        12" in result.stdout
        assert "tls-secret" not in everything_printed(result, tmp_path)
        plain = rsample("status", "--redis-url", server.url.replace("rediss://", "redis://").split("?")[0], check=False)
        assert plain.returncode == 2 and "cannot reach Redis" in plain.stderr  # TLS only: no plaintext way in


def test_two_runs_share_one_redis_without_touching_each_other(redis_server, tmp_path):
    dataset = write_jsonl(tmp_path / "d.jsonl", ROWS)
    log = tmp_path / "runs.log"
    outs = {n: tmp_path / f"pairs-n{n}.jsonl" for n in (2, 5)}
    runs = [start("run", "--redis-url", redis_server.url, "--dataset", str(dataset), *FAST, "--n", str(n), "--out", str(out), "--no-progress", log=log)
            for n, out in outs.items()]
    assert [run.wait(timeout=240) for run in runs] == [0, 0], log.read_text()[-3000:]
    for n, out in outs.items():
        assert_exactly_once(out, None, ROWS)
        assert {row["num_candidates"] for row in read_jsonl(out)} == {n}
    status = rsample("status", "--redis-url", redis_server.url, "--json").stdout
    assert status.count('"complete": true') == 2


def test_a_restarted_aggregate_goes_on_with_the_run_its_output_holds_though_another_was_made_since(redis_server, tmp_path):
    """As compose restarts it: `rsample aggregate` without --run took the latest run, someone else's made meanwhile,
    and refused its own output ever after (suggesting --overwrite, which would have destroyed it)."""
    from faults import kill, wait_for

    from rsample.producer.driver.ledger import outcomes_path_for

    dataset = write_jsonl(tmp_path / "d.jsonl", ROWS)
    url, out, log = redis_server.url, tmp_path / "mine" / "pairs.jsonl", tmp_path / "runs.log"
    mine = rsample("enqueue", "--redis-url", url, "--dataset", str(dataset), *FAST, "--n", "2").stdout.strip()
    first = start("aggregate", "--redis-url", url, "--out", str(out), "--no-progress", log=log)
    wait_for(lambda: outcomes_path_for(out).exists() and outcomes_path_for(out).stat().st_size, 120, "the output's header")
    kill(first)
    other = rsample("enqueue", "--redis-url", url, "--dataset", str(dataset), *FAST, "--n", "5").stdout.strip()
    assert other != mine
    worker = start("worker", "both", "--redis-url", url, "--run", mine, log=log)
    again = start("aggregate", "--redis-url", url, "--out", str(out), "--no-progress", log=log)
    assert again.wait(timeout=240) == 0, log.read_text()[-3000:]
    worker.terminate()
    worker.wait(timeout=60)
    assert_exactly_once(out, None, ROWS)
    assert {row["num_candidates"] for row in read_jsonl(out)} == {2}
    assert f"run {mine}: the one whose output {out} holds (the latest is {other}" in log.read_text()

    # finished, while another run is not: a new run given its folder, or the same command for it? Said, naming both
    again = rsample("aggregate", "--redis-url", url, "--out", str(out), "--no-progress", check=False)
    assert again.returncode == 2 and (f"holds the output of run {mine}, which is finished, and run {other} is not: pass --run {mine} "
                                      "to take") in again.stderr
    assert "--overwrite" not in again.stderr  # which would destroy it
    taken_up = rsample("aggregate", "--redis-url", url, "--run", mine, "--out", str(out), "--no-progress")
    assert f"run {mine}: wrote" in taken_up.stdout  # nothing generated again: the push of a failed one would go here
    assert_exactly_once(out, None, ROWS)


def test_an_aggregate_without_a_run_of_its_own_never_takes_up_a_finished_one(redis_server, redis_client, tmp_path):
    """With every run finished, `rsample aggregate --out new.jsonl` took the newest finished run, made it unfinished,
    and fed all of it again to the workers, saying only that its rows were not in the new file."""
    from rsample.workers.runtime.keys import RunKeys

    dataset = write_jsonl(tmp_path / "d.jsonl", ROWS)
    done = tmp_path / "done" / "pairs.jsonl"
    rsample("run", "--redis-url", redis_server.url, "--dataset", str(dataset), *FAST, "--n", "2", "--out", str(done), "--no-progress",
            timeout=120)
    run_id = redis_client.zrevrange("rsample:runs", 0, 0)[0].decode()
    stats = redis_client.hgetall(RunKeys(run_id).stats)
    assert b"finished_at" in stats
    new = tmp_path / "new" / "pairs.jsonl"
    refused = rsample("aggregate", "--redis-url", redis_server.url, "--out", str(new), "--no-progress", check=False, timeout=60)
    assert (refused.returncode, refused.stderr.strip().splitlines()[-1]) == (
        2, f"error: every run in this Redis is finished (the newest is {run_id}), and {new} holds none of them: pass --run "
           f"{run_id} to write it again there (generating it all again), or enqueue a new run")
    assert redis_client.hgetall(RunKeys(run_id).stats) == stats and not new.exists()
    again = rsample("aggregate", "--redis-url", redis_server.url, "--out", str(done), "--no-progress", timeout=60)
    assert f"run {run_id}: wrote" in again.stdout  # its own output: the same command goes on with it
    anew = rsample("aggregate", "--redis-url", redis_server.url, "--out", str(done), "--overwrite", "--no-progress", check=False,
                   timeout=120)  # the same command, --overwrite added: the file's own run, not a refusal
    assert "every run in this Redis is finished" not in anew.stderr and f"run {run_id}" in anew.stdout + anew.stderr


def test_a_run_whose_row_count_was_lost_still_gets_its_workers(redis_server, redis_client, tmp_path):
    """Killed between saving the run and its row count (or the count lost with the run's counters), `rsample run
    --redis-url` found 0 rows to do, started no worker, and waited for ever."""
    from rsample.workers.runtime.keys import RunKeys

    dataset = write_jsonl(tmp_path / "d.jsonl", ROWS)
    settings = ["--dataset", str(dataset), *FAST, "--n", "2"]
    run_id = rsample("enqueue", "--redis-url", redis_server.url, *settings).stdout.strip()
    redis_client.hdel(RunKeys(run_id).stats, "rows_total")
    out = tmp_path / "pairs.jsonl"
    rsample("run", "--redis-url", redis_server.url, *settings, "--out", str(out), "--no-progress", timeout=120)
    assert_exactly_once(out, None, ROWS)
    assert int(redis_client.hget(RunKeys(run_id).stats, "rows_total")) == len(ROWS)


def test_a_run_made_by_mistake_is_forgotten_and_the_others_are_untouched(redis_server, redis_client, tmp_path):
    """A run no worker can serve (vLLM not installed on the workers) drew workers that follow the runs back for ever,
    and nothing could take it out of the Redis."""
    from faults import kill, wait_for

    from rsample.workers.runtime.keys import RunKeys

    dataset = write_jsonl(tmp_path / "d.jsonl", ROWS)
    url, log = redis_server.url, tmp_path / "runs.log"
    kept = rsample("enqueue", "--redis-url", url, "--dataset", str(dataset), *FAST, "--n", "2").stdout.strip()
    unwanted = rsample("enqueue", "--redis-url", url, "--dataset", str(dataset), *FAST, "--n", "3").stdout.strip()
    out = tmp_path / "unwanted" / "pairs.jsonl"
    coordinator = start("aggregate", "--redis-url", url, "--run", unwanted, "--out", str(out), "--no-progress", log=log)
    wait_for(lambda: redis_client.exists(RunKeys(unwanted).coordinator_lock) and redis_client.llen(f"rq:queue:rsample-{unwanted}-generate"),
             120, "the unwanted run fed")
    refused = rsample("forget", "--redis-url", url, "--run", unwanted, check=False)
    assert refused.returncode == 2 and f"error: run {unwanted} has a coordinator (" in refused.stderr
    kill(coordinator)
    before = {key for key in redis_client.scan_iter() if kept.encode() in key}
    done = rsample("forget", "--redis-url", url, "--run", unwanted)
    assert done.stdout.startswith(f"run {unwanted} is gone from this Redis (")
    assert [key for key in redis_client.scan_iter() if unwanted.encode() in key] == []
    assert {key for key in redis_client.scan_iter() if kept.encode() in key} == before
    status = rsample("status", "--redis-url", url, "--json").stdout
    assert kept in status and unwanted not in status
    again = rsample("forget", "--redis-url", url, "--run", unwanted, check=False)
    assert again.returncode == 2 and f"no run '{unwanted}' in this Redis" in again.stderr

    # its output kept its settings: the same command (without --run, another run unfinished beside it) makes it again
    finished = start("aggregate", "--redis-url", url, "--out", str(out), "--no-progress", log=log)
    wait_for(lambda: redis_client.exists(RunKeys(unwanted).config), 120, "the run made again")
    worker = start("worker", "both", "--redis-url", url, "--run", unwanted, log=log)
    assert finished.wait(timeout=240) == 0, log.read_text()[-3000:]
    worker.terminate()
    worker.wait(timeout=60)
    assert_exactly_once(out, None, ROWS)
    assert {row["num_candidates"] for row in read_jsonl(out)} == {3}


def test_forgetting_a_run_takes_nothing_of_a_run_whose_name_extends_it(redis_server, redis_client, tmp_path):
    from rsample.producer.driver.ledger import Ledger
    from rsample.producer.feeder import Feeder
    from rsample.workers.runtime.run_state import load_run

    dataset = write_jsonl(tmp_path / "d.jsonl", ROWS)
    for name in ("gsm8k", "gsm8k-v2"):
        rsample("enqueue", "--redis-url", redis_server.url, "--dataset", str(dataset), *FAST, "--run-id", name)
        Feeder(redis_client, load_run(redis_client, name), Ledger(tmp_path / name / "pairs.jsonl", None, name)).top_up()
    before = {key: redis_client.type(key) for key in redis_client.scan_iter() if b"gsm8k-v2" in key}
    assert any(key.startswith(b"rq:job:gsm8k-v2-") for key in before) and any(b"rq:job:gsm8k-generate" in key for key in redis_client.scan_iter())
    rsample("forget", "--redis-url", redis_server.url, "--run", "gsm8k")
    assert {key: redis_client.type(key) for key in redis_client.scan_iter() if b"gsm8k-v2" in key} == before
    assert not [key for key in redis_client.scan_iter() if b"gsm8k" in key and b"gsm8k-v2" not in key and not key.startswith(b"rq:worker")]
    refused = rsample("enqueue", "--redis-url", redis_server.url, "--dataset", str(dataset), *FAST, "--run-id", "exp:2", check=False)
    assert refused.returncode == 2 and "use letters, digits, '.', '_' and '-' only" in refused.stderr


def test_a_run_id_that_names_a_run_of_other_settings_is_refused(redis_server, redis_client, tmp_path):
    """The run went on with its own settings (n=3) while the command said n=5 and logged them, and exited 0; the
    same settings again are that run, resumed."""
    from rsample.workers.runtime.run_state import load_run

    dataset = write_jsonl(tmp_path / "d.jsonl", ROWS)
    url = redis_server.url
    rsample("enqueue", "--redis-url", url, "--dataset", str(dataset), *FAST, "--n", "3", "--run-id", "mine")
    again = rsample("enqueue", "--redis-url", url, "--dataset", str(dataset), *FAST, "--n", "3", "--run-id", "mine")
    assert "run mine already exists in this Redis" in again.stderr
    for command in ("enqueue", "run"):
        other = rsample(command, "--redis-url", url, "--dataset", str(dataset), *FAST, "--n", "5", "--run-id", "mine",
                        *(("--out", str(tmp_path / "pairs.jsonl")) if command == "run" else ()), check=False)
        assert other.returncode == 2 and other.stderr.strip().splitlines()[-1] == (
            "error: run mine exists in this Redis with other settings (--n was 3, now 5): give another --run-id, or take "
            "it out first (`rsample forget --run mine`)"), other.stderr
    assert load_run(redis_client, "mine").sampling.n == 3 and not (tmp_path / "pairs.jsonl").exists()
    # job settings are not in a run's id: the same command finds the run, which keeps its own, and says so
    lower = rsample("enqueue", "--redis-url", url, "--dataset", str(dataset), *FAST, "--n", "3", "--run-id", "mine", "--max-in-flight", "6")
    assert ("run mine keeps the job settings it was made with (--max-in-flight 4096, not 6): to change them, `rsample forget "
            "--run mine` and run the command again (what is written is kept)") in lower.stderr, lower.stderr
    assert load_run(redis_client, "mine").jobs.max_in_flight == 4096


def redis_contents(client) -> str:
    """Every key and value of a Redis, as text, whatever its type."""
    parts = []
    for key in client.scan_iter():
        kind = client.type(key).decode()
        value = {"string": lambda: client.get(key), "hash": lambda: client.hgetall(key), "list": lambda: client.lrange(key, 0, -1),
                 "set": lambda: client.smembers(key), "zset": lambda: client.zrange(key, 0, -1),
                 "stream": lambda: client.xrange(key)}.get(kind, lambda: b"")()
        parts.append(f"{key!r} {value!r}")
    return "\n".join(parts)


def command_lines_holding(text: str) -> list[str]:
    """The command lines of this test's processes (this process's descendants: the tests of another xdist worker start
    processes of their own) that hold `text`."""
    return [line for line in map(_cmdline, _live_descendants(os.getpid(), reap=False)) if text in line]


def test_a_password_in_any_form_reaches_no_key_card_log_or_process(tmp_path):
    import redis as redis_py
    from faults import wait_for

    from rsample.producer.driver.hub import dataset_card
    from rsample.producer.driver.summary import Summary
    from rsample.workers.runtime.run_state import load_run

    password = "pw-Zq81-sekrit"
    dataset = write_jsonl(tmp_path / "d.jsonl", [{"prompt": f"question number {i}"} for i in range(400)])
    log = tmp_path / "processes.log"
    with EmbeddedRedis(data_dir=tmp_path / "redis", password=password) as server:
        url = server.url
        client = redis_py.Redis.from_url(url)
        run_id = rsample("enqueue", f"--redis-url={url}", "--dataset", str(dataset), *FAST).stdout.strip()
        workers = [start("worker", "generate", "--redis-url", url, "--run", run_id, log=log),  # flag form
                   start("worker", "reward", f"--redis-url={url}", "--run", run_id, log=log)]  # = form
        wait_for(lambda: len(list(client.scan_iter("rq:worker:rsample-*"))) == 2, 180, "both workers to register")
        assert command_lines_holding(password) == []
        out = tmp_path / "pairs.jsonl"
        aggregated = rsample("aggregate", f"--redis-url={url}", "--run", run_id, "--out", str(out), "--no-progress")
        for worker in workers:
            worker.terminate()
            worker.wait(timeout=30)

        local_out = tmp_path / "local" / "pairs.jsonl"
        local = start("run", f"--redis-url={url}", "--dataset", str(dataset), *FAST, "--batch-size", "1", "--n", "3",
                      "--out", str(local_out), "--no-progress", log=log)
        wait_for(lambda: local_out.with_name("pairs.outcomes.jsonl").exists() or local.poll() is not None, 60, "the run to start")
        wait_for(lambda: len(command_lines_holding("worker generate --run")) > 0 or local.poll() is not None, 60, "the run's workers")
        seen_while_running = command_lines_holding(password)
        assert local.wait(timeout=120) == 0, log.read_text()[-2000:]
        assert seen_while_running == []

        status = rsample("status", f"--redis-url={url}")
        card = dataset_card(load_run(client, run_id), Summary(1, 0, {}, 0, 0, 1, 1, 1, 1.0), {"pairs": out})
        printed = aggregated.stdout + aggregated.stderr + status.stdout + status.stderr + log.read_text() + card
        printed += "".join(p.read_text() for p in tmp_path.rglob("*.log") if "redis" not in p.parts)
        assert "redis://:***@" in card
        assert password not in printed
        assert password not in redis_contents(client)
        client.close()


def test_a_finished_run_leaves_nothing_for_ever_and_forget_takes_what_an_expired_one_left(redis_server, redis_client, tmp_path):
    """On a Redis shared for months: a finished run's keys all expire, its empty queues leave RQ's list (rq-dashboard's
    Queues page grew by every run ever made), and what outlives its settings (a killed worker's queue entries) can go."""
    from faults import kill, wait_for
    from rq.worker_registration import WORKERS_BY_QUEUE_KEY

    from rsample.workers.runtime.keys import RunKeys

    url = redis_server.url
    dataset = write_jsonl(tmp_path / "d.jsonl", ROWS)
    rsample("run", "--redis-url", url, "--dataset", str(dataset), *FAST, "--run-id", "done", "--out", str(tmp_path / "a.jsonl"),
            "--no-progress")
    run_keys = list(redis_client.scan_iter("rsample:run:done:*"))
    assert RunKeys("done").pace.encode() in run_keys  # the pace the coordinator sampled
    assert {key: redis_client.ttl(key) for key in run_keys if redis_client.ttl(key) < 0} == {}
    queues = {member.decode() for member in redis_client.smembers("rq:queues")}
    assert not {name for name in queues if "done" in name}, queues
    listed = rsample("status", "--redis-url", url).stdout  # a month of finished runs, a line each
    pairs = len(read_jsonl(tmp_path / "a.jsonl"))
    assert re.search(rf"^run done \(complete\), policy echo-policy, took .+: {len(ROWS)} rows, {pairs} pairs$", listed, re.MULTILINE)
    assert "(1 finished run in a line each: `--run ID` gives one in full)" in listed and "queue rsample-done" not in listed
    assert "queue rsample-done-generate" in rsample("status", "--redis-url", url, "--run", "done").stdout

    rsample("enqueue", "--redis-url", url, "--dataset", str(dataset), *FAST, "--run-id", "left")
    worker = start("worker", "both", "--redis-url", url, "--run", "left", log=tmp_path / "worker.log")
    generate = WORKERS_BY_QUEUE_KEY % "rsample-left-generate"
    wait_for(lambda: redis_client.scard(generate), 120, "the worker's registration")
    kill(worker)  # killed outright (out of memory, say): it never takes itself off its queues' worker lists
    redis_client.set("rq:clean_registries:rsample-left-score-0", 1, ex=899)  # nor frees the lock of the cleaning it was at
    for key in RunKeys("left").kept_after_finish:  # as 30 days after the run finished
        redis_client.delete(key)
    done = rsample("forget", "--redis-url", url, "--run", "left")
    assert done.returncode == 0
    assert not [key for key in redis_client.scan_iter() if b"left" in key and not key.startswith(b"rq:worker:")]
    assert not [member for member in redis_client.smembers("rq:queues") if b"left" in member]
    again = rsample("forget", "--redis-url", url, "--run", "left", check=False)
    assert again.returncode == 2 and "no run 'left' in this Redis" in again.stderr


def test_a_run_forgotten_and_made_again_under_its_id_is_served_with_its_new_settings(redis_server, redis_client, tmp_path):
    """A worker that loaded run `again` served it, once forgotten and made again with --n 3, with the n=2 it had loaded,
    while the output's header named n=3."""
    from faults import kill, wait_for

    dataset = write_jsonl(tmp_path / "d.jsonl", ROWS)
    url, log = redis_server.url, tmp_path / "worker.log"
    rsample("enqueue", "--redis-url", url, "--dataset", str(dataset), *FAST, "--n", "2", "--run-id", "again")
    worker = start("worker", "both", "--redis-url", url, "--run", "again", log=log)
    try:
        wait_for(lambda: "serving run again" in log.read_text(), 120, "the worker serving the first run", interval=0.2)
        rsample("forget", "--redis-url", url, "--run", "again")
        rsample("enqueue", "--redis-url", url, "--dataset", str(dataset), *FAST, "--n", "3", "--run-id", "again")
        out = tmp_path / "pairs.jsonl"
        rsample("aggregate", "--redis-url", url, "--run", "again", "--out", str(out), "--no-progress")
    finally:
        kill(worker)
    assert_exactly_once(out, None, ROWS)
    assert {row["num_candidates"] for row in read_jsonl(out)} == {3}
    assert log.read_text().count("run again was made again with other settings since this worker loaded it: it serves it with them") == 1


def test_a_worker_whose_run_was_made_again_with_other_models_stops_and_its_job_waits_untouched(redis_server, redis_client, tmp_path):
    from faults import kill, wait_for
    from rq.serializers import JSONSerializer

    from rsample.workers.runtime.keys import RunKeys
    from rsample.workers.runtime.queues import make_queue
    from rsample.workers.runtime.safe_job import SafeJob

    dataset = write_jsonl(tmp_path / "d.jsonl", ROWS)
    url, log = redis_server.url, tmp_path / "worker.log"
    rsample("enqueue", "--redis-url", url, "--dataset", str(dataset), *FAST, "--run-id", "again")
    first = start("worker", "both", "--redis-url", url, "--run", "again", log=log)
    wait_for(lambda: "serving run again" in log.read_text(), 120, "the worker serving the first run", interval=0.2)
    rsample("forget", "--redis-url", url, "--run", "again")
    other_policy = [item if item != "echo-policy" else "other-policy" for item in FAST]
    rsample("enqueue", "--redis-url", url, "--dataset", str(dataset), *other_policy, "--run-id", "again")
    out = tmp_path / "pairs.jsonl"
    coordinator = start("aggregate", "--redis-url", url, "--run", "again", "--out", str(out), "--no-progress", log=tmp_path / "aggregate.log")
    try:
        assert first.wait(timeout=120) != 0
        said = log.read_text()
        assert "worker stopped after its run made again: run again was made again with other models since this worker loaded it" in said, said[-3000:]
        assert "Traceback" not in said and "the job goes back to its queue, for a worker started for them" in said, said[-3000:]
        queue = make_queue(redis_client, RunKeys("again").generate_queue)
        jobs = [SafeJob.fetch(job_id, connection=redis_client, serializer=JSONSerializer) for job_id in queue.job_ids]
        assert jobs and {job.retries_left for job in jobs} == {2}  # the one it took is back, as it came
        second = start("worker", "both", "--redis-url", url, "--run", "again", log=tmp_path / "second.log")
        assert coordinator.wait(timeout=240) == 0
    finally:
        for process in (first, coordinator):
            kill(process)
    kill(second)
    assert_exactly_once(out, None, ROWS)
    assert "loaded policy other-policy" in (tmp_path / "second.log").read_text()


def test_a_run_made_again_by_a_version_whose_settings_this_worker_cannot_read_stops_it(redis_server, redis_client, tmp_path):
    import json

    import pytest

    from rsample.workers.runtime import worker_context
    from rsample.workers.runtime.keys import RunKeys
    from rsample.workers.runtime.run_state import load_run

    dataset = write_jsonl(tmp_path / "d.jsonl", ROWS)
    rsample("enqueue", "--redis-url", redis_server.url, "--dataset", str(dataset), *FAST, "--run-id", "newer")
    context = worker_context.WorkerContext(redis_client, load_run(redis_client, "newer"))
    context.check_made_as_loaded()  # as loaded: nothing to say
    assert context.broken is None
    settings = json.loads(redis_client.get(RunKeys("newer").config))
    redis_client.set(RunKeys("newer").config, json.dumps({**settings, "a_setting_of_a_newer_version": 1}))
    with pytest.raises(worker_context.RunMadeAgain, match="run newer was made again since this worker loaded it: run 'newer' has settings"):
        context.check_made_as_loaded()
    assert context.broken.startswith("run newer was made again since this worker loaded it")


def test_a_run_made_again_with_the_same_settings_renders_the_date_it_was_made_again(redis_server, redis_client, tmp_path):
    """Its templates' date (`pin_run_date`) is the run's: a worker that had loaded the first kept the first's date
    while workers started since rendered the new one."""
    import dataclasses

    from rsample.workers.backends import template_date
    from rsample.workers.runtime import worker_context
    from rsample.workers.runtime.run_state import load_run, save_run

    dataset = write_jsonl(tmp_path / "d.jsonl", ROWS)
    rsample("enqueue", "--redis-url", redis_server.url, "--dataset", str(dataset), *FAST, "--run-id", "dated")
    first = load_run(redis_client, "dated")
    context = worker_context.WorkerContext(redis_client, first)
    save_run(redis_client, dataclasses.replace(first, created_at=first.created_at + 3 * 86400))  # forgotten, made again days later
    pinned = template_date.pinned_run_date()
    try:
        context.check_made_as_loaded()
        assert context.config.created_at == first.created_at + 3 * 86400 and context.broken is None
        assert template_date.pinned_run_date() == first.created_at + 3 * 86400
    finally:
        template_date.pin_run_date(pinned)  # this test process's own, as it was
