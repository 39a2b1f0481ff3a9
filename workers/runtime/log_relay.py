"""What a worker of `rsample run` warns of, said on the run's own console: its log file is out of sight (a judge whose
ratings would be noise, a reward model read where it pools, out-of-memory halving its batches)."""

from __future__ import annotations

import re
from pathlib import Path

RELAYED = re.compile(r"^\S+ \S+ (WARNING|ERROR) rsample\.[\w.]+: (.+)$")
"""A line rsample's own loggers wrote at WARNING or above (`cli`'s format), not a library's nor a traceback's."""
MOST_RELAYED = 20
"""Warnings said per worker; the rest stay in its log, which the last one names."""


class LogRelay:
    """The new warnings of one worker's log since the last look, each distinct one once."""

    def __init__(self, path: Path):
        self.path = path
        self.offset = 0
        self.partial = b""
        self.said: set[str] = set()

    def new_warnings(self) -> list[str]:
        try:
            with self.path.open("rb") as handle:
                handle.seek(self.offset)
                data = handle.read()
        except OSError:
            return []
        self.offset += len(data)
        *lines, self.partial = (self.partial + data).split(b"\n")
        found = []
        for line in lines:
            match = RELAYED.match(line.decode("utf-8", "replace").rstrip("\r"))
            if match is None or match.group(2) in self.said or len(self.said) > MOST_RELAYED:
                continue
            self.said.add(match.group(2))
            found.append(match.group(2) if len(self.said) <= MOST_RELAYED else f"more warnings only in its log, {self.path}")
        return found
