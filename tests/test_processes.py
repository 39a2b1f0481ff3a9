"""Stopping a child stops what it started: a vLLM worker's engine process outlived its killed worker and held the
GPU's memory (seen on an H200, 2026-11-28)."""

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

from conftest import _cmdline, _live_descendants

from rsample.workers.runtime.processes import descendant_pids, kill_with_descendants

PARENT = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); time.sleep(120)"])
time.sleep(120)
"""


@contextlib.contextmanager
def ended(*processes: subprocess.Popen):
    """Whatever the test's outcome, its processes do not outlive it."""
    try:
        yield
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()


def running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return False


def test_killing_a_child_kills_its_children_and_theirs():
    parent = subprocess.Popen([sys.executable, "-c", PARENT])
    with ended(parent):
        deadline = time.monotonic() + 60
        while len(_live_descendants(parent.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        tree = _live_descendants(parent.pid)  # read from every process's /proc/PID/stat, not from the tasks' children lists
        assert len(tree) == 2
        assert sorted(descendant_pids(parent.pid)) == sorted(tree)
        kill_with_descendants(parent)
        assert parent.wait(timeout=10) == -9
        deadline = time.monotonic() + 10
        while any(running(pid) for pid in tree) and time.monotonic() < deadline:
            _live_descendants(parent.pid)
            time.sleep(0.1)
        assert not [pid for pid in tree if running(pid)]


SHARED_MEMORY = """
import sys, time
from multiprocessing import shared_memory
segment = shared_memory.SharedMemory(create=True, size=4096)  # starts Python's resource tracker, a child of this process
print(segment.name, flush=True)
time.sleep(120)
"""


def test_a_killed_childs_shared_memory_is_still_cleaned_up():
    """Python's resource tracker unlinks what a killed process left in /dev/shm (vLLM's engine leaves some): killing the
    tracker with the process left the segments there for good."""
    parent = subprocess.Popen([sys.executable, "-c", SHARED_MEMORY], stdout=subprocess.PIPE, text=True)
    with ended(parent):
        segment = Path("/dev/shm") / parent.stdout.readline().strip().lstrip("/")
        assert segment.exists()
        deadline = time.monotonic() + 30  # the tracker's own command line: forked, not yet exec'd, it is the parent's
        while not any("resource_tracker" in _cmdline(pid) for pid in descendant_pids(parent.pid)) and time.monotonic() < deadline:
            time.sleep(0.1)
        kill_with_descendants(parent)
        parent.wait(timeout=10)
        deadline = time.monotonic() + 30
        while segment.exists() and time.monotonic() < deadline:
            _live_descendants(parent.pid)
            time.sleep(0.2)
        assert not segment.exists()


CLOSING = """
import os, signal, subprocess, sys, time
from rsample.workers.runtime.worker import stop_signals_exit_now
engine = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])  # stands for vLLM's engine process
print(engine.pid, flush=True)
with stop_signals_exit_now():  # as a worker shuts its models down
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(30)
print("the stop signal was lost", flush=True)
"""


def test_a_stop_signal_while_the_models_shut_down_ends_the_worker_and_its_engine():
    """RQ's handler raised StopRequested in the middle of closing the models, leaving vLLM's engine running (and the
    worker hanging at exit): now the worker exits at once, and tells its engine process to stop."""
    worker = subprocess.Popen([sys.executable, "-c", CLOSING], stdout=subprocess.PIPE, text=True)
    with ended(worker):
        engine = int(worker.stdout.readline())
        assert worker.wait(timeout=20) == 128 + 15
        assert "lost" not in worker.stdout.read()
        deadline = time.monotonic() + 10
        while running(engine) and time.monotonic() < deadline:
            _live_descendants(worker.pid)
            time.sleep(0.1)
        assert not running(engine)


def test_what_a_dead_child_left_running_is_stopped_and_a_pid_taken_since_is_left_alone():
    """A worker killed at once (an OOM kill) left its vLLM engine running with the GPU's memory: the next worker on that
    GPU could not start."""
    from rsample.workers.runtime.processes import Lineage

    parent = subprocess.Popen([sys.executable, "-c", PARENT])
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    with ended(parent, bystander):
        lineage = Lineage(parent, every=0)
        deadline = time.monotonic() + 60
        while len(_live_descendants(parent.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        tree = _live_descendants(parent.pid)
        lineage.look()
        assert lineage.stop_orphans() == []  # nothing is an orphan while its parent lives
        lineage._seen[bystander.pid] = ("0", "a process that started at another time under this number")
        parent.kill()  # the parent alone, as the kernel's OOM killer does
        parent.wait(timeout=10)
        left = lineage.stop_orphans()
        assert len(left) == 2 and all("time.sleep(120)" in command for command in left)
        deadline = time.monotonic() + 10
        while any(running(pid) for pid in tree) and time.monotonic() < deadline:
            _live_descendants(os.getpid())
            time.sleep(0.1)
        assert not [pid for pid in tree if running(pid)] and bystander.poll() is None


def test_the_supervisor_stops_what_a_worker_that_died_at_once_left_running(tmp_path, capsys):
    from rsample.workers.runtime.processes import Lineage
    from rsample.workers.runtime.supervisor import Supervisor, WorkerSpec

    supervisor = Supervisor([WorkerSpec("generate", (0,))], "redis://unused", "run", tmp_path, give_up_after=1)
    child = supervisor.children[0]
    child.log_path.parent.mkdir(parents=True)
    child.log_path.write_text("loading the policy\n")
    child.process = subprocess.Popen([sys.executable, "-c", PARENT])
    child.lineage, child.started_at = Lineage(child.process, every=0), time.monotonic()
    with ended(child.process):
        deadline = time.monotonic() + 60
        while len(_live_descendants(child.process.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        tree = _live_descendants(child.process.pid)
        supervisor._poll()  # alive: its processes noted
        child.process.kill()
        child.process.wait(timeout=10)
        supervisor._poll()  # dead: reaped, and what it left stopped (given up after one quick failure: not started again)
        assert child.process is None and child.given_up
        said = capsys.readouterr().out
        assert "stopped what it left running: " in said and said.count(sys.executable) == 2  # the child and the grandchild
        deadline = time.monotonic() + 10
        while any(running(pid) for pid in tree) and time.monotonic() < deadline:
            _live_descendants(os.getpid())
            time.sleep(0.1)
        assert not [pid for pid in tree if running(pid)]


RENAMED = """
import os, subprocess, sys, time
subprocess.Popen([sys.executable, "-c", "import os, time; time.sleep(1.5); os.execvp('sleep', ['sleep', '120'])"])
time.sleep(120)
"""


def test_an_orphan_that_renamed_itself_since_it_was_seen_is_stopped_too():
    """vLLM renames its engine process as it starts: a worker that died just after was seen with the engine under its
    first command line."""
    from rsample.workers.runtime.processes import Lineage

    parent = subprocess.Popen([sys.executable, "-c", RENAMED])
    with ended(parent):
        lineage = Lineage(parent, every=0)
        deadline = time.monotonic() + 30
        while not _live_descendants(parent.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        lineage.look()
        [child] = _live_descendants(parent.pid)
        deadline = time.monotonic() + 30
        while b"sleep\0" not in Path(f"/proc/{child}/cmdline").read_bytes() and time.monotonic() < deadline:
            time.sleep(0.1)
        parent.kill()
        parent.wait(timeout=10)
        assert len(lineage.stop_orphans()) == 1
        deadline = time.monotonic() + 10
        while running(child) and time.monotonic() < deadline:
            _live_descendants(os.getpid())
            time.sleep(0.1)
        assert not running(child)


def test_a_workers_log_relays_rsamples_own_warnings_once_each_and_a_cut_line_when_it_is_whole(tmp_path):
    from rsample.workers.runtime.log_relay import MOST_RELAYED, LogRelay

    log_path = tmp_path / "both-0.log"
    relay = LogRelay(log_path)
    assert relay.new_warnings() == []  # no log yet
    with log_path.open("w") as log_file:
        log_file.write("2026-11-28 10:00:00,001 INFO rsample.workers.runtime.worker: loading\n"
                       "2026-11-28 10:00:01,002 WARNING transformers.modeling_utils: a library's own\n"
                       "2026-11-28 10:00:02,003 WARNING rsample.workers.backends.judge: noise ahead\n"
                       "Traceback (most recent call last):\n"
                       "2026-11-28 10:00:03,004 ERROR rsample.workers.runtime.worker: half a li")
        log_file.flush()
        assert relay.new_warnings() == ["noise ahead"]
        log_file.write("ne\n2026-11-28 10:00:04,005 WARNING rsample.workers.backends.judge: noise ahead\n")
        log_file.flush()
        assert relay.new_warnings() == ["half a line"]  # the same warning again: said once
        log_file.write("".join(f"2026-11-28 10:00:05,000 WARNING rsample.x: warning {i}\n" for i in range(30)))
    relayed = relay.new_warnings()
    assert relayed == [*(f"warning {i}" for i in range(MOST_RELAYED - 2)), f"more warnings only in its log, {log_path}"]
