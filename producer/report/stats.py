"""One streaming pass over a run's files (pairs, scores, outcomes) into the numbers the report shows.

Files may still be growing: a last line without its newline is left for the next report.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path

from rsample.producer.driver.ledger import output_header, replay_outcomes
from rsample.producer.report.sample import Moments, Reservoir, spearman
from rsample.workers.common.errors import RsampleError
from rsample.workers.common.messages import GENERATED_OUTCOMES
from rsample.workers.common.reasoning import THINKING_END, answer_part

LENGTH_BIAS_RHO = 0.3
"""|Spearman's rho| between a candidate's length and its score from which the report warns of length bias."""
LENGTH_BIAS_CHOSEN_LONGER = 0.7
"""Share of pairs whose chosen is longer than the rejected from which the report warns of length bias."""
LOW_DIVERSITY = 0.2
"""Share of prompts with 2 or fewer distinct candidates from which the report warns of low diversity."""
SMALL_MARGIN = 0.1
"""A margin under this many standard deviations of the model's candidate scores counts as small."""


def read_rows(path: Path, end: int | None = None, start: int = 0) -> Iterator[dict]:
    """Complete JSON lines only: a growing file's unfinished last line is not an error; with `end`, those in the first
    `end` bytes (what was written when the file was measured); from byte `start` (a line's start). orjson parses
    several times faster than json, which is most of the time of a report over millions of rows."""
    import orjson

    position = start
    with path.open("rb", buffering=1 << 20) as handle:
        handle.seek(start)
        for line_number, raw in enumerate(handle, start=1):
            position += len(raw)
            if not raw.endswith(b"\n") or (end is not None and position > end):
                return
            if raw.strip():
                try:
                    row = orjson.loads(raw)
                except orjson.JSONDecodeError as exc:
                    raise RsampleError(f"{path} {_where(line_number, start, position - len(raw))} is not JSON ({exc}): is this a "
                                       "file rsample wrote?") from None
                if not isinstance(row, dict):
                    raise RsampleError(f"{path} {_where(line_number, start, position - len(raw))} is not a JSON object: is this a "
                                       "file rsample wrote?")
                yield row


def _where(line_number: int, start: int, offset: int) -> str:
    return f"line {line_number}" if not start else f"the line at byte {offset}"


def rows_of(path: Path, kind: str, flag: str, fields: tuple[str, ...]) -> Iterator[dict]:
    """The rows of an output file of one kind; a row without that kind's fields (another file given) is refused."""
    for number, row in enumerate(read_rows(path), start=1):
        missing = [name for name in fields if name not in row]
        if missing:
            raise RsampleError(f"{path} row {number} has no {missing[0]!r}: it is not a {kind} file (give the run's {flag} file)")
        yield row


@dataclass
class ModelNumbers:
    """What one reward model's scores look like."""

    candidates: Reservoir = field(default_factory=Reservoir)
    chosen: Reservoir = field(default_factory=Reservoir)
    rejected: Reservoir = field(default_factory=Reservoir)
    margins: Reservoir = field(default_factory=Reservoir)
    margin_moments: Moments = field(default_factory=Moments)
    candidate_moments: Moments = field(default_factory=Moments)
    length_and_score: Reservoir = field(default_factory=Reservoir)
    unscored: int = 0
    """Generated candidates it gave no score (longer than its context, out of memory, no number): the whole run's."""

    @classmethod
    def sized(cls, sample_size: int) -> ModelNumbers:
        sample = lambda: Reservoir(sample_size)  # noqa: E731
        return cls(sample(), sample(), sample(), sample(), Moments(), Moments(), sample())

    @property
    def length_rho(self) -> float | None:
        return spearman(self.length_and_score.items)

    @property
    def small_margin_share(self) -> float | None:
        if not self.margins.items or not self.candidate_moments.std:
            return None
        limit = SMALL_MARGIN * self.candidate_moments.std
        return sum(1 for m in self.margins.items if abs(m) < limit) / len(self.margins.items)

    @property
    def reversed_share(self) -> float | None:
        """Pairs whose rejected this model scored higher: another model (or the combined score) chose against it."""
        if not self.margins.items:
            return None
        return sum(1 for m in self.margins.items if m < 0) / len(self.margins.items)


