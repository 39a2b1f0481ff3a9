"""Progress bars per stage, fed from the run's counters in Redis (so they show every worker's work)."""

from __future__ import annotations

import redis
from tqdm import tqdm

from rsample.workers.runtime.run_state import read_stats

STAGES = (("generated", "rows_generated"), ("scored", "rows_scored"), ("written", "rows_written"))


class StageBars:
    def __init__(self, client: redis.Redis, run_id: str, disable: bool = False):
        self.client = client
        self.run_id = run_id
        self.bars = [
            tqdm(desc=f"{label:>9}", unit="row", position=i, leave=True, disable=disable, dynamic_ncols=True)
            for i, (label, _) in enumerate(STAGES)
        ]

    def update(self) -> None:
        stats = read_stats(self.client, self.run_id)
        total = int(stats.get("rows_total")) or None
        for bar, (_, counter) in zip(self.bars, STAGES):
            bar.total = total
            bar.n = int(stats.get(counter))
            bar.refresh()

    def close(self) -> None:
        for bar in self.bars:
            bar.close()
