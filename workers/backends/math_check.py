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
import re
import select
import signal
import subprocess
import sys
import threading
import time
import weakref

from rsample.workers.backends.answers import final_answer, final_ratio, joined_digit_groups, last_boxed, numeric_literal, ratio
from rsample.workers.common import defaults
from rsample.workers.runtime.processes import killed_with_parent

log = logging.getLogger(__name__)


def _latex(gold: str) -> str:
    """A bare answer (`2\\sqrt{2}`, `\\frac{9}{7}`, `42`) goes in `$...$`, where math-verify reads LaTeX whole; raw, it reads
    only a leading number (`2`) or nothing."""
    delimited = re.search(r"(?<!\\)\$", gold) is not None or "\\boxed" in gold or gold.startswith(("\\(", "\\["))  # `\\$18.90`: money
    return gold if delimited else f"${gold}$"


def _answer(completion: str) -> str:
    """The completion's last `\\boxed{}`, as the README promises: math-verify would read every boxed value of a
    completion that corrected itself as one set. Without one, GSM8K's answer line (`answers.final_answer`), else the whole
    completion (its last number or expression)."""
    completion = completion.replace("\u2212", "-")
    boxed = last_boxed(completion)
    if boxed is not None:
        return f"$\\boxed{{{joined_digit_groups(boxed, spaces=True)}}}$"
    answer = final_answer(completion)
    if answer == completion:
        return joined_digit_groups(completion)
    answer = joined_digit_groups(answer.strip(), spaces=True)
    return _latex(answer) if "\\" in answer else answer  # a `####` line in LaTeX: read whole


def _restated(gold: list, target: list) -> bool:
    """A ground truth that is a number answered by an expression to evaluate (`9 + 10`, `\\binom{10}{3}`), which
    math-verify's sympy would find equal: often the question restated (`I don't know what 9 + 10 is.`)."""
    return bool(getattr(gold[0], "is_Number", False)) and not numeric_literal(str(target[-1]))


def _at_least_one(gold: list) -> bool:
    try:
        return bool(getattr(gold[0], "is_Number", False)) and abs(float(gold[0])) >= 1
    except (TypeError, ValueError):
        return False


