"""`rsample workers`: GPU plans, and a real supervisor keeping real worker processes alive on a real Redis."""

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import CHAT_ROWS, REPO, rsample
from faults import STARTED, assert_exactly_once, processes_mentioning, wait_for

from rsample.workers.common import defaults
from rsample.workers.common.errors import RsampleError
from rsample.workers.runtime.embedded_redis import EmbeddedRedis
from rsample.workers.runtime.supervisor import WorkerSpec, assign_gpus, parse_gpus, plan_workers

SUPERVISOR = [sys.executable, "-m", "rsample.producer", "workers"]
"""The same command object as `rsample workers` (`python -m rsample.producer workers`)."""
ECHO = ["--policy", "echo-policy", "--reward-model", "length-reward", "--backend", "echo", "--reward-backend", "length", "--n", "3", "--batch-size", "2"]
FAST = ["--restart-backoff", "0.1"]


def echo_with(reward: str) -> list[str]:
    """ECHO with another reward model: another run's models."""
    return [reward if arg == "length-reward" else arg for arg in ECHO]


def test_gpu_lists_and_worker_plans():
    assert parse_gpus("0,1,2") == [0, 1, 2]
    assert parse_gpus("0-5") == [0, 1, 2, 3, 4, 5]
    assert parse_gpus("0-3,6") == [0, 1, 2, 3, 6]
    assert parse_gpus(" 6 , 2-3") == [6, 2, 3]
    plan = plan_workers(assign_gpus(None, None, "0-3", "4"), 2)
    assert plan == [WorkerSpec("generate", (0, 1)), WorkerSpec("generate", (2, 3)), WorkerSpec("reward", (4,))]
    assert [spec.devices for spec in plan] == ["0,1", "2,3", "4"]
    assert plan_workers(assign_gpus("0-2", "reward", None, None), 2) == [WorkerSpec("reward", (g,)) for g in range(3)]  # one GPU each
    assert plan_workers(assign_gpus(None, None, "7", None), 1) == [WorkerSpec("generate", (7,))]


@pytest.mark.parametrize("call, message", [
    (lambda: parse_gpus("0,x", "--generate"), "--generate '0,x': 'x' is not a GPU id or a range such as 0-3"),
    (lambda: parse_gpus("0,,1"), "--gpus '0,,1': '' is not a GPU id or a range such as 0-3"),
    (lambda: parse_gpus("-1"), "--gpus '-1': '-1' is not a GPU id or a range such as 0-3"),
    (lambda: parse_gpus("5-3"), "--gpus '5-3': the range 5-3 runs backwards"),
    (lambda: parse_gpus("0-2,1"), "--gpus '0-2,1' lists GPU 1 twice"),
    (lambda: assign_gpus(None, None, "0-3", "3-4"), "GPU 3 given to both --generate and --reward"),
    (lambda: assign_gpus("0", "generate", None, "1"), "use either --gpus with --role, or --generate / --reward, not both"),
    (lambda: assign_gpus("0-3", None, None, None), "--gpus and --role go together, e.g. --gpus 0-3 --role generate"),
    (lambda: assign_gpus(None, None, None, None), "say which GPUs to use: --gpus 0-3 --role generate, or --generate 0-5 --reward 6-7 "
                                                  "(on a machine without GPU, --gpus 0 --role both: one worker that generates and scores)"),
    (lambda: plan_workers({"generate": [0, 1, 2]}, 2), "3 generation GPUs do not split into workers of 2 GPUs (--gpus-per-worker)"),
    (lambda: plan_workers({"generate": [0]}, 0), "--gpus-per-worker must be at least 1 (got 0)"),
])
def test_bad_gpu_plans_fail_in_one_line(call, message):
    with pytest.raises(RsampleError) as error:
        call()
    assert str(error.value) == message


def test_cli_errors_and_light_imports(redis_server):
    overlap = run_supervisor("--redis-url", redis_server.url, "--generate", "0-3", "--reward", "3")
    assert (overlap.returncode, overlap.stderr) == (2, "error: GPU 3 given to both --generate and --reward\n")
    missing = run_supervisor("--redis-url", redis_server.url, "--run", "nope", "--gpus", "0", "--role", "generate")
    assert (missing.returncode, missing.stderr.splitlines()[-1]) == (2, "error: no run 'nope' in this Redis (see `rsample status` for the runs it holds)")
    heavy = subprocess.run([sys.executable, "-c", "import sys, rsample.workers.runtime.supervisor; print(sorted({'torch', 'transformers', 'rq'} & set(sys.modules)))"],
                           cwd=REPO, capture_output=True, text=True, check=True)
    assert heavy.stdout.strip() == "[]"


