"""Rows skipped for their content, logged a few per reason: a whole dataset may be too long for a model, and ten
thousand lines of the same warning would bury everything else. The rest are counted (the summary gives every reason)."""

from __future__ import annotations

import logging
from collections import Counter

from rsample.workers.common import defaults
from rsample.workers.common.messages import Outcome


class SkipLog:
    """The feeder's skips (bad rows) and the workers' (too long, refused by a template, their work failed)."""

    def __init__(self, logger: logging.Logger, per_reason: int = defaults.SKIPS_LOGGED_PER_REASON):
        self.log, self.per_reason = logger, per_reason
        self.logged: Counter[str] = Counter()

    def say(self, skips: list[Outcome]) -> None:
        for outcome in skips:
            self.say_one(outcome.reason, f"row {outcome.row_index}")

    def say_one(self, reason: str, what: str) -> None:
        if self.logged[reason] < self.per_reason:
            self.log.warning("skipping %s (%s)", what, reason)
        elif self.logged[reason] == self.per_reason:
            self.log.warning("more rows skipped for this reason are counted, not logged: %s", reason)
        self.logged[reason] += 1
