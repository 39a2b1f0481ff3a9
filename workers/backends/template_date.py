"""The date a chat template shows: the run's, in UTC, on every machine.

Templates read the clock through transformers' `strftime_now`: Llama 3.2's and 3.3's for their "Today Date",
Granite 3's and Mistral Small 3.1's for the date in their default system prompt. It gives the local date of the
process that renders: one prompt became other tokens on workers in other time zones, or after midnight (a vLLM
sample's seed comes from the prompt's tokens, so re-running a job sampled other completions), and a reward model
scored the same conversation differently. Every tokenizer rsample loads renders with a `strftime_now` of its own,
a macro ahead of the template that formats the moment the run was first made (its `created_at`, kept when the run
is registered again), in UTC; and with `date_string` (which the Llama templates read first) set to that date,
unless `--chat-template-kwargs` gives one.
"""

from __future__ import annotations

import functools
import time
from datetime import datetime, timezone

DATE_FORMAT = "%d %b %Y"
"""As the Llama templates write it: `26 Jul 2024`."""

CLOCK_VARIABLE = "rsample_clock"
"""The template variable that carries the run's moment, formatted directive by directive."""

DIRECTIVES = (*"aAbBcCdDeFfgGhHIjklmMnpPrRStTuUVwWxXyYzZ", *(f"{flag}{letter}" for flag in "-_" for letter in "dmHIMSjyelk"),
              *(f"^{letter}" for letter in "aAbBhp"))
"""strftime's directives (glibc's, with its `-` unpadded, `_` space-padded and `^` upper-case forms) that the macro
formats as transformers' `strftime_now` would, on a machine whose clock is in UTC (`%Z` and `%z` empty: its moment
knows no zone); any other stays as written."""

_PERCENT = "<rsample-percent>"

CLOCK_MACRO = (
    "{%- macro strftime_now(format) -%}{{ format|string|replace('%%', '" + _PERCENT + "')"
    + "".join(f"|replace('%{directive}', {CLOCK_VARIABLE}['{directive}'])" for directive in DIRECTIVES)
    + "|replace('" + _PERCENT + "', '%') }}{%- endmacro %}\n"
)
"""Shadows transformers' `strftime_now` for the whole template, its own macros included. The newline after it is the
one the template environment's `trim_blocks` removes, so the template's first line renders as it did."""

_run_created_at: float | None = None


def pin_run_date(created_at: float | None) -> None:
    """The run this process renders for (a worker: the run it serves; None: now)."""
    global _run_created_at
    _run_created_at = created_at or None


def pinned_run_date() -> float | None:
    """What `pin_run_date` was given, for a process that renders on this one's behalf."""
    return _run_created_at


def _run_moment() -> datetime:
    """In UTC, naive as `datetime.now()` is."""
    moment = _run_created_at if _run_created_at is not None else int(time.time())
    return datetime.fromtimestamp(moment, tz=timezone.utc).replace(tzinfo=None)


def run_date() -> str:
    return _run_moment().strftime(DATE_FORMAT)


def run_clock() -> dict[str, str]:
    return _clock(_run_moment())


@functools.lru_cache(maxsize=4)
def _clock(moment: datetime) -> dict[str, str]:
    """Formatted once per moment: a worker renders thousands of conversations a minute."""
    return {directive: moment.strftime(f"%{directive}") for directive in DIRECTIVES}


def _with_clock(template):
    if isinstance(template, dict):  # named templates
        return {name: _with_clock(text) for name, text in template.items()}
    return CLOCK_MACRO + template if isinstance(template, str) and "strftime_now" in template else template


def dated(tokenizer):
    """`tokenizer`, rendering with the run's moment where its template reads the clock (others are left as they are)."""
    if "strftime_now" not in str(tokenizer.chat_template or ""):
        return tokenizer
    tokenizer.chat_template = _with_clock(tokenizer.chat_template)
    apply = tokenizer.apply_chat_template

    @functools.wraps(apply)
    def apply_with_run_date(*args, **kwargs):
        kwargs.setdefault("date_string", run_date())
        kwargs[CLOCK_VARIABLE] = run_clock()  # the same dict each call: never changed by a template (sandboxed)
        return apply(*args, **kwargs)

    tokenizer.apply_chat_template = apply_with_run_date
    return tokenizer