def test_supervised_workers_serve_a_run_restart_and_stop(chat_dataset, tmp_path):
    secret = "supervisor-secret-pw"
    with EmbeddedRedis(data_dir=tmp_path / "redis", password=secret) as server:
        run_id = enqueue(server.url, chat_dataset)
        log = tmp_path / "supervisor.log"
        supervisor = start_supervisor("--run", run_id, "--generate", "0,1", "--reward", "2", *FAST, "--log-dir", str(tmp_path / "logs"),
                                      log=log, redis_url=server.url)
        try:
            first = wait_for(lambda: pinned_workers(supervisor.pid, 3), 30, "three pinned workers")
            assert sorted(first) == ["0", "1", "2"], log.read_text()
            assert not any(secret.encode() in Path(f"/proc/{pid}/cmdline").read_bytes() for pid in first.values())

            os.kill(first["2"], signal.SIGKILL)  # the only reward worker: the run completes only if it comes back
            second = wait_for(lambda: (w := pinned_workers(supervisor.pid, 3)) and w["2"] != first["2"] and w, 30, "a new reward worker on GPU 2")
            assert (second["0"], second["1"]) == (first["0"], first["1"])

            out, scores = tmp_path / "pairs.jsonl", tmp_path / "scores.jsonl"
            rsample("aggregate", "--redis-url", server.url, "--run", run_id, "--out", str(out), "--scores-out", str(scores), "--no-progress", timeout=180)
            assert assert_exactly_once(out, scores, CHAT_ROWS) == {"pair": 7, "duplicate": 1}

            supervisor.send_signal(signal.SIGTERM)
            assert supervisor.wait(timeout=10) == 0, log.read_text()
            assert processes_mentioning(run_id) == []
        finally:
            kill_leftovers(run_id)
    output = log.read_text()
    assert f"reward worker on GPU 2 (pid {first['2']}) was killed by SIGKILL" in output
    assert f"restarted (start 2) reward worker on GPU 2 (pid {second['2']}" in output
    assert output.count("stopped ") == 3 and "exited with code 0" in output
    everything = output + "".join(p.read_text() for p in (tmp_path / "logs").rglob("*.log*"))
    assert "redis://:***@" in output and secret not in everything


def test_workers_of_both_roles_serve_a_run_and_a_machine_without_gpu_is_said(redis_server, chat_dataset, tmp_path):
    """`--role both` (a policy and its reward models in one process per GPU) starts its workers: it used to start none."""
    assert plan_workers(assign_gpus("0-3", "both", None, None), 2) == [WorkerSpec("both", (0, 1)), WorkerSpec("both", (2, 3))]
    run_id = enqueue(redis_server.url, chat_dataset)
    log = tmp_path / "supervisor.log"
    supervisor = start_supervisor("--run", run_id, "--gpus", "0", "--role", "both", *FAST, "--log-dir", str(tmp_path / "logs"),
                                  log=log, redis_url=redis_server.url)
    try:
        out = tmp_path / "pairs.jsonl"
        rsample("aggregate", "--redis-url", redis_server.url, "--run", run_id, "--out", str(out), "--no-progress", timeout=90)
        assert assert_exactly_once(out, None, CHAT_ROWS) == {"pair": 7, "duplicate": 1}
        supervisor.send_signal(signal.SIGTERM)
        assert supervisor.wait(timeout=10) == 0, log.read_text()
    finally:
        kill_leftovers(run_id)
    output = log.read_text()
    assert "1 worker(s): both on GPU 0" in output
    import torch

    if torch.cuda.device_count() == 0:  # this machine: said, not refused
        assert "WARNING this machine has no GPU: the 1 worker(s) run on its CPU" in output


def test_a_gpu_the_machine_lacks_is_refused(monkeypatch):
    """Its worker would run on the CPU, silently slow (CUDA_VISIBLE_DEVICES=6 on a machine of 4 GPUs shows none)."""
    import torch

    from rsample.workers.runtime.supervisor import check_devices

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    plan = plan_workers(assign_gpus(None, None, "0-5", "6-7"), 1)
    with pytest.raises(RsampleError, match=r"^no GPU 4, 5, 6, 7 on this machine: it has 4 \(ids 0 to 3\)$"):
        check_devices(plan)
    assert check_devices(plan[:4]) is None
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")  # a Slurm job's allocation: ids count among its GPUs
    with pytest.raises(RsampleError, match=r"^no GPU 4, 5, 6, 7 here: CUDA_VISIBLE_DEVICES=4,5,6,7 shows 4 GPUs \(ids 0 to 3\), "):
        check_devices(plan)


def test_gpu_ids_count_among_those_an_inherited_cuda_visible_devices_shows(monkeypatch, caplog):
    """Slurm sets CUDA_VISIBLE_DEVICES=2,3 for a job given GPUs 2 and 3: `--generate 0` is GPU 2, as torch counts it
    in the job; pinning the machine's GPU 0 would take another job's GPU."""
    from rsample.workers.runtime.gpu_ids import pinned_devices
    from rsample.workers.runtime.worker import pin_gpu

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert pinned_devices([0, 1]) == "0,1"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3,GPU-8f0e4c1a")
    assert [pinned_devices([0]), pinned_devices([1, 2])] == ["2", "3,GPU-8f0e4c1a"]
    pin_gpu("1")  # `rsample worker --gpu 1` in the job
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "3"
    import glob

    if not glob.glob("/dev/nvidia[0-9]*"):  # this machine: said, as `rsample workers` says it
        assert "--gpu 1: this machine shows no GPU (CUDA_VISIBLE_DEVICES=3): the worker runs on its CPU" in caplog.text
    for hidden in ("", "-1"):  # GPUs hidden on purpose: they stay hidden
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", hidden)
        assert pinned_devices([0, 1]) == ""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    pin_gpu("0")
    assert os.environ["CUDA_VISIBLE_DEVICES"] == ""
    with pytest.raises(RsampleError, match=r"^--gpu first: give GPU ids"):
        pin_gpu("first")


def test_supervised_workers_in_an_allocation_are_pinned_to_its_gpus(chat_dataset, tmp_path):
    with EmbeddedRedis(data_dir=tmp_path / "redis") as server:
        run_id = enqueue(server.url, chat_dataset)
        log = tmp_path / "supervisor.log"
        supervisor = start_supervisor("--run", run_id, "--generate", "0", "--reward", "1", *FAST, "--log-dir", str(tmp_path / "logs"),
                                      log=log, redis_url=server.url, visible="6,7")
        try:
            pinned = wait_for(lambda: pinned_workers(supervisor.pid, 2), 30, "two pinned workers")
            assert sorted(pinned) == ["6", "7"], log.read_text()
        finally:
            supervisor.terminate()
            supervisor.wait(timeout=60)


