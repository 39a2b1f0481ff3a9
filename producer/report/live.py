"""The report's key numbers while a run is being written, for `rsample status` (which runs elsewhere, without the
files): the coordinator adds each commit's rows and publishes the numbers in the run's counters."""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

from rsample.producer.report.stats import RunNumbers, add_pair, add_score_rows, read_rows

LIVE_SAMPLE = 20_000
"""Values kept per sample while the run goes on: a rank correlation over them takes a fraction of a second."""
PUBLISH_EVERY_SECONDS = 10.0

log = logging.getLogger(__name__)


class LiveNumbers:
    def __init__(self, reasoning_end: str | None = None):
        self.reasoning_end = reasoning_end
        self.numbers = RunNumbers(sample_size=LIVE_SAMPLE, reasoning_end=reasoning_end)
        self._published_at = 0.0
        self._reading: threading.Thread | None = None
        self._read: RunNumbers | None = None
        self._pending: list[tuple[list[dict], list[dict]]] = []
        self.added = False
        """Whether rows were added (committed by this process)."""
        self.candidates_unknown = False
        """The candidates of earlier sessions are not counted (a resume without a scores file): their figures are left out."""

    def start_from(self, pairs: Path, scores: Path | None) -> None:
        """Counts the rows the files hold already (a resumed run, a coordinator taking over), so that the numbers are the
        whole run's. In a thread: a resume of a million rows starts feeding at once; the rows committed meanwhile wait,
        and no number is published until both are counted."""
        ends = [path.stat().st_size if path is not None and path.exists() else 0 for path in (pairs, scores)]
        if not any(ends):
            return
        # with no scores file, or one that a resume adds (empty so far), the earlier sessions' candidates cannot be counted:
        # their figures would be this session's alone, beside the whole run's pairs and margins
        self.candidates_unknown = ends[0] > 0 and ends[1] == 0

        def read() -> None:
            numbers = RunNumbers(sample_size=LIVE_SAMPLE, reasoning_end=self.reasoning_end)
            try:
                for row in read_rows(pairs, ends[0]):
                    add_pair(numbers, row)
                if scores is not None and ends[1]:
                    add_score_rows(numbers, read_rows(scores, ends[1]))
            except Exception as exc:  # the numbers are a view: without the earlier rows, they are those of this session's
                log.warning("the live report counts only the rows written from now on: %s", exc)
                return
            self._read = numbers

        self._reading = threading.Thread(target=read, name="rsample-live-report", daemon=True)
        self._reading.start()

    def _caught_up(self, wait: bool = False) -> bool:
        """Whether the numbers cover the rows written before (see `start_from`); takes them over once they are read."""
        if self._reading is None:
            return True
        self._reading.join(timeout=None if wait else 0)
        if self._reading.is_alive():
            return False
        if self._read is not None:
            self.numbers = self._read
        self._reading, self._read, pending = None, None, self._pending
        self._pending = []
        for pairs, score_rows in pending:
            self.add(pairs, score_rows)
        return True

    def add(self, pairs: list[dict], score_rows: list[dict]) -> None:
        self.added = True
        if not self._caught_up():
            self._pending.append((pairs, score_rows))
            return
        for row in pairs:
            add_pair(self.numbers, row)
        add_score_rows(self.numbers, score_rows)

    def reading(self) -> bool:
        """Whether the rows written before are still being counted (see `start_from`)."""
        return not self._caught_up()

    def due(self) -> bool:
        return self._caught_up() and time.monotonic() - self._published_at >= PUBLISH_EVERY_SECONDS

    def summary(self) -> str:
        """The numbers as JSON, for the run's `report` counter."""
        self._caught_up(wait=True)
        self._published_at = time.monotonic()
        numbers = self.numbers
        models = {}
        for name, model in numbers.models.items():
            rho = None if self.candidates_unknown else model.length_rho
            models[name] = {"margin_mean": round(model.margin_moments.mean, 4) if model.margin_moments.count else None,
                            "length_rho": None if rho is None else round(rho, 3)}
        return json.dumps({
            "pairs": numbers.pairs, "models": models,
            "chosen_longer": None if numbers.chosen_longer_share is None else round(numbers.chosen_longer_share, 4),
            "truncated": round(numbers.truncated / numbers.samples, 4) if numbers.samples and not self.candidates_unknown else None,
        })
