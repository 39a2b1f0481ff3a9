"""Progress bars per stage, fed from the run's counters in Redis (so they show every worker's work), with the
generation bar moving inside running jobs (see `live_progress`) and showing the tokens generated per second."""

from __future__ import annotations

import sys
import time
from collections import deque

import redis
from tqdm import tqdm

from rsample.workers.runtime.keys import RunKeys
from rsample.workers.runtime.live_progress import read_progress
from rsample.workers.runtime.queues import make_queue, worker_processes

STAGES = (("generated", "rows_generated"), ("scored", "rows_scored"), ("written", "rows_written"))
RATE_WINDOW_SECONDS = 30.0
FILE_REDRAW_SECONDS = 60.0
"""How often the bars are drawn where the output goes to a file (a Slurm job's log, `> log 2>&1`), not a terminal:
drawn every second, a day's run left 33 MB of bars there."""


class TokenRate:
    """Tokens per second over the last `window` seconds of readings (a run's start or a pause fades out of it)."""

    def __init__(self, window: float = RATE_WINDOW_SECONDS):
        self.window = window
        self.readings: deque[tuple[float, int]] = deque()

    def add(self, tokens: int, now: float | None = None) -> float | None:
        now = time.monotonic() if now is None else now
        self.readings.append((now, tokens))
        while len(self.readings) > 2 and now - self.readings[1][0] >= self.window:
            self.readings.popleft()
        (first_time, first_tokens), (last_time, last_tokens) = self.readings[0], self.readings[-1]
        if last_time - first_time <= 0:
            return None
        return max(0, last_tokens - first_tokens) / (last_time - first_time)


def _leave_out_of_rate(bar: tqdm, rows: int) -> None:
    """Rows the bar will show that are no work: tqdm measures its rate from `initial` and from its last printed count,
    as it does itself for a count that goes back."""
    if bar.disable:  # --no-progress: a disabled bar has no count at all
        return
    bar.initial += rows
    bar.last_print_n += rows


def format_rate(rate: float | None) -> str:
    if rate is None:
        return "-"
    return f"{rate / 1000:.1f}k" if rate >= 1000 else f"{rate:.0f}"


class StageBars:
    def __init__(self, client: redis.Redis, run_id: str, disable: bool = False):
        self.client = client
        self.run_id = run_id
        self.token_rate = TokenRate()
        self._workers_seen = 0
        self._replayed_seen: int | None = None
        """The feeder's count of rows passed again, as `update` last saw it; None before its first look."""
        self.redraw_every = 0.0 if sys.stderr.isatty() else FILE_REDRAW_SECONDS
        self._drawn_at = float("-inf")
        self.bars = [
            tqdm(desc=f"{label:>9}", unit="prompt", position=i, leave=True, disable=disable, dynamic_ncols=True,
                 mininterval=self.redraw_every or 0.1, maxinterval=self.redraw_every or 10.0,
                 bar_format="{l_bar}{bar}| {n:.0f}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]")
            for i, (label, _) in enumerate(STAGES)
        ]

    def update(self) -> None:
        stats, live = read_progress(self.client, self.run_id)
        total = int(stats.get("rows_total")) or None
        tokens = int(stats.get("tokens_generated")) + live.tokens
        rate = self.token_rate.add(tokens)
        # shown, but left out of tqdm's rate and time left, which would otherwise promise the rest in seconds: the counts
        # found at the first look (a resume's rows written before it; a shared Redis's earlier sessions), and the rows
        # the feeder passes again later, written already (generated, scored)
        replayed = int(stats.get("rows_replayed"))
        first_look = self._replayed_seen is None
        passed_again = 0 if first_look else max(0, replayed - self._replayed_seen)
        self._replayed_seen = replayed
        for index, (bar, (_, counter)) in enumerate(zip(self.bars, STAGES)):
            bar.total = total
            done = min(total or float("inf"), stats.get(counter) + (live.rows if index == 0 else 0.0))  # see `run_status`
            uncounted = int(done) if first_look else passed_again if index < 2 else 0
            if uncounted:
                _leave_out_of_rate(bar, uncounted)
            if done > bar.n and not self.redraw_every:
                bar.update(done - bar.n)  # through update, so that tqdm's rate and time left follow the recent pace
            else:  # into a file: drawn below, once a minute, at the pace since the start (update would draw too)
                bar.n = done
            if index == 0:
                # rows the coordinator settled itself (skipped, duplicates) are done without any worker
                waiting = not tokens and (not total or done < total) and not self._generation_workers()
                bar.set_postfix_str("waiting for a generation worker to load its model" if waiting
                                    else f"{tokens:,} tokens, {format_rate(rate)} tokens/s", refresh=False)
        if time.monotonic() - self._drawn_at >= self.redraw_every:
            self._drawn_at = time.monotonic()
            for bar in self.bars:
                bar.refresh()

    def _generation_workers(self) -> int:
        """Workers register with RQ once their models are loaded: none yet means the run waits for a model to load."""
        if self._workers_seen:
            return self._workers_seen
        self._workers_seen = worker_processes(make_queue(self.client, RunKeys(self.run_id).generate_queue))
        return self._workers_seen

    def close(self) -> None:
        for bar in self.bars:
            bar.close()