def test_a_worker_that_cannot_start_is_given_up(redis_server, chat_dataset, tiny_models, tmp_path):
    """The run's reward model is missing on this machine (its folder went after the run was made): only the worker
    finds out, fails at start-up every time, and is given up with its last words."""
    reward = tmp_path / "reward"
    shutil.copytree(tiny_models["reward"], reward)
    run_id = rsample("enqueue", "--redis-url", redis_server.url, "--dataset", str(chat_dataset), *ECHO[:2], "--reward-model", str(reward),
                     *ECHO[4:6]).stdout.strip().splitlines()[-1]
    shutil.rmtree(reward)
    log = tmp_path / "supervisor.log"
    supervisor = start_supervisor("--gpus", "3", "--role", "reward", *FAST, "--give-up-after", "3",
                                  "--log-dir", str(tmp_path / "logs"), log=log, redis_url=redis_server.url)
    try:
        assert supervisor.wait(timeout=60) == 1, log.read_text()
    finally:
        kill_leftovers(run_id)
    output = log.read_text()
    assert output.count("exited with code 2 after") == 3 and output.count("restarting in") == 2
    assert f"error: reward model not found: {reward}; giving up after 3 failures in a row" in output
    assert output.rstrip().endswith("every worker has been given up: exiting")
    assert sorted(p.name for p in (tmp_path / "logs" / run_id).iterdir()) == ["reward-gpu3.log", "reward-gpu3.log.1"]


def test_a_reward_model_index_the_run_lacks_fails_before_any_worker_starts(redis_server, chat_dataset, tmp_path):
    run_id = enqueue(redis_server.url, chat_dataset)
    done = run_supervisor("--redis-url", redis_server.url, "--gpus", "3", "--role", "reward", "--reward-model-index", "0",
                          "--reward-model-index", "5", "--log-dir", str(tmp_path / "logs"))
    assert (done.returncode, done.stderr) == (2, f"error: run {run_id} has 1 reward model (indices 0 to 0); there is no index 5\n")
    assert not (tmp_path / "logs").exists()


def test_a_killed_supervisor_leaves_no_orphans(redis_server, chat_dataset, tmp_path):
    run_id = enqueue(redis_server.url, chat_dataset)
    supervisor = start_supervisor("--gpus", "0", "--role", "generate", "--log-dir", str(tmp_path / "logs"),
                                  log=tmp_path / "supervisor.log", redis_url=redis_server.url)
    try:
        (pid,) = wait_for(lambda: pinned_workers(supervisor.pid, 1), 30, "a pinned worker").values()
        supervisor.kill()
        supervisor.wait(timeout=10)
        wait_for(lambda: not alive(pid), 15, f"worker {pid} to exit after its supervisor was killed", interval=0.1)
    finally:
        kill_leftovers(run_id)


def run_supervisor(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*SUPERVISOR, *args], cwd=REPO, capture_output=True, text=True, timeout=60)


def start_supervisor(*args: str, log: Path, redis_url: str, visible: str | None = None) -> subprocess.Popen:
    """The URL goes through the environment, as it should in real use: a password on argv shows in `ps`. `visible`:
    the CUDA_VISIBLE_DEVICES it inherits (none by default)."""
    env = {**os.environ, "RSAMPLE_REDIS_URL": redis_url}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    if visible is not None:
        env["CUDA_VISIBLE_DEVICES"] = visible
    process = subprocess.Popen([*SUPERVISOR, *args], cwd=REPO, stdout=log.open("a"), stderr=subprocess.STDOUT, env=env)
    STARTED.append(process)  # killed by conftest's reaper if the test fails
    return process


def enqueue(url: str, dataset: Path) -> str:
    return rsample("enqueue", "--redis-url", url, "--dataset", str(dataset), *ECHO).stdout.strip().splitlines()[-1]


def pinned_workers(parent: int, expected: int) -> dict[str, int] | None:
    """CUDA_VISIBLE_DEVICES → pid of the live `rsample worker` children of `parent`, once there are `expected` of them."""
    found = {}
    for entry in Path("/proc").iterdir():
        try:
            if not entry.name.isdigit() or not alive(int(entry.name)):
                continue
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
            # a worker shows as `python -m rsample.producer worker ...`, or by the title RQ gives it once it serves
            is_worker = b"rsample.producer\0worker\0" in cmdline or cmdline.startswith(b"rq:worker:rsample-")
            if int(stat.rsplit(")", 1)[1].split()[1]) != parent or not is_worker:
                continue  # not a child, or a child not yet exec'd
            environ = dict(item.partition(b"=")[::2] for item in (entry / "environ").read_bytes().split(b"\0") if item)
            found[environ[b"CUDA_VISIBLE_DEVICES"].decode()] = int(entry.name)
        except (OSError, KeyError):
            continue
    return found if len(found) == expected else None


