"""The report's key numbers while a run is being written, for `rsample status` (which runs elsewhere, without the
files): the coordinator adds each commit's rows and publishes the numbers in the run's counters."""

from __future__ import annotations

import json
import time

from rsample.producer.report.stats import RunNumbers, add_pair, add_score_rows

LIVE_SAMPLE = 20_000
"""Values kept per sample while the run goes on: a rank correlation over them takes a fraction of a second."""
PUBLISH_EVERY_SECONDS = 10.0


class LiveNumbers:
    def __init__(self, reasoning_end: str | None = None):
        self.numbers = RunNumbers(sample_size=LIVE_SAMPLE, reasoning_end=reasoning_end)
        self._published_at = 0.0

    def add(self, pairs: list[dict], score_rows: list[dict]) -> None:
        for row in pairs:
            add_pair(self.numbers, row)
        add_score_rows(self.numbers, score_rows)

    def due(self) -> bool:
        return time.monotonic() - self._published_at >= PUBLISH_EVERY_SECONDS

    def summary(self) -> str:
        """The numbers as JSON, for the run's `report` counter."""
        self._published_at = time.monotonic()
        numbers = self.numbers
        models = {}
        for name, model in numbers.models.items():
            rho = model.length_rho
            models[name] = {"margin_mean": round(model.margin_moments.mean, 4) if model.margin_moments.count else None,
                            "length_rho": None if rho is None else round(rho, 3)}
        return json.dumps({
            "pairs": numbers.pairs, "models": models,
            "chosen_longer": None if numbers.chosen_longer_share is None else round(numbers.chosen_longer_share, 4),
            "truncated": round(numbers.truncated / numbers.candidates, 4) if numbers.candidates else None,
        })
