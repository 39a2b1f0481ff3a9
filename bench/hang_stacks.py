"""Every thread's stack of every Python process a benchmark starts, written to that process's own stderr (its log),
after a delay and then at an interval: the diagnosis of a step that hangs on a machine one cannot log into.

    with dump_stacks_of_children(after=60, every=60):
        subprocess.run(...)        # children (and their children) started here inherit the hook

faulthandler in the benchmark's own process sees only its threads; vLLM's engine core runs in a process of its
own, where the hang may be. The hook is `stack_dumps/sitecustomize.py`, which each child loads at start-up.
"""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

HOOK_FOLDER = Path(__file__).resolve().parent / "stack_dumps"
PIDS_ENV = "RSAMPLE_STACKS_PIDS"


def registered_live_pids(folder: Path) -> list[int]:
    """Processes that loaded the hook and still run it: a pid the system gave to another program since is skipped
    (its environment lacks this folder), since SIGUSR1 would end a process that has no handler for it."""
    marker = f"{PIDS_ENV}={folder}".encode()
    live = []
    for entry in folder.iterdir():
        try:
            if marker in Path(f"/proc/{entry.name}/environ").read_bytes().split(b"\0"):
                live.append(int(entry.name))
        except (OSError, ValueError):
            continue
    return sorted(live)


def signal_all(folder: Path, pause: float = 0.2) -> list[int]:
    """One process at a time: processes that share a log (vLLM's engine core writes to its frontend's) would
    otherwise interleave their stacks line by line."""
    signalled = []
    for pid in registered_live_pids(folder):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGUSR1)
            signalled.append(pid)
            time.sleep(pause)
    return signalled


@contextlib.contextmanager
def dump_stacks_of_children(after: float, every: float = 60.0) -> Iterator[Path]:
    """Within the block, child processes load the hook; `after` seconds in, and every `every` seconds after,
    each live one writes its stacks. Yields the folder of their pids."""
    with tempfile.TemporaryDirectory(prefix="rsample-stacks-") as name:
        folder = Path(name)
        saved = {key: os.environ.get(key) for key in ("PYTHONPATH", PIDS_ENV)}
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HOOK_FOLDER), saved["PYTHONPATH"]]))
        os.environ[PIDS_ENV] = str(folder)
        stop = threading.Event()

        def watch() -> None:
            delay = after
            while not stop.wait(delay):
                pids = signal_all(folder)
                print(f"[hang_stacks] asked {len(pids)} process(es) for their stacks: {pids}", flush=True)
                delay = every

        watcher = threading.Thread(target=watch, name="hang-stacks", daemon=True)
        watcher.start()
        try:
            yield folder
        finally:
            stop.set()
            watcher.join()
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
