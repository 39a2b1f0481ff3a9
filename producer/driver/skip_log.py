"""Rows skipped for their content, logged a few per reason, and a few reasons: a whole dataset may be too long for a
model, an error's text may differ on every row, and ten thousand lines of warnings would bury everything else. The rest
are counted (the summary gives the commonest reasons, the outcomes file every row's)."""

from __future__ import annotations

import logging
from collections import Counter

from rsample.workers.common import defaults
from rsample.workers.common.messages import REASONS_SHOWN, Outcome


class SkipLog:
    """The feeder's skips (bad rows) and the workers' (too long, refused by a template, their work failed)."""

    def __init__(self, logger: logging.Logger, per_reason: int = defaults.SKIPS_LOGGED_PER_REASON, reasons: int = 2 * REASONS_SHOWN):
        self.log, self.per_reason, self.reasons = logger, per_reason, reasons
        self.logged: Counter[str] = Counter()
        self.reasons_capped = False

    def say(self, skips: list[Outcome]) -> None:
        for outcome in skips:
            self.say_one(outcome.reason, f"row {outcome.row_index}")

    def say_one(self, reason: str, what: str) -> None:
        if reason not in self.logged and len(self.logged) >= self.reasons:  # an error's text that differs on every row
            if not self.reasons_capped:
                self.reasons_capped = True
                self.log.warning("more skip reasons are counted, not logged (%d logged): every row's reason is in the outcomes file",
                                 self.reasons)
            return
        if self.logged[reason] < self.per_reason:
            self.log.warning("skipping %s (%s)", what, reason)
        elif self.logged[reason] == self.per_reason:
            self.log.warning("more rows skipped for this reason are counted, not logged: %s", reason)
        self.logged[reason] += 1
