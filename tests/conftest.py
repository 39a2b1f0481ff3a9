"""Fixtures: a real Redis server per test on a free port, tiny offline models, small chat datasets."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"  # no Hub here: a missing model must fail at once, not after retries
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.pop("RSAMPLE_RENDER_PROCESSES", None)  # the reward backend renders in the worker unless a test says otherwise
# models with their own code are copied into transformers' modules cache under a folder named after theirs: two xdist
# workers' copies of the same test folder would write the same files while the other imports them
os.environ["HF_MODULES_CACHE"] = tempfile.mkdtemp(prefix="rsample-tests-hf-modules-")
atexit.register(shutil.rmtree, os.environ["HF_MODULES_CACHE"], ignore_errors=True)
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:  # started as a script's background job (`(... &)`): every process the
    signal.signal(signal.SIGINT, signal.default_int_handler)  # tests start would ignore Ctrl-C too, and its tests fail

import pytest  # noqa: E402
import redis  # noqa: E402

from rsample.workers.runtime.embedded_redis import EmbeddedRedis  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

PR_SET_CHILD_SUBREAPER = 36


def _children_by_parent() -> dict[int, list[tuple[int, str]]]:
    """Live processes by parent pid, each with its state letter (Z: a zombie, already dead)."""
    children: dict[int, list[tuple[int, str]]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:  # bytes: a process's name may hold half a UTF-8 character (cut at 15 bytes)
                after_name = (entry / "stat").read_bytes().rsplit(b")", 1)[1].decode().split()
            except (OSError, IndexError):
                continue
            children.setdefault(int(after_name[1]), []).append((int(entry.name), after_name[0]))
    return children


INTERPRETER_HELPERS = ("multiprocessing.resource_tracker",)
"""Helpers Python starts for itself, which end with this process: not left behind by a test."""


def _live_descendants(pid: int, reap: bool = True) -> list[int]:
    """Descendants that still run; zombies (reparented orphans that exited) are reaped on the way, unless `reap` is
    false (a test that will wait on a child itself: reaped here, its exit status would be lost)."""
    tree, found, todo = _children_by_parent(), [], [pid]
    while todo:
        for child, state in tree.get(todo.pop(), []):
            if state == "Z":
                try:
                    if reap:
                        os.waitpid(child, os.WNOHANG)
                except ChildProcessError:
                    pass
            else:
                found.append(child)
                todo.append(child)
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"


@pytest.fixture(scope="session", autouse=True)
def no_process_left_behind():
    """The suite leaves no process behind. This process becomes the subreaper of everything the tests start, so an
    orphan (a worker whose parent was killed, a server nobody stopped) is reparented here instead of vanishing
    under init, and is found, killed and reported when the session ends."""
    import ctypes

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1)
    yield

    def left_behind() -> list[int]:
        return [pid for pid in _live_descendants(os.getpid()) if not any(helper in _cmdline(pid) for helper in INTERPRETER_HELPERS)]

    deadline = time.monotonic() + 15  # processes that are being stopped get a moment to finish
    while (left := left_behind()) and time.monotonic() < deadline:
        time.sleep(0.2)
    if left:
        described = [f"{pid}: {_cmdline(pid)}" for pid in left]
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        _live_descendants(os.getpid())
        pytest.fail("the test session left processes running:\n" + "\n".join(described), pytrace=False)


@pytest.fixture(autouse=True)
def reap_processes():
    """Workers wait for their Redis forever by design: a failed test must not leave them behind."""
    yield
    from faults import STARTED

    while STARTED:
        process = STARTED.pop()
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.fixture(autouse=True)
def own_datasets_cache(tmp_path):
    """`datasets` caches a local folder whose card declares `configs` by the folder's name alone: two tests' folders
    named `repo` would read each other's rows. Each test, and every process it starts, has a cache of its own. A
    patch of its own, not the test's `monkeypatch`: an autouse fixture would set that up first, so that it is undone
    last, after `redis_server` stops its server with a patched `os.kill` that a test left (the suite hung)."""
    cache = tmp_path / "hf-datasets-cache"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_DATASETS_CACHE", str(cache))
        if "datasets" in sys.modules:  # imported by an earlier test: it read the variable then
            patch.setattr(sys.modules["datasets"].config, "HF_DATASETS_CACHE", cache)
        yield


@pytest.fixture
def redis_server(tmp_path):
    server = EmbeddedRedis(data_dir=tmp_path / "redis").start()
    yield server
    server.close()


@pytest.fixture
def redis_client(redis_server):
    client = redis.Redis.from_url(redis_server.url)
    yield client
    client.close()


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """A policy, two reward models with their own vocabularies and templates, and a reward model with a short context."""
    from rsample.workers.backends.tiny_models import build_policy, build_reward_model

    root = tmp_path_factory.mktemp("models")
    return {
        "policy": str(build_policy(root / "policy")),
        "reward": str(build_reward_model(root / "reward", seed=1, pad="none")),  # no pad token, as Llama 3's tokenizer
        "reward2": str(build_reward_model(root / "reward2", seed=2, pad="eos")),  # pad = EOS, which ends every turn
    }


CHAT_ROWS = [
    {"messages": [{"role": "user", "content": "write a poem about the river"}, {"role": "assistant", "content": "the river runs"}]},
    {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "explain why the sky is blue"}]},
    {"messages": [{"role": "user", "content": "name a city"}, {"role": "assistant", "content": "a city"}, {"role": "user", "content": "another one"}, {"role": "assistant", "content": "river city"}]},
    {"prompt": "list three numbers"},
    {"prompt": "list three numbers"},
    {"prompt": "tell a story about music"},
    {"prompt": "what is a good test"},
    {"prompt": "write code in python"},
]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


@pytest.fixture
def chat_dataset(tmp_path):
    return write_jsonl(tmp_path / "chat.jsonl", CHAT_ROWS)


def rsample(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    """Runs the real CLI in a child process, as a user would."""
    result = subprocess.run(
        [sys.executable, "-m", "rsample.producer", *args], capture_output=True, text=True, timeout=timeout, cwd=REPO
    )
    if check and result.returncode != 0:
        raise AssertionError(f"rsample {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def read_jsonl(path: Path) -> list[dict]:
    """JSONL as its readers see it: lines end at "\\n" alone (a completion may hold \\x85 or \\u2028, which splitlines() splits on)."""
    return [json.loads(line) for line in Path(path).read_text().split("\n") if line]
