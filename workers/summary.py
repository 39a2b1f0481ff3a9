"""The end-of-run summary: what came in, what was skipped and why, what was written, how fast."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

from workers.runs import RunStats


@dataclass(frozen=True)
class Summary:
    rows_read: int
    duplicate_prompts: int
    prompts: int
    skipped: dict[str, int]
    dropped_identical: int
    dropped_margin: int
    pairs_written: int
    completions_generated: int
    tokens_generated: int
    seconds: float

    @property
    def completions_per_second(self) -> float:
        return self.completions_generated / self.seconds if self.seconds > 0 else 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.tokens_generated / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "completions_per_second": round(self.completions_per_second, 2), "tokens_per_second": round(self.tokens_per_second, 2)}

    def lines(self) -> list[str]:
        skipped = sum(self.skipped.values())
        out = [
            f"rows read            {self.rows_read}",
            f"unique prompts       {self.prompts} ({self.duplicate_prompts} duplicate rows merged)",
            f"skipped              {skipped}",
        ]
        out += [f"  {reason}: {count}" for reason, count in sorted(self.skipped.items(), key=lambda kv: -kv[1])]
        out += [
            f"dropped, identical   {self.dropped_identical}",
            f"dropped, margin      {self.dropped_margin}",
            f"pairs written        {self.pairs_written}",
            f"completions          {self.completions_generated} in {self.seconds:.1f} s "
            f"({self.completions_per_second:.2f}/s, {self.tokens_per_second:.1f} tokens/s)",
        ]
        return out


def summarize(stats: RunStats, created_at: float, now: float | None = None) -> Summary:
    get = lambda name: int(stats.get(name))  # noqa: E731
    return Summary(
        rows_read=get("rows_read"),
        duplicate_prompts=get("duplicate_prompts"),
        prompts=get("prompts_enqueued"),
        skipped=dict(stats.skips),
        dropped_identical=get("dropped_identical"),
        dropped_margin=get("dropped_margin"),
        pairs_written=get("pairs_written"),
        completions_generated=get("completions_generated"),
        tokens_generated=get("tokens_generated"),
        seconds=(now or time.time()) - created_at,
    )