def alive(pid: int) -> bool:
    """Running and not a zombie (an orphan's zombie may wait a while for a reaper)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def kill_leftovers(run_id: str) -> None:
    for pid in processes_mentioning(run_id):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_a_worker_still_busy_at_the_stop_timeout_gets_a_second_sigterm_before_any_sigkill(tmp_path, capsys):
    """The second SIGTERM lets a worker release its running jobs (requeued at the next sweep); SIGKILL would leave them
    claimed for the heartbeat TTL. The child here is a process that, as a busy worker, outlives the first SIGTERM."""
    import subprocess
    import sys

    from rsample.workers.runtime.supervisor import Child, Supervisor, WorkerSpec

    script = ("import signal, sys, time\n"
              "seen = []\n"
              "def on_term(signum, frame):\n"
              "    seen.append(signum)\n"
              "    if len(seen) == 2:\n"
              "        sys.exit(3)\n"
              "signal.signal(signal.SIGTERM, on_term)\n"
              "print('ready', flush=True)\n"
              "while True:\n"
              "    time.sleep(0.05)\n")
    supervisor = Supervisor([WorkerSpec("generate", (0,))], "redis://unused", "run", tmp_path, stop_grace=0.5)
    child = supervisor.children[0]
    assert isinstance(child, Child)
    child.process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert child.process.stdout.readline().strip() == "ready"
    supervisor.stop()
    assert child.process.returncode == 3  # it exited on the second SIGTERM, not by SIGKILL
    assert "generate worker on GPU 0 (pid" in capsys.readouterr().out


def test_which_run_workers_that_follow_the_runs_serve(redis_server, redis_client):
    """The newest fed run first; a fed run keeps its workers until it is finished; a run nothing feeds gives them up
    to one that is fed; a finished run, or one whose settings expired, to the next."""
    from rsample.producer.driver.run_lock import RunLock
    from rsample.workers.common.config import DataSelection, RunConfig
    from rsample.workers.runtime.keys import RunKeys
    from rsample.workers.runtime.run_state import Move, list_run_ids, move_from, run_to_serve, save_run

    def make(run_id: str, created_at: float) -> None:
        save_run(redis_client, RunConfig(run_id=run_id, data=DataSelection("d"), policy="p", reward_models=("rm",), created_at=created_at))

    def finish(run_id: str) -> None:
        redis_client.hset(RunKeys(run_id).stats, "finished_at", 1.0)

    assert run_to_serve(redis_client) is None
    make("old", 1.0)
    assert run_to_serve(redis_client) == "old" and move_from(redis_client, "old") is None
    make("new", 2.0)
    assert run_to_serve(redis_client) == "new"  # nothing feeds either: the newest
    assert move_from(redis_client, "old") is None  # from one unfed run to another: no reason to reload the models
    lock = RunLock(redis_client, RunKeys("old").coordinator_lock, "old").acquire()
    try:
        assert run_to_serve(redis_client) == "old"  # fed: first, though older
        assert move_from(redis_client, "new") == Move("old", "nothing feeds run new (no coordinator holds it) while run old is fed")
        RunLock(redis_client, RunKeys("new").coordinator_lock, "new").acquire()
        assert move_from(redis_client, "old") is None  # fed: kept until finished, the newer run waiting
        finish("old")
        assert move_from(redis_client, "old") == Move("new", "run old is finished")
    finally:
        lock.release()
    finish("new")
    assert run_to_serve(redis_client) is None and move_from(redis_client, "new") is None  # nothing left: stay
    make("later", 3.0)
    redis_client.delete(RunKeys("new").config)  # as `expire_run` leaves it a month later: the index still names it
    assert list_run_ids(redis_client) == ["later", "old"]
    assert redis_client.zrevrange("rsample:runs", 0, -1) == [b"later", b"old"]  # gone from the index that workers poll
    assert move_from(redis_client, "new") == Move("later", "run new is gone (forgotten or expired)")
    status = json.loads(rsample("status", "--redis-url", redis_server.url, "--json").stdout)
    assert [report["run_id"] for report in status] == ["later", "old"]  # it used to fail on the expired run


def test_workers_without_a_run_wait_for_one_and_move_to_the_next_when_it_is_finished(redis_server, chat_dataset, tmp_path):
    """Started before any run, as on a cluster: the supervisor waits, serves the first run, then the next one that is
    enqueued: with the same models, in the same worker processes (a large model loads in minutes), with other models,
    in workers started again for them; each run is written exactly once, with its own settings."""
    log = tmp_path / "supervisor.log"
    supervisor = start_supervisor("--gpus", "0", "--role", "both", *FAST, "--log-dir", str(tmp_path / "logs"), log=log,
                                  redis_url=redis_server.url)
    run_ids = []
    try:
        wait_for(lambda: "waiting for a run" in log.read_text(), 30, "the supervisor to wait for a run", interval=0.1)
        for n, reward in (("3", "length-reward"), ("2", "length-reward"), ("4", "other-length-reward")):
            run_ids.append(rsample("enqueue", "--redis-url", redis_server.url, "--dataset", str(chat_dataset), *echo_with(reward), "--n", n)
                           .stdout.strip().splitlines()[-1])
            if len(run_ids) > 1:  # the supervisor looks every few seconds: a run done before it looked is one it never saw
                wait_for(lambda: f"to run {run_ids[-1]}" in log.read_text(), 60, f"the supervisor to see run {run_ids[-1]}", interval=0.2)
            out = tmp_path / f"pairs-{n}.jsonl"
            rsample("aggregate", "--redis-url", redis_server.url, "--run", run_ids[-1], "--out", str(out), "--no-progress", timeout=120)
            assert assert_exactly_once(out, None, CHAT_ROWS) == {"pair": 7, "duplicate": 1}
            rows = [json.loads(line) for line in out.read_text().splitlines()]
            assert {row["num_candidates"] for row in rows} == {int(n)} and {tuple(row["chosen_score"]) for row in rows} == {(reward,)}
        supervisor.send_signal(signal.SIGTERM)
        assert supervisor.wait(timeout=30) == 0, log.read_text()
    finally:
        for run_id in run_ids:
            kill_leftovers(run_id)
    first, second, third = run_ids
    output = log.read_text()
    assert f"run {first} is finished: the workers move to run {second} with the models they hold" in output, output
    assert f"run {second} is finished: moving the workers to run {third}" in output, output
    assert output.count("started both worker on GPU 0") == 2 and output.count("stopped both worker on GPU 0") == 2
    assert sorted(path.name for path in (tmp_path / "logs").iterdir()) == sorted([first, third])  # a move keeps its logs
    worker_log = (tmp_path / "logs" / first / "both-gpu0.log").read_text()
    assert f"this worker moves to run {second} with the models it holds" in worker_log
    assert f"serving run {first}" in worker_log and f"serving run {second}" in worker_log


def test_a_worker_without_a_run_moves_to_a_run_of_its_models_and_exits_for_another(redis_server, chat_dataset, tmp_path):
    """The next run of the same models is served by the same process, the models kept; for another run's models the
    worker exits, and whatever restarts it (Docker, Kubernetes) starts it again for that run."""
    first = enqueue(redis_server.url, chat_dataset)
    command = [sys.executable, "-m", "rsample.producer", "worker", "both", "--redis-url", redis_server.url]
    log = tmp_path / "worker.log"
    worker = subprocess.Popen(command, cwd=REPO, stdout=log.open("w"), stderr=subprocess.STDOUT)
    STARTED.append(worker)
    rsample("aggregate", "--redis-url", redis_server.url, "--run", first, "--out", str(tmp_path / "first.jsonl"), "--no-progress", timeout=120)

    def enqueue_with(reward: str, *args: str) -> str:
        return rsample("enqueue", "--redis-url", redis_server.url, "--dataset", str(chat_dataset), *echo_with(reward), *args
                       ).stdout.strip().splitlines()[-1]

    second = enqueue_with("length-reward", "--n", "2")  # sampled otherwise, by the same models
    rsample("aggregate", "--redis-url", redis_server.url, "--run", second, "--out", str(tmp_path / "second.jsonl"), "--no-progress",
            timeout=120)
    assert assert_exactly_once(tmp_path / "second.jsonl", None, CHAT_ROWS) == {"pair": 7, "duplicate": 1}
    assert worker.poll() is None and f"run {first} is finished: this worker moves to run {second} with the models it holds" in log.read_text()
    assert log.read_text().count("loaded policy") == 1  # once, for both runs

    third = enqueue_with("another-reward", "--n", "2")
    out = tmp_path / "third.jsonl"
    aggregate = subprocess.Popen([sys.executable, "-m", "rsample.producer", "aggregate", "--redis-url", redis_server.url, "--run", third,
                                  "--out", str(out), "--no-progress"], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    STARTED.append(aggregate)
    assert worker.wait(timeout=60) == 0, log.read_text()
    assert f"run {second} is finished: this worker exits, to be started again for run {third} (another run's models)" in log.read_text()
    restarted = subprocess.Popen(command, cwd=REPO, stdout=(tmp_path / "restarted.log").open("w"), stderr=subprocess.STDOUT)
    STARTED.append(restarted)
    try:
        assert aggregate.wait(timeout=120) == 0, aggregate.stderr.read()
        assert assert_exactly_once(out, None, CHAT_ROWS) == {"pair": 7, "duplicate": 1}
        assert {tuple(json.loads(line)["chosen_score"]) for line in out.read_text().splitlines()} == {("another-reward",)}
        assert f"serving run {third}" in (tmp_path / "restarted.log").read_text()
    finally:
        restarted.terminate()
        restarted.wait(timeout=30)


def test_a_worker_without_a_run_started_before_any_waits_for_one(redis_server, chat_dataset, tmp_path):
    """As a container started with its Redis: it used to exit 2 ("no run yet"), a crash loop until a run came."""
    log = tmp_path / "worker.log"
    worker = subprocess.Popen([sys.executable, "-m", "rsample.producer", "worker", "both", "--redis-url", redis_server.url], cwd=REPO,
                              stdout=log.open("w"), stderr=subprocess.STDOUT)
    STARTED.append(worker)
    try:
        wait_for(lambda: "waiting for a run" in log.read_text(), 60, "the worker to wait for a run", interval=0.1)
        run_id = enqueue(redis_server.url, chat_dataset)
        out = tmp_path / "pairs.jsonl"
        rsample("aggregate", "--redis-url", redis_server.url, "--run", run_id, "--out", str(out), "--no-progress", timeout=120)
        assert assert_exactly_once(out, None, CHAT_ROWS) == {"pair": 7, "duplicate": 1}
    finally:
        worker.terminate()
        worker.wait(timeout=30)


def test_a_supervised_worker_keeps_watching_after_a_run_of_other_models_and_moves_to_one_of_its_own(redis_client, monkeypatch):
    """Its watcher saw a run of other models (it waits to be started again) and stopped watching: the runs then changed,
    the supervisor saw a run of the worker's models and kept it, and the worker served the finished run for good."""
    import time

    from rsample.producer.driver.run_lock import RunLock
    from rsample.workers.common import defaults
    from rsample.workers.common.config import DataSelection, RunConfig
    from rsample.workers.runtime import worker as worker_module
    from rsample.workers.runtime import worker_context
    from rsample.workers.runtime.keys import RunKeys
    from rsample.workers.runtime.run_state import save_run
    from rsample.workers.runtime.supervisor import RunFollower, StopSignals

    monkeypatch.setattr(defaults, "RUN_CHECK_SECONDS", 0.05)
    signals = []
    monkeypatch.setattr(worker_module.os, "kill", lambda pid, sig: signals.append(sig))

    def make(run_id, policy, created_at):
        config = RunConfig(run_id=run_id, data=DataSelection("d"), policy=policy, reward_models=("rm",), created_at=created_at)
        save_run(redis_client, config)
        return config

    first = make("A", "p", 1.0)
    make("B", "p", 2.0)  # the same models, not fed yet
    make("C", "q", 3.0)  # other models, fed
    lock = RunLock(redis_client, RunKeys("C").coordinator_lock, "C").acquire()
    redis_client.hset(RunKeys("A").stats, "finished_at", 1.0)
    context = worker_context.WorkerContext(client=redis_client, config=first)
    worker_module.follow_the_runs(redis_client, context, "generate", exit_for_other_models=False, allowed=lambda config: config)
    time.sleep(0.5)
    assert context.moving_to is None  # run C needs other models: the supervisor starts the worker again for it...
    lock.release()
    redis_client.hset(RunKeys("C").stats, "finished_at", 1.0)  # ...unless C ends first
    follower = RunFollower(redis_client, StopSignals())
    assert follower.mover("A").run_id == "B" and follower.same_models_for([WorkerSpec("generate", (0,))], first)("A", "B")
    wait_for(lambda: context.moving_to is not None, 5, "the worker to move to run B", interval=0.05)
    assert context.moving_to.run_id == "B" and not signals  # a move sends no signal: a later SIGTERM is a first, warm stop


