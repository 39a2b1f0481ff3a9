"""Child processes that end with their parent, and the last words of one that died.

Used by `rsample run` (its workers), `rsample workers` (the supervised workers) and the embedded Redis.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from pathlib import Path

RSAMPLE_COMMAND = (sys.executable, "-m", "rsample.producer")
"""The `rsample` command as a child process runs it: this interpreter, whether or not the console script is on PATH."""


def _libc():
    try:
        import ctypes

        return ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:  # not Linux: children may outlive a killed parent
        return None


LIBC = _libc()
"""Loaded here, in the parent: a forked child of a process with threads (a worker's slots) must not dlopen before its
exec, where another thread may have held the loader's lock at the fork."""


def _on_parent_death(signum: int) -> None:
    if LIBC is not None:
        LIBC.prctl(1, signum)  # PR_SET_PDEATHSIG


def die_with_parent() -> None:
    """Runs in a child before exec: the kernel sends it SIGTERM when its parent dies, even by SIGKILL (Linux)."""
    _on_parent_death(signal.SIGTERM)


def killed_with_parent() -> None:
    """Like `die_with_parent`, but SIGKILL: for children whose warm shutdown needs what the parent took with it
    (`rsample run`'s workers lose their embedded Redis too; waiting for it would keep them alive forever)."""
    _on_parent_death(signal.SIGKILL)


def descendant_pids(pid: int) -> list[int]:
    """The processes `pid` started, and theirs, still running (Linux; elsewhere none are found). Read before `pid`
    dies: its orphans then belong to init."""
    found: list[int] = []
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            found += [int(child) for child in children.read_text().split()]
        except (OSError, ValueError):  # a thread or process that ended meanwhile
            continue
    return [descendant for child in dict.fromkeys(found) for descendant in (child, *descendant_pids(child))]


def signal_pids(pids: list[int], signum: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, signum)
        except (ProcessLookupError, PermissionError):
            pass


SELF_CLEANING = ("multiprocessing.resource_tracker",)
"""Helpers that outlive their process on purpose: Python's resource tracker unlinks the shared memory a killed process
left (vLLM's engine uses some) once that process is gone, then exits."""


def descendants_to_stop(pid: int) -> list[int]:
    """What `pid` started, and theirs, the self-cleaning helpers aside."""
    return [child for child in descendant_pids(pid) if not any(helper in _cmdline(child) for helper in SELF_CLEANING)]


def kill_with_descendants(process) -> None:
    """SIGKILL for a child process and whatever it started (the self-cleaning helpers aside): a killed vLLM worker's
    engine process would otherwise live on, holding most of the GPU's memory."""
    descendants = descendants_to_stop(process.pid)
    process.kill()
    signal_pids(descendants, signal.SIGKILL)


class Lineage:
    """What a child process started, as last seen while it lived. A worker that dies at once (an OOM kill, a crash)
    leaves its vLLM engine process running, with most of the GPU's memory: the next worker on that GPU could not
    start. Once the child is gone, `stop_orphans` ends what it left (the self-cleaning helpers aside)."""

    def __init__(self, process, every: float = 1.0):
        self.process = process
        self.every = every
        self._seen: dict[int, tuple[str, str]] = {}
        self._looked_at = float("-inf")

    def look(self) -> None:
        """Notes the child's processes, once a second at most (a worker's engine lives for as long as the worker)."""
        if self.process.poll() is None and time.monotonic() - self._looked_at >= self.every:
            self._looked_at = time.monotonic()
            self._seen = {pid: identity for pid in descendants_to_stop(self.process.pid) if (identity := _identity(pid))}

    def stop_orphans(self) -> list[str]:
        """SIGKILL for what the dead child left that still runs, as it was seen (a number the kernel gave to another
        process since is left alone); returns their command lines."""
        if self.process.poll() is None:
            return []
        left = {pid: command for pid, (started, command) in self._seen.items() if _started(pid) == started}
        signal_pids(list(left), signal.SIGKILL)
        self._seen = {}
        return list(left.values())


def _identity(pid: int) -> tuple[str, str] | None:
    """(start time, command line): the start time tells a process from another given its number since (the command
    line may change: vLLM renames its engine process as it starts); the command line is for saying what was stopped."""
    started = _started(pid)
    return None if started is None else (started, _cmdline(pid))


def _started(pid: int) -> str | None:
    try:  # bytes: a process's name (in parentheses, cut at 15 bytes) may hold half a UTF-8 character
        return Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[19].decode()
    except (OSError, IndexError, ValueError):
        return None


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def last_words(log_path: Path) -> str:
    lines = [line.strip() for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    return (errors or lines or ["(no output)"])[-1]


def describe_exit(code: int) -> str:
    """How a child process ended, from its return code (negative: the signal that killed it)."""
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def holder_here(holder: str) -> int | None:
    """The pid of the coordinator whose token (`host:pid:uuid`) `holder` is, when it is another process of this host,
    whose liveness its pid tells; None for one elsewhere, or with our own pid (another PID namespace of this hostname:
    a container restarted, or one beside ours), which only its lock tells."""
    host, _, rest = holder.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit() or int(pid) == os.getpid():
        return None
    return int(pid)


def holder_may_live(holder: str) -> bool:
    """Whether the coordinator whose token `holder` is may be alive: one on this host whose process is gone is not; any
    other may be, until its lock expires."""
    pid = holder_here(holder)
    return pid is None or _pid_alive(pid)