@dataclass
class Agreement:
    """How often two reward models pick the same best candidate (every prompt), and order pairs of candidates alike
    (over a sample of prompts: the pairs grow with the square of n)."""

    prompts: int = 0
    same_best: int = 0
    order_sample: Reservoir = field(default_factory=lambda: Reservoir(20_000))

    @property
    def pair_order(self) -> tuple[int, int]:
        """(candidate pairs both models order, of those ordered alike), over the sampled prompts."""
        pairs = same = 0
        for both in self.order_sample.items:
            for (a1, b1), (a2, b2) in combinations(both, 2):
                if a1 != a2 and b1 != b2:
                    pairs += 1
                    same += (a1 - a2) * (b1 - b2) > 0
        return pairs, same


@dataclass
class RunNumbers:
    sample_size: int = 200_000
    """Values kept per sample (pictures, rank correlations): memory stays bounded whatever the run's size."""
    models: dict[str, ModelNumbers] = field(default_factory=dict)
    pairs: int = 0
    chosen_longer: int = 0
    length_pairs: Reservoir = field(init=False)  # (chosen chars, rejected chars)
    unique_per_prompt: Counter = field(default_factory=Counter)
    """Prompts by their distinct candidates: every scored prompt's (from the scores file, else the pairs alone), and the
    prompts dropped as identical (1)."""
    unique_in_scores: Counter = field(default_factory=Counter)
    """Prompts by their rows in the scores file (the reference's included)."""
    distinct_samples_in_scores: Counter = field(default_factory=Counter)
    """Prompts by their distinct generated candidates in the scores file (a reference apart from every sample left out)."""
    candidates: int = 0
    """Distinct generated candidates (the scores file's rows, the reference left out)."""
    samples: int = 0
    """The policy's samples they stand for: the shares below (truncated, thinking never ended, no answer) are of samples."""
    truncated: int = 0
    truncated_share_per_prompt: Reservoir = field(init=False)
    agreement: dict[tuple[str, str], Agreement] = field(default_factory=dict)
    reasoning_end: str | None = None
    """The run's `--reasoning-end`: lengths are then the answers' (what the rewards read), not the thinking's."""
    unended_thinking: int = 0
    """Samples whose thinking never ended (no marker), with a `reasoning_end`."""
    unanswered_harmony: int | None = None
    """A harmony policy's samples (their thinking a column of its own) with no answer: their final channel never
    began. None for any other run."""
    unsplit_thinking: int = 0
    """Samples holding a `</think>` in a run without `reasoning_end`: the rewards judged the thinking too."""
    outcomes: Counter = field(default_factory=Counter)
    skip_reasons: Counter = field(default_factory=Counter)
    has_scores: bool = False
    samples_per_prompt: int | None = None
    """The run's n (from the outcomes file's settings), which bounds how many distinct candidates a prompt can have."""

    def __post_init__(self) -> None:
        self.length_pairs = Reservoir(self.sample_size)
        self.truncated_share_per_prompt = Reservoir(self.sample_size)

    def length(self, text: str) -> int:
        """Characters of what the rewards read: the answer, with a `reasoning_end`."""
        return len(answer_part(text, self.reasoning_end))

    def model(self, name: str) -> ModelNumbers:
        if name not in self.models:
            self.models[name] = ModelNumbers.sized(self.sample_size)
        return self.models[name]

    @property
    def chosen_longer_share(self) -> float | None:
        return self.chosen_longer / self.pairs if self.pairs else None

    @property
    def few_distinct(self) -> int:
        """Distinct candidates that make a prompt's diversity low: 2 or fewer, or with n = 2 one (all alike)."""
        return 2 if self.samples_per_prompt is None else max(1, min(2, self.samples_per_prompt - 1))

    @property
    def few_distinct_text(self) -> str:
        return f"{self.few_distinct} or fewer" if self.few_distinct > 1 else "1"

    @property
    def low_diversity_share(self) -> float | None:
        """Over every prompt that got candidates: one whose count is unknown (no scores file, no pair: a prompt whose
        candidates were all cut, say) is not counted as low, so that such prompts never raise the warning."""
        total = max(sum(self.unique_per_prompt.values()), sum(self.outcomes[kind] for kind in GENERATED_OUTCOMES))
        return sum(count for unique, count in self.unique_per_prompt.items() if unique <= self.few_distinct) / total if total else None

    def thinking_scored(self) -> str | None:
        """The warning for a reasoning policy's run made without --reasoning-end (None: no sign of one)."""
        if not self.unsplit_thinking:
            return None
        return (f"thinking scored: {self.unsplit_thinking:,} of {self.samples:,} samples hold {THINKING_END!r}, and the rewards "
                f"read their thinking too; a reasoning policy wants --reasoning-end '{THINKING_END}'")

    def length_bias(self) -> list[str]:
        """Why the report warns of length bias (empty: no warning)."""
        reasons = [f"{name}: rank correlation between length and score {rho:+.2f}" for name, numbers in self.models.items()
                   if (rho := numbers.length_rho) is not None and abs(rho) >= LENGTH_BIAS_RHO]
        share = self.chosen_longer_share
        if share is not None and share >= LENGTH_BIAS_CHOSEN_LONGER:
            reasons.append(f"the chosen is longer than the rejected in {share:.0%} of pairs")
        return reasons


