"""The end-of-run summary: every row of the selection accounted for, and how fast completions came."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field

from rsample.workers.common.messages import (
    DROPPED_DISAGREEMENT,
    DROPPED_IDENTICAL,
    DROPPED_MARGIN,
    DROPPED_TIE,
    DROPPED_UNFINISHED,
    DROPPED_UNVERIFIED,
    DUPLICATE,
    PAIR,
    commonest_reasons,
    failed_skips,
)

UNSCORED_WARNING = 0.05
"""Share of candidates a reward left unscored from which the summary warns."""


@dataclass(frozen=True)
class Summary:
    rows: int
    duplicate_rows: int
    skipped: dict[str, int]
    dropped_identical: int
    dropped_margin: int
    pairs_written: int
    completions_generated: int
    tokens_generated: int
    seconds: float
    dropped_tie: int = 0
    dropped_unfinished: int = 0
    dropped_disagreement: int = 0
    dropped_unverified: int = 0
    sft_written: int | None = None
    """Rows of the SFT file (`--sft-out`), None without one."""
    unscored: dict[str, tuple[int, int]] = field(default_factory=dict)
    """Per reward (score name): candidates it gave no score, of those it was given, this session (see `completions`)."""
    resumed: bool = False
    """Earlier sessions wrote rows of this run: the completions and unscored counts are this session's alone."""
    counted_since_loss: bool = False
    """Redis lost the run's counters this session (a restart without persistence, an eviction): the completions, tokens
    and unscored counts are those since."""

    @property
    def completions_per_second(self) -> float:
        return self.completions_generated / self.seconds if self.seconds > 0 else 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.tokens_generated / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "skipped": commonest_reasons(self.skipped),  # as many as rows, at worst: the dataset card's table
                "completions_per_second": round(self.completions_per_second, 2), "tokens_per_second": round(self.tokens_per_second, 2)}

    def lines(self) -> list[str]:
        out = [
            f"rows                 {self.rows}",
            f"pairs written        {self.pairs_written}",
            *([f"sft rows written     {self.sft_written}"] if self.sft_written is not None else []),
            f"dropped, identical   {self.dropped_identical}",
            f"dropped, margin      {self.dropped_margin}",
            f"dropped, tie         {self.dropped_tie}",
            f"dropped, unfinished  {self.dropped_unfinished}",
            f"dropped, disagree    {self.dropped_disagreement}",
            *([f"dropped, unverified  {self.dropped_unverified}"] if self.dropped_unverified else []),
            f"duplicate rows       {self.duplicate_rows}",
            f"skipped              {sum(self.skipped.values())}",
        ]
        out += [f"  {reason}: {count}" for reason, count in commonest_reasons(self.skipped).items()]
        failed = failed_skips(self.skipped)
        if failed:
            out.append(f"  ({failed} of them because their work failed: once its cause is fixed, resume with --retry-failed)")
        out.append(
            f"completions          {self.completions_generated} in {self.seconds:.1f} s "
            f"({self.completions_per_second:.2f}/s, {self.tokens_per_second:.1f} tokens/s)"
            + (": counted since Redis lost the run's counters, the rates too" if self.counted_since_loss
               else ": this session's (the run was resumed)" if self.resumed else "")
        )
        session = " this session" if self.resumed or self.counted_since_loss else ""
        for name, (unscored, given) in self.unscored.items():
            if unscored:  # pairs come from the others only: with many, a bias towards short candidates, say
                warning = "WARNING " if unscored >= UNSCORED_WARNING * given else ""
                out.append(f"{warning}{name} gave no score to {unscored} of {given} generated candidates{session} ({unscored / given:.1%}; longer than "
                           "its context or its device's memory, a score that was no number, or its function returned None): pairs are "
                           "chosen among the others")
        return out


def summarize(outcomes: Counter, reasons: Counter, completions: int, tokens: int, seconds: float,
              sft_written: int | None = None, unscored: dict[str, tuple[int, int]] | None = None) -> Summary:
    """`outcomes` and `reasons` come from the ledger (the whole run, resumes included); the rates from this session."""
    return Summary(
        rows=sum(outcomes.values()),
        duplicate_rows=outcomes[DUPLICATE],
        skipped=dict(reasons),
        dropped_identical=outcomes[DROPPED_IDENTICAL],
        dropped_margin=outcomes[DROPPED_MARGIN],
        dropped_tie=outcomes[DROPPED_TIE],
        dropped_unfinished=outcomes[DROPPED_UNFINISHED],
        dropped_disagreement=outcomes[DROPPED_DISAGREEMENT],
        dropped_unverified=outcomes[DROPPED_UNVERIFIED],
        pairs_written=outcomes[PAIR],
        completions_generated=completions,
        tokens_generated=tokens,
        seconds=seconds,
        sft_written=sft_written,
        unscored=unscored or {},
    )
