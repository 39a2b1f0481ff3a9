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
        self._lock = threading.Lock()
        self._files: tuple[Path | None, Path | None] = (None, None)
        self._written = (0, 0)
        """Where the pairs and scores files end as last committed: the counting thread reads up to there."""
        self._read: RunNumbers | None = None
        self._counted = False
        """Whether the counting thread has counted every row committed (and hands its numbers over)."""
        self.added = False
        """Whether rows were added (committed by this process)."""
        self.candidates_unknown = False
        """The candidates of earlier sessions are not counted (a resume without a scores file): their figures are left out."""

    def start_from(self, pairs: Path, scores: Path | None) -> None:
        """Counts the rows the files hold already (a resumed run, a coordinator taking over), so that the numbers are the
        whole run's. In a thread: a resume of a million rows starts feeding at once. The rows committed meanwhile are
        counted by the same thread, from the files (`add` notes where they end): held in memory, they would grow with
        the commit rate times a count that may take minutes. No number is published until the thread is done."""
        self._files = (pairs, scores)
        ends = self._ends()
        if not any(ends):
            return
        # with no scores file, or one that a resume adds (empty so far), the earlier sessions' candidates cannot be counted:
        # their figures would be this session's alone, beside the whole run's pairs and margins
        self.candidates_unknown = ends[0] > 0 and ends[1] == 0
        self._written = ends

        def count_from(counted: tuple[int, int]) -> None:
            numbers = RunNumbers(sample_size=LIVE_SAMPLE, reasoning_end=self.reasoning_end)
            while True:
                with self._lock:
                    target = self._written
                    if target == counted:  # caught up: from now on `add` counts the rows it is given
                        self._read, self._counted = numbers, True
                        return
                for row in read_rows(pairs, target[0], counted[0]):
                    add_pair(numbers, row)
                if scores is not None and target[1] > counted[1]:
                    add_score_rows(numbers, read_rows(scores, target[1], counted[1]))
                counted = target

        def read() -> None:
            try:
                count_from((0, 0))
                return
            except Exception as exc:  # the numbers are a view: without the earlier rows, they are this session's
                log.warning("the live report counts only the rows written from now on: %s", exc)
            try:
                count_from(ends)  # the rows committed since the start, which `add` left to this thread
            except Exception as exc:
                log.warning("the live report counts only the rows written from now on: %s", exc)
                with self._lock:
                    self._counted = True

        self._reading = threading.Thread(target=read, name="rsample-live-report", daemon=True)
        self._reading.start()

    def _caught_up(self, wait: bool = False) -> bool:
        """Whether the numbers cover the rows written before (see `start_from`); takes them over once they are read."""
        if self._reading is None:
            return True
        if wait:
            self._reading.join()
        with self._lock:
            if not self._counted:
                return False
        if self._read is not None:
            self.numbers = self._read
        self._reading, self._read = None, None
        return True

    def _ends(self) -> tuple[int, int]:
        return tuple(path.stat().st_size if path is not None and path.exists() else 0 for path in self._files)

    def add(self, pairs: list[dict], score_rows: list[dict]) -> None:
        """Counts a commit's rows, once the ledger made them durable: while the files are still being counted, the
        counting thread reads them there."""
        self.added = True
        if self._reading is not None:
            with self._lock:
                if not self._counted:
                    self._written = self._ends()
                    return
            self._caught_up()
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
