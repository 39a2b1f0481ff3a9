"""Whether a name given for a model or a dataset is a local path or a Hub id: a typo in a local path must be told as
one, not as a Hub repository that could not be reached."""

from __future__ import annotations

from pathlib import Path


def surely_local(spec: str) -> bool:
    """Said to be local (`./`, `/`, `~`), or no Hub id (a Hub id is `name` or `owner/name`: no second `/`)."""
    return spec.startswith((".", "/", "~")) or len(Path(spec).parts) > 2


def missing_here(spec: str) -> str:
    """A hint for a name the Hub did not give either, when its first part is a folder here: most likely a local path
    with a typo (`models/rewrd` beside `models/`), or one relative to another folder (a worker started elsewhere)."""
    parts = Path(spec).parts
    if len(parts) == 2 and Path(parts[0]).is_dir() and not Path(spec).exists():
        return f" (if a local path was meant: {Path(spec).absolute()} does not exist)"
    return ""