def test_a_stop_wins_over_a_move_to_another_run(redis_client, monkeypatch):
    """A worker told to stop (SIGTERM, Ctrl-C, `docker stop`) while it waits to move, or before its watcher sees the
    move, exits: it neither moves on nor is forced out (a move is no signal, so the user's is a first, warm stop)."""
    import signal as signals

    from rq.exceptions import StopRequested
    from rq.serializers import JSONSerializer

    from rsample.workers.common.config import DataSelection, RunConfig
    from rsample.workers.runtime import worker as worker_module
    from rsample.workers.runtime import worker_context

    config = RunConfig(run_id="A", data=DataSelection("d"), policy="p", reward_models=("rm",))
    context = worker_context.WorkerContext(client=redis_client, config=config, moving_to=dataclasses.replace(config, run_id="B"))
    worker_context.install(context)
    try:
        main = worker_module.MainWorker(["q"], connection=redis_client, serializer=JSONSerializer, name="stop-wins")
        with pytest.raises(StopRequested):  # idle: RQ stops the loop at once
            main.request_stop(signals.SIGTERM, None)
        assert context.stopping and context.moving_to is None
    finally:
        worker_context.install(None)
        signals.signal(signals.SIGTERM, signals.SIG_DFL)
        signals.signal(signals.SIGINT, signals.default_int_handler)


