"""`verify:math`'s equality check, in a child process of its own.

math-verify (sympy) can run for ever on a pathological answer (`10^{10^{10}}`, a continued fraction 20 deep), inside C
code that neither a signal nor RQ's job timer interrupts, and its own SIGALRM timeouts would cancel RQ's job timer on
a worker's main thread. The child runs those timeouts on its own main thread; a check it does not answer in time is
killed with the child, which the next check starts again.
"""

from __future__ import annotations

import json
import logging
import os
import select
import subprocess
import sys
import threading
import weakref

from rsample.workers.backends.answers import last_boxed
from rsample.workers.common import defaults

log = logging.getLogger(__name__)


def _latex(gold: str) -> str:
    """A bare answer (`2\\sqrt{2}`, `\\frac{9}{7}`, `42`) goes in `$...$`, where math-verify reads LaTeX whole; raw, it reads
    only a leading number (`2`) or nothing."""
    delimited = "$" in gold or "\\boxed" in gold or gold.startswith(("\\(", "\\["))
    return gold if delimited else f"${gold}$"


def _answer(completion: str) -> str:
    """The completion's last `\\boxed{}`, as the README promises: math-verify would read every boxed value of a
    completion that corrected itself as one set. Without one, the whole completion (its last number or expression)."""
    boxed = last_boxed(completion)
    return completion if boxed is None else f"$\\boxed{{{boxed}}}$"


def serve(seconds: int) -> None:
    """The child: one JSON request a line on stdin, one JSON answer a line on the original stdout (anything the libraries
    print goes to stderr); the parent's end closing its stdin ends it."""
    answers = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    from math_verify import parse, verify

    golds: dict[str, list] = {}

    def gold_of(text: str) -> list:
        if text not in golds:
            if len(golds) > 1024:
                golds.clear()
            golds[text] = parse(_latex(text), parsing_timeout=seconds) or parse(text, parsing_timeout=seconds)
        return golds[text]

    answers.write("true\n")  # ready
    for line in sys.stdin:
        request = json.loads(line)
        gold = gold_of(request["gold"])
        if "completion" not in request:
            answer = bool(gold)
        else:
            target = parse(_answer(request["completion"]), parsing_timeout=seconds)
            answer = bool(gold) and bool(target) and bool(verify(gold, target, timeout_seconds=seconds))
        answers.write(json.dumps(answer) + "\n")


def _kill(process: subprocess.Popen) -> None:
    process.kill()
    process.wait()
    for stream in (process.stdin, process.stdout):
        stream.close()


class MathChecker:
    """One child per verifier, its checks one at a time (a worker's slots share it: a check costs milliseconds)."""

    def __init__(self, seconds: int = defaults.MATH_CHECK_SECONDS):
        self.seconds = seconds
        """math-verify's own limit for a parse or a comparison; the child is killed past three times it."""
        self._lock = threading.Lock()
        self._process: subprocess.Popen | None = None

    def equal(self, gold: str, completion: str) -> bool:
        """Whether the completion's final answer equals the ground truth; False for one that takes too long to check."""
        return self._ask({"gold": gold, "completion": completion}, f"the answer {completion[-200:]!r}")

    def reads(self, gold: str) -> bool:
        """Whether math-verify reads an answer in the ground truth at all."""
        return self._ask({"gold": gold}, f"the ground truth {gold[:200]!r}")

    def _ask(self, request: dict, what: str) -> bool:
        with self._lock:
            if self._process is None or self._process.poll() is not None:
                self._start()
            limit = 3 * self.seconds + 1
            try:
                self._process.stdin.write(json.dumps(request) + "\n")
                self._process.stdin.flush()
                answer = self._answer(limit)
            except (OSError, ValueError):  # the child died: a broken pipe, or its last answer cut short
                answer = None
            if answer is None:
                log.warning("verify:math: no decision on %s within %d s: scored as not verified", what, limit)
                self._stop()
                return False
            return answer

    def _answer(self, seconds: float) -> bool | None:
        readable, _, _ = select.select([self._process.stdout], [], [], seconds)
        line = self._process.stdout.readline() if readable else ""
        return json.loads(line) if line else None

    def _start(self) -> None:
        self._process = subprocess.Popen(self._command(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        self._stopping = weakref.finalize(self, _kill, self._process)  # a checker dropped unclosed ends its child
        if self._answer(defaults.MATH_CHECK_START_SECONDS) is not True:
            self._stop()
            raise RuntimeError(f"verify:math: math-verify did not start within {defaults.MATH_CHECK_START_SECONDS} s")

    def _command(self) -> list[str]:
        return [sys.executable, "-m", __name__, str(self.seconds)]

    def _stop(self) -> None:
        if self._process is not None:
            self._stopping()
        self._process = None

    def close(self) -> None:
        with self._lock:
            self._stop()


if __name__ == "__main__":
    serve(int(sys.argv[1]))