def serve(seconds: int) -> None:
    """The child: one JSON request a line on stdin, its answer (with the request's id) a line on the original stdout
    (anything the libraries print goes to stderr). The parent's end closing its stdin ends it; Ctrl-C in the worker's
    terminal is the worker's to handle, not the child's."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    answers = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    from math_verify import parse, verify

    logging.getLogger("math_verify").setLevel(logging.ERROR)  # its time limits' warnings, in a worker's log, named no row

    golds: dict[str, list] = {}

    def gold_of(text: str) -> list:
        if text not in golds:
            if len(golds) > 1024:
                golds.clear()
            joined = joined_digit_groups(text, spaces=True)
            golds[text] = parse(_latex(joined), parsing_timeout=seconds) or parse(joined, parsing_timeout=seconds)
        return golds[text]

    def equal(gold: list, target: list) -> bool:
        return bool(gold) and bool(target) and not _restated(gold, target) and bool(verify(gold, target, timeout_seconds=seconds))

    answers.write(json.dumps({"id": 0, "answer": True}) + "\n")  # ready
    for line in sys.stdin:
        request = json.loads(line)
        gold = gold_of(request["gold"])
        if "completion" not in request:
            answer = bool(gold)
        elif (written := ratio(request["gold"])) is not None:
            answer = final_ratio(request["completion"]) == written
        else:
            completion = request["completion"].replace("\u2212", "-")
            answer = _answer(completion)
            target = parse(answer, parsing_timeout=seconds)
            if not target and answer != completion and last_boxed(completion) is None:  # `#### Final Answer`, last: a heading
                answer = joined_digit_groups(completion)
                target = parse(answer, parsing_timeout=seconds)
            verified = equal(gold, target)
            if (not verified and target and "%" not in request["gold"] and _at_least_one(gold)
                    and (plain := re.sub(r"\s*\\?%", "", answer)) != answer):
                # `3.5\%` for a ground truth of 3.5: math-verify reads 0.035, and takes `50\%` for 50 only when both are
                # integers. Not under 1, where a ground truth is more often a probability or a share (`0.5\%` is no 0.5)
                verified = equal(gold, parse(plain, parsing_timeout=seconds))
            answer = verified
        answers.write(json.dumps({"id": request["id"], "answer": answer}) + "\n")


def _kill(process: subprocess.Popen) -> None:
    process.kill()
    process.wait()
    for stream in (process.stdin, process.stdout):
        stream.close()


class ChildDied(Exception):
    """The child ended without answering (killed from outside, out of memory)."""


class MathChecker:
    """One child per verifier, its checks one at a time (a worker's slots share it: a check costs milliseconds)."""

    def __init__(self, seconds: int = defaults.MATH_CHECK_SECONDS):
        self.seconds = seconds
        """math-verify's own limit for a parse or a comparison; the child is killed past three times it."""
        self._lock = threading.Lock()
        self._process: subprocess.Popen | None = None
        self._asked = 0
        self._unread = b""
        """What was read from the child past its last answer taken."""

    def equal(self, gold: str, completion: str) -> bool:
        """Whether the completion's final answer equals the ground truth; False for one that takes too long to check."""
        return self._ask({"gold": gold, "completion": completion}, f"the answer {completion[-200:]!r}")

    def reads(self, gold: str) -> bool:
        """Whether math-verify reads an answer in the ground truth at all."""
        return self._ask({"gold": gold}, f"the ground truth {gold[:200]!r}")

    def _ask(self, request: dict, what: str) -> bool:
        limit = 7 * self.seconds + 1  # the ground truth (twice), the answer (and the whole completion, where that holds none), the check, and again without `%`
        with self._lock:
            for attempt in (1, 2):  # a child that died (not one that took too long) gets one more try, in a new child
                if self._process is None or self._process.poll() is not None:
                    self._start()
                self._asked += 1
                try:
                    self._process.stdin.write((json.dumps({**request, "id": self._asked}) + "\n").encode())
                    self._process.stdin.flush()
                    answer = self._answer(self._asked, limit)
                except (OSError, ValueError, ChildDied):  # a broken pipe, an answer cut short, no answer at all
                    self._stop()
                    if attempt == 1:
                        continue
                    log.warning("verify:math: math-verify's process ended while checking %s, twice: scored as not verified", what)
                    return False
                except BaseException:  # a job's time up, a stop signal: the answer in the pipe would be the next check's
                    self._stop()
                    raise
                if answer is None:
                    log.warning("verify:math: no decision on %s within %d s: scored as not verified", what, limit)
                    self._stop()
                    return False
                return answer
        return False

    def _answer(self, request_id: int, seconds: float) -> bool | None:
        """The answer to `request_id` (an older one's, left by a check cut short, is passed over); None past `seconds`.
        Read from the pipe's descriptor into a buffer of its own: a buffered reader could hold the awaited line after
        an older one, where `select` no longer sees it."""
        deadline = time.monotonic() + seconds
        while True:
            line, newline, rest = self._unread.partition(b"\n")
            if newline:
                self._unread = rest
                answer = json.loads(line)
                if answer["id"] == request_id:
                    return bool(answer["answer"])
                continue
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._process.stdout], [], [], left)[0]:
                return None
            chunk = os.read(self._process.stdout.fileno(), 65536)
            if not chunk:
                raise ChildDied()
            self._unread += chunk

    def _start(self) -> None:
        # a session of its own, killed with the worker: a terminal's Ctrl-C and a SIGKILLed worker leave no orphan
        self._process = subprocess.Popen(self._command(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0,
                                         start_new_session=True, preexec_fn=killed_with_parent)
        self._stopping = weakref.finalize(self, _kill, self._process)  # a checker dropped unclosed ends its child
        self._asked, self._unread = 0, b""
        try:
            ready = self._answer(0, defaults.MATH_CHECK_START_SECONDS)
        except (OSError, ValueError, ChildDied):
            ready = None
        if ready is not True:
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