def _run(run_id: str, created_at: float, **models):
    from rsample.workers.common.config import DataSelection, ModelSettings, RunConfig

    return RunConfig(run_id=run_id, data=DataSelection("d"), policy="p", reward_models=("rm",), models=ModelSettings(**models),
                     created_at=created_at)


def test_the_supervisor_and_its_workers_judge_a_move_by_the_same_models(redis_client, monkeypatch):
    """The workers loaded run A with --reward-batch-size 64; Redis lost A, whose coordinator registered it again from its
    output files (speed settings at their defaults). The supervisor compared Redis's copy of A with B (the same: it
    counted on its worker to move), the worker its own (other models: it waited to be started again): B was served by
    nobody, for ever. Both compare the settings the workers were started with now. And a forgotten run A (its settings
    gone) made the supervisor start its workers again, loading models they held, for a B of the same."""
    import dataclasses

    from rsample.workers.common.config import ModelSettings
    from rsample.workers.runtime import worker as worker_module
    from rsample.workers.runtime import worker_context
    from rsample.workers.runtime.keys import RunKeys
    from rsample.workers.runtime.run_state import save_run
    from rsample.workers.runtime.supervisor import RunFollower, StopSignals, WorkerSpec

    monkeypatch.setattr(defaults, "RUN_CHECK_SECONDS", 0.05)
    monkeypatch.setattr(worker_module.os, "kill", lambda pid, sig: None)
    specs = [WorkerSpec("both", (0,))]
    loaded = _run("A", 1.0, reward_micro_batch=64)
    save_run(redis_client, dataclasses.replace(loaded, models=ModelSettings()))  # as registered again from the files
    redis_client.hset(RunKeys("A").stats, "finished_at", 2.0)
    save_run(redis_client, _run("B", 3.0))
    context = worker_context.WorkerContext(client=redis_client, config=loaded)
    worker_module.follow_the_runs(redis_client, context, "both", exit_for_other_models=False, allowed=lambda config: config)
    follower = RunFollower(redis_client, StopSignals())
    assert follower.mover("A").run_id == "B"
    time.sleep(0.5)
    assert context.moving_to is None and not follower.same_models_for(specs, loaded)("A", "B")  # both: start it again

    held = _run("A", 1.0)
    redis_client.delete(RunKeys("A").config)  # `rsample forget --run A`
    assert follower.mover("A").run_id == "B" and follower.same_models_for(specs, held)("A", "B")  # kept: no reload


def test_a_run_forgotten_while_the_supervisor_moves_to_it_sends_it_to_the_run_to_serve(redis_client, monkeypatch):
    """The supervisor chose run X (other models) and stopped its workers (up to --stop-timeout); X was forgotten
    meanwhile (enqueued by mistake): `rsample workers` ended with "error: no run 'X' in this Redis"."""
    import threading

    from rsample.workers.runtime.run_state import save_run
    from rsample.workers.runtime.supervisor import RunFollower, StopSignals

    monkeypatch.setattr(defaults, "RUN_CHECK_SECONDS", 0.05)
    stops = StopSignals()
    save_run(redis_client, _run("B", 3.0))
    assert RunFollower(redis_client, stops).settings_of("X").run_id == "B"
    redis_client.flushdb()
    threading.Timer(0.5, lambda: setattr(stops, "count", 1)).start()
    assert RunFollower(redis_client, stops).settings_of("X") is None  # no run at all: it waits for one, until stopped


