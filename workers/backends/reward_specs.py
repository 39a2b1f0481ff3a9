"""What a `--reward-model` names: a sequence-classification reward model (a Hub id or a folder), an answer
verifier (`verify:math`), an LLM judge (`judge:MODEL`) or a Python function (`fn:package.module:function`).

Plain string functions, imported by the run settings and the producer without any model code.
"""

from __future__ import annotations

import os
import re

from rsample.workers.common.errors import RsampleError

VERIFY_PREFIX = "verify:"
VERIFIERS = ("math", "exact")
JUDGE_PREFIX = "judge:"
FUNCTION_PREFIX = "fn:"


def is_verifier(spec: str) -> bool:
    return spec.startswith(VERIFY_PREFIX)


def is_judge(spec: str) -> bool:
    return spec.startswith(JUDGE_PREFIX)


def is_function(spec: str) -> bool:
    return spec.startswith(FUNCTION_PREFIX)


def check_spec(spec: str) -> None:
    """A one-line error for a reward name that cannot be right, before anything runs."""
    if is_verifier(spec) and spec[len(VERIFY_PREFIX):] not in VERIFIERS:
        raise RsampleError(f"unknown verifier {spec!r}: choose from {', '.join(VERIFY_PREFIX + v for v in VERIFIERS)}")
    if is_judge(spec) and not spec[len(JUDGE_PREFIX):]:
        raise RsampleError(f"{spec!r} names no judge model: judge:MODEL, MODEL a chat model's Hub id or folder")
    if is_function(spec):
        module, _, function = spec[len(FUNCTION_PREFIX):].partition(":")
        if not module or not function or not all(part.isidentifier() for part in (*module.split("."), function)):
            raise RsampleError(f"{spec!r} is not fn:package.module:function")


def model_path(spec: str) -> str | None:
    """The model a reward loads (its weights sit on a GPU), or None for one that loads none."""
    if is_verifier(spec) or is_function(spec):
        return None
    return spec[len(JUDGE_PREFIX):] if is_judge(spec) else spec


def same_model(a: str, b: str) -> bool:
    """`tiny/policy/` and `./tiny/policy` name the model `tiny/policy` names (a Hub id has no trailing slash either)."""
    return os.path.normpath(a) == os.path.normpath(b)


def function_name(spec: str) -> str:
    """`package.module:function`, the name a worker's allowlist holds."""
    return spec[len(FUNCTION_PREFIX):]


_NAME = re.compile(r"([A-Za-z0-9][A-Za-z0-9_.-]*)=(.+)")
"""`NAME=MODEL`: a name has no `/`, `:` or `=`, so no Hub id, path or prefixed reward reads as one."""


def split_name(value: str) -> tuple[str | None, str]:
    """`--reward-model NAME=MODEL` as (NAME, MODEL); a value without a name as (None, value)."""
    named = _NAME.fullmatch(value)
    return (named.group(1), named.group(2)) if named else (None, value)
