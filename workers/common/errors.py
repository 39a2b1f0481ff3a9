"""The one exception type users see as a one-line message, and the one way an exception becomes one line."""

from __future__ import annotations

from rsample.workers.common import defaults


class RsampleError(Exception):
    """Bad input or environment: the CLI prints it as `error: <message>` and exits 2, without a traceback."""


class RejectedInput(Exception):
    """A model refuses this input itself (a reward model's chat template that raises on a system turn, as Gemma's
    does): the prompt is skipped for its content, as a prompt too long is, never taken for a failure of the worker."""


def first_line(exc: BaseException, *, with_type: bool = False, limit: int = defaults.ERROR_LINE_CHARS) -> str:
    """The exception's first line, for a log line, a skip reason or an error message; its type name when it says nothing.

    `with_type` prefixes the type name (`ValueError: ...`), for reasons read without the traceback. A first line that
    ends with a colon announces what follows ("Couldn't instantiate the backend tokenizer from one of:"): the lines
    after it are joined to it.
    """
    text = str(exc).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    line = lines[0] if lines else ""
    if line.endswith(":") and len(lines) > 1:
        line = " ".join(lines)
    if with_type or not line:
        line = f"{type(exc).__name__}: {line}" if line else type(exc).__name__
    return line[:limit]