def test_a_run_whose_settings_this_version_cannot_read_is_said_in_one_line_and_stops_no_watch(redis_client, monkeypatch):
    """A run enqueued by another rsample version (a setting this one lacks): its TypeError killed the worker's watch,
    which never moved again, and the supervisor's."""
    import json

    from rsample.workers.runtime import worker as worker_module
    from rsample.workers.runtime import worker_context
    from rsample.workers.runtime.keys import RunKeys
    from rsample.workers.runtime.run_state import load_run, save_run

    monkeypatch.setattr(defaults, "RUN_CHECK_SECONDS", 0.05)
    first = _run("A", 1.0)
    save_run(redis_client, first)
    redis_client.hset(RunKeys("A").stats, "finished_at", 2.0)
    newer = json.loads(_run("N", 3.0).to_json())
    newer["a_newer_setting"] = 1
    save_run(redis_client, _run("N", 3.0))
    redis_client.set(RunKeys("N").config, json.dumps(newer))
    with pytest.raises(RsampleError, match=r"^run 'N' has settings this rsample version cannot read \(TypeError: .*a_newer_setting"):
        load_run(redis_client, "N")
    context = worker_context.WorkerContext(client=redis_client, config=first)
    thread = worker_module.follow_the_runs(redis_client, context, "both", exit_for_other_models=False, allowed=lambda config: config)
    time.sleep(0.3)
    redis_client.hset(RunKeys("N").stats, "finished_at", 4.0)  # the other version's run is done: B, of A's models, comes
    save_run(redis_client, _run("B", 5.0))
    wait_for(lambda: context.moving_to is not None, 5, "the worker to move to run B", interval=0.05)
    assert thread.is_alive() is False and context.moving_to.run_id == "B"


def test_a_forgotten_run_does_not_end_the_supervisor_that_follows_the_runs(redis_server, chat_dataset, tmp_path):
    """A run enqueued by mistake, taken out with `rsample forget` as the README says, after the supervisor started its
    worker for it: once the worker died, the supervisor started it again with `--run <forgotten>`, which exited at
    once, five times, and `rsample workers` gave up and exited 1 instead of waiting for the next run."""
    import os
    import re
    import signal

    log = tmp_path / "supervisor.log"
    supervisor = start_supervisor("--gpus", "0", "--role", "both", *FAST, "--log-dir", str(tmp_path / "logs"), log=log,
                                  redis_url=redis_server.url)
    try:
        wait_for(lambda: "waiting for a run" in log.read_text(), 30, "the supervisor to wait for a run", interval=0.1)
        run_id = enqueue(redis_server.url, chat_dataset)
        worker_log = tmp_path / "logs" / run_id / "both-gpu0.log"
        wait_for(lambda: worker_log.exists() and f"serving run {run_id}" in worker_log.read_text(), 60, "the worker to serve the run")
        rsample("forget", "--redis-url", redis_server.url, "--run", run_id)
        os.kill(int(re.findall(r"pid (\d+)", log.read_text())[-1]), signal.SIGKILL)  # the worker dies, for any reason
        wait_for(lambda: "it starts again once there is a run to serve" in log.read_text(), 30, "the supervisor to wait")
        time.sleep(3 * defaults.RUN_CHECK_SECONDS)
        assert supervisor.poll() is None and "giving up" not in log.read_text(), log.read_text()
        second = rsample("enqueue", "--redis-url", redis_server.url, "--dataset", str(chat_dataset),
                         *echo_with("other-reward")).stdout.strip().splitlines()[-1]
        second_log = tmp_path / "logs" / second / "both-gpu0.log"
        wait_for(lambda: second_log.exists() and f"serving run {second}" in second_log.read_text(), 60, "a worker to serve the next run")
    finally:
        supervisor.send_signal(signal.SIGTERM)
        supervisor.wait(timeout=60)


def test_a_worker_that_dies_while_redis_is_away_is_started_again_once_it_is_back(chat_dataset, tmp_path):
    """A worker restarted during a Redis outage exits at once (it cannot load its run): those exits counted as its
    failures, and `rsample workers` gave up every worker and exited 17 s into the outage, serving nothing once Redis
    was back. It waits for Redis instead, and the run completes."""
    with EmbeddedRedis(data_dir=tmp_path / "redis", appendonly=True) as server:
        run_id = enqueue(server.url, chat_dataset)
        log = tmp_path / "supervisor.log"
        supervisor = start_supervisor("--run", run_id, "--gpus", "0", "--role", "both", *FAST, "--give-up-after", "2",
                                      "--log-dir", str(tmp_path / "logs"), log=log, redis_url=server.url)
        try:
            first = wait_for(lambda: pinned_workers(supervisor.pid, 1), 30, "the worker")
            server.stop()
            os.kill(first["0"], signal.SIGKILL)
            wait_for(lambda: "cannot reach Redis (ConnectionError): workers that exit start again" in log.read_text(), 30,
                     "the supervisor to wait for Redis", interval=0.1)
            time.sleep(2 * defaults.RUN_CHECK_SECONDS)  # two failures in a row gave it up, well within this
            assert supervisor.poll() is None and "giving up" not in log.read_text(), log.read_text()
            assert pinned_workers(supervisor.pid, 1) is None  # none started while Redis is away
            server.start()
            wait_for(lambda: pinned_workers(supervisor.pid, 1), 60, "the worker to start again once Redis is back")
            out, scores = tmp_path / "pairs.jsonl", tmp_path / "scores.jsonl"
            rsample("aggregate", "--redis-url", server.url, "--run", run_id, "--out", str(out), "--scores-out", str(scores),
                    "--no-progress", timeout=180)
            assert assert_exactly_once(out, scores, CHAT_ROWS) == {"pair": 7, "duplicate": 1}
            supervisor.send_signal(signal.SIGTERM)
            assert supervisor.wait(timeout=30) == 0, log.read_text()
        finally:
            kill_leftovers(run_id)
    assert f"run {run_id} can be served again: starting its workers" in log.read_text()


