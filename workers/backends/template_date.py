"""The date a chat template's "Today Date" shows: the run's, in UTC, on every machine.

Llama 3.2's and 3.3's templates write `strftime_now("%d %b %Y")`, the local date of the process that renders: one
prompt became other tokens on workers in other time zones, or after midnight (a vLLM sample's seed comes from the
prompt's tokens, so re-running a job sampled other completions), and a reward model scored the same conversation
differently. Every tokenizer rsample loads renders with `date_string` (which those templates read first) set to the
date the run was registered, unless `--chat-template-kwargs` gives one. Templates that call `strftime_now` for other
variables (Granite 3's, Mistral Small 3.1's) are not reached: transformers gives them no way to replace the clock.
"""

from __future__ import annotations

import functools
import time

DATE_FORMAT = "%d %b %Y"
"""As those templates write it: `26 Jul 2024`."""

_run_created_at: float | None = None


def pin_run_date(created_at: float | None) -> None:
    """The run this process renders for (a worker: the run it serves; None: today, in UTC)."""
    global _run_created_at
    _run_created_at = created_at or None


def run_date() -> str:
    return time.strftime(DATE_FORMAT, time.gmtime(_run_created_at if _run_created_at is not None else time.time()))


def dated(tokenizer):
    """`tokenizer`, rendering with the run's date where its template reads the clock (others never see the variable)."""
    if "strftime_now" not in str(tokenizer.chat_template or ""):
        return tokenizer
    apply = tokenizer.apply_chat_template

    @functools.wraps(apply)
    def apply_with_run_date(*args, **kwargs):
        kwargs.setdefault("date_string", run_date())
        return apply(*args, **kwargs)

    tokenizer.apply_chat_template = apply_with_run_date
    return tokenizer