def read_run(pairs_path: Path, scores_path: Path | None = None, reasoning_end: str | None = None) -> RunNumbers:
    settings = output_header(pairs_path).get("settings", {})
    # the run's own marker unless one is given: without it, a reasoning run's report warned that the rewards read the
    # thinking (they did not) and measured lengths on the thinking
    numbers = RunNumbers(reasoning_end=reasoning_end or settings.get("reasoning_end"))
    numbers.samples_per_prompt = settings.get("sampling", {}).get("n")
    rewards_of_pairs: set[str] = set()
    for row in rows_of(pairs_path, "pairs", "--out", ("chosen", "rejected")):
        rewards_of_pairs.update(row.get("chosen_score") or {})
        add_pair(numbers, row)
    outcomes_path = pairs_path.with_name(f"{pairs_path.stem}.outcomes.jsonl")
    if outcomes_path.exists():  # as a resume reads it: a row retried with --retry-failed counts by its last outcome
        for outcome in replay_outcomes(outcomes_path).settled.values():
            numbers.outcomes[outcome.outcome] += 1
            if outcome.outcome == "skipped" and outcome.reason:
                numbers.skip_reasons[outcome.reason] += 1
    if scores_path is not None and scores_path.exists():
        numbers.has_scores = True
        rewards_of_scores: set[str] = set()

        def noting_rewards(rows: Iterable[dict]) -> Iterator[dict]:
            for row in rows:
                rewards_of_scores.update(row["scores"] or {})
                yield row

        add_score_rows(numbers, noting_rewards(rows_of(scores_path, "scores", "--scores-out", ("prompt_id", "scores"))))
        if rewards_of_pairs and rewards_of_scores and rewards_of_pairs != rewards_of_scores:  # one report of two runs
            raise RsampleError(f"{scores_path} holds scores of {', '.join(sorted(rewards_of_scores))} and {pairs_path} of "
                               f"{', '.join(sorted(rewards_of_pairs))}: they are not one run's files")
        numbers.unique_per_prompt = Counter(numbers.distinct_samples_in_scores)  # every scored prompt's, not the pairs' alone
    # prompts dropped as identical: 1 distinct candidate; with --sft they were scored, and the scores file has them already
    unscored_identical = numbers.outcomes["dropped_identical"] - (numbers.unique_in_scores[1] if numbers.has_scores else 0)
    if unscored_identical > 0:
        numbers.unique_per_prompt[1] += unscored_identical
    return numbers


def add_score_rows(numbers: RunNumbers, rows: Iterable[dict]) -> None:
    """Score rows come prompt by prompt (a prompt's candidates are written together): each prompt's group at once."""
    group: list[dict] = []
    for row in rows:
        if group and row["prompt_id"] != group[0]["prompt_id"]:
            add_prompt_scores(numbers, group)
            group = []
        group.append(row)
    if group:
        add_prompt_scores(numbers, group)