def test_a_supervisor_pinned_to_a_run_gone_from_redis_waits_for_it_then_exits(tmp_path, monkeypatch, capsys):
    """`rsample workers --run X` whose run left Redis: a Redis restarted empty has it again once a coordinator makes it
    anew, so its workers wait rather than count failures; a forgotten run never comes back, and the supervisor sat
    there with no worker for ever. It waits `PINNED_RUN_GONE_SECONDS`, then exits 1."""
    from rsample.workers.runtime.supervisor import StopSignals, Supervisor, Unservable, WorkerSpec

    class NoSignals(StopSignals):  # the test process keeps its own handlers
        def install(self):
            return self

    monkeypatch.setattr(defaults, "PINNED_RUN_GONE_SECONDS", 1.5)
    monkeypatch.setattr(defaults, "RUN_CHECK_SECONDS", 0.1)
    supervisor = Supervisor([WorkerSpec("generate", (0,))], "redis://unused", "gone", tmp_path, restart_backoff=0.05,
                            give_up_after=2, stops=NoSignals(), blocked=lambda run: Unservable(f"run {run} is gone", run_gone=True))
    monkeypatch.setattr(supervisor, "command", lambda spec: [sys.executable, "-c", "raise SystemExit(2)"])  # as a worker of no run
    started = time.monotonic()
    assert supervisor.run() == 1
    output = capsys.readouterr().out
    assert time.monotonic() - started >= 1.5 and supervisor.children[0].starts == 1  # not started again while it is gone
    assert "run gone is gone: workers that exit start again once there is a run to serve" in output and "giving up" not in output
    assert output.rstrip().endswith("run gone has been gone from Redis for 1.5 s (forgotten?), and these workers serve it alone "
                                    "(--run): exiting")


def test_a_supervisor_pinned_to_a_forgotten_run_exits_while_its_workers_live(tmp_path, monkeypatch, capsys):
    """As above, where the workers live on (idle, serving the forgotten run for ever): the run was looked at only when a
    worker exited, so the supervisor never did, as the README says it does."""
    import threading

    from rsample.workers.runtime.supervisor import StopSignals, Supervisor, Unservable, WorkerSpec

    class NoSignals(StopSignals):
        def install(self):
            return self

    monkeypatch.setattr(defaults, "PINNED_RUN_GONE_SECONDS", 1.5)
    monkeypatch.setattr(defaults, "RUN_CHECK_SECONDS", 0.1)
    stops = NoSignals()
    supervisor = Supervisor([WorkerSpec("generate", (0,))], "redis://unused", "gone", tmp_path, stops=stops,
                            blocked=lambda run: Unservable(f"run {run} is gone", run_gone=True))
    monkeypatch.setattr(supervisor, "command", lambda spec: [sys.executable, "-c", "import time; time.sleep(120)"])  # alive, idle
    ended = {}
    thread = threading.Thread(target=lambda: ended.setdefault("code", supervisor.run()), daemon=True)
    thread.start()
    thread.join(20)
    if thread.is_alive():  # the old supervisor: stopped as a Ctrl-C would
        stops.count = 2
        thread.join(30)
    assert ended == {"code": 1}, capsys.readouterr().out
    assert "has been gone from Redis for 1.5 s (forgotten?), and these workers serve it alone (--run): exiting" in capsys.readouterr().out
    assert supervisor.children[0].process.poll() is not None  # its worker stopped with it


def test_a_supervisor_pinned_to_a_run_started_while_redis_restarts_waits_for_it(tmp_path, capsys):
    """Its settings were read with no retry: a Redis restarting then ended it with a ConnectionError's traceback."""
    import threading

    import redis

    from rsample.workers.runtime.supervisor import StopSignals, pinned_settings

    dataset = tmp_path / "rows.jsonl"
    dataset.write_text("".join(json.dumps(row) + "\n" for row in CHAT_ROWS))
    server = EmbeddedRedis(data_dir=tmp_path / "redis").start()
    try:
        run_id = rsample("enqueue", "--redis-url", server.url, "--dataset", str(dataset), "--policy", "p", "--reward-model", "r",
                         "--backend", "echo", "--reward-backend", "length").stdout.strip().splitlines()[-1]
        client = redis.Redis.from_url(server.url, socket_connect_timeout=1)
        client.save()
        server.stop()
        found = []
        waiting = threading.Thread(target=lambda: found.append(pinned_settings(client, run_id, StopSignals())))
        waiting.start()
        time.sleep(3)
        assert not found  # still waiting
        server.start()  # from this thread: the server dies with the thread that started it
        waiting.join(timeout=30)
        assert found and found[0] is not None and found[0].run_id == run_id
        assert "cannot reach Redis" in capsys.readouterr().out
    finally:
        server.close()