def reference_apart(row: dict, reasoning_end: str | None = None) -> bool:
    """Whether a pair's `num_unique` counts the dataset's reference as a candidate of its own, which diversity leaves
    out (it is no sample of the policy): it was scored, and no sample merged with it, as far as the pair shows (a side
    with the reference's answer and a sample's finish reason; samples merge with it by what the rewards read)."""
    reference = row.get("reference_completion")
    if row.get("reference_completion_score") is None or not isinstance(reference, str):
        return False
    answer = answer_part(reference.strip(), reasoning_end)
    return not any(answer_part(row[side][-1].get("content") or "", reasoning_end) == answer
                   and row.get(f"{side}_finish_reason") not in (None, "reference") for side in ("chosen", "rejected"))


def add_pair(numbers: RunNumbers, row: dict) -> None:
    numbers.pairs += 1
    chosen, rejected = numbers.length(row["chosen"][-1]["content"]), numbers.length(row["rejected"][-1]["content"])
    numbers.chosen_longer += chosen > rejected
    numbers.length_pairs.add((chosen, rejected))
    if "num_unique" in row:
        numbers.unique_per_prompt[row["num_unique"] - reference_apart(row, numbers.reasoning_end)] += 1
    for name, chosen_score in (row.get("chosen_score") or {}).items():
        rejected_score = (row.get("rejected_score") or {}).get(name)
        model = numbers.model(name)
        model.chosen.add(chosen_score)
        if rejected_score is not None:
            model.rejected.add(rejected_score)
            model.margins.add(chosen_score - rejected_score)
            model.margin_moments.add(chosen_score - rejected_score)


def samples_in(row: dict) -> int:
    """The policy's samples a scores row stands for: identical samples (for a thinking policy, samples with one answer)
    are one candidate. A file written before the count was (one row a sample then, as far as it can tell) gives 1."""
    count = row.get("num_samples")
    return count if isinstance(count, int) and not isinstance(count, bool) else 1


def best_of(scored: list[tuple[float, float]], model: int) -> set[int]:
    best = max(both[model] for both in scored)
    return {index for index, both in enumerate(scored) if both[model] == best}


def add_prompt_scores(numbers: RunNumbers, group: list[dict]) -> None:
    numbers.unique_in_scores[len(group)] += 1  # one row per distinct candidate, as a pair's num_unique
    generated = [row for row in group if row.get("finish_reason") != "reference"]  # a sample the reference merged with counts
    numbers.distinct_samples_in_scores[len(generated)] += 1
    if generated:
        numbers.candidates += len(generated)
        samples = sum(map(samples_in, generated))
        numbers.samples += samples
        truncated = sum(samples_in(row) for row in generated if row.get("finish_reason") == "length")
        numbers.truncated += truncated
        if samples:
            numbers.truncated_share_per_prompt.add(truncated / samples)
        if any("thinking" in row for row in generated):
            numbers.unanswered_harmony = (numbers.unanswered_harmony or 0) + sum(samples_in(row) for row in generated if not row.get("completion"))
        if numbers.reasoning_end:
            numbers.unended_thinking += sum(samples_in(row) for row in generated if numbers.reasoning_end not in (row.get("completion") or ""))
        else:
            numbers.unsplit_thinking += sum(samples_in(row) for row in generated if THINKING_END in (row.get("completion") or ""))
    for row in generated:
        for name, score in row["scores"].items():
            if score is None:
                numbers.model(name).unscored += 1
            else:
                model = numbers.model(name)
                model.candidates.add(score)
                model.candidate_moments.add(score)
                model.length_and_score.add((numbers.length(row.get("completion") or ""), score))  # characters, as for pairs
    names = sorted({name for row in generated for name in row["scores"]})
    for first, second in combinations(names, 2):
        both = [(row["scores"][first], row["scores"][second]) for row in generated
                if row["scores"].get(first) is not None and row["scores"].get(second) is not None]
        if len(both) < 2:
            continue
        agreement = numbers.agreement.setdefault((first, second), Agreement())
        agreement.prompts += 1
        agreement.same_best += bool(best_of(both, 0) & best_of(both, 1))  # a tie (a verifier's) agrees with any of its best
        agreement.order_sample.add(both)
