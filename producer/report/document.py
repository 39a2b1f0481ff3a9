"""The report as text: the key numbers and warnings for the terminal, and `report.md` with the figures beside it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rsample.producer.report.figures import draw_all
from rsample.producer.report.sample import Moments
from rsample.producer.report.stats import LOW_DIVERSITY, SMALL_MARGIN, RunNumbers, read_run
from rsample.workers.common.messages import commonest_reasons


@dataclass(frozen=True)
class Report:
    lines: list[str]
    warnings: list[str]
    markdown: Path
    figures: dict[str, Path]


def warnings_of(numbers: RunNumbers) -> list[str]:
    warnings = []
    bias = numbers.length_bias()
    if bias:
        warnings.append("length bias: " + "; ".join(bias))
    if thinking := numbers.thinking_scored():
        warnings.append(thinking)
    low = numbers.low_diversity_share
    if low is not None and low >= LOW_DIVERSITY:
        warnings.append(f"low diversity: {low:.0%} of prompts have {numbers.few_distinct_text} distinct candidates (temperature too low?)")
    return warnings


def summary_lines(numbers: RunNumbers) -> list[str]:
    def sampled(sample) -> str:
        return "" if sample.exact else f"from a sample of {len(sample.items):,} of {sample.seen:,}"

    def approx(sample) -> str:
        return f" ({sampled(sample)})" if sampled(sample) else ""

    lines = [f"pairs {numbers.pairs:,}"]
    if numbers.outcomes:
        lines.append("outcomes: " + ", ".join(f"{name} {count:,}" for name, count in sorted(numbers.outcomes.items())))
        lines += [f"  skipped, {reason}: {count:,}" for reason, count in commonest_reasons(numbers.skip_reasons).items()]
    for name, model in numbers.models.items():
        lines.append(f"reward model {name}:")
        if model.margin_moments.count:
            small, reversed_share = model.small_margin_share, model.reversed_share
            lines.append(f"  margin mean {model.margin_moments.mean:.3f}, std {spread(model.margin_moments)}"
                         + (f"; {small:.0%} within ±{SMALL_MARGIN} score std" if small is not None else "")
                         + (f"; the rejected scored higher in {reversed_share:.0%} of pairs" if reversed_share else "")
                         + (approx(model.margins) if small is not None or reversed_share else ""))
        if model.candidate_moments.count:
            lines.append(f"  generated candidates' scores mean {model.candidate_moments.mean:.3f}, std {spread(model.candidate_moments)}")
        if model.unscored:
            given = model.unscored + model.candidate_moments.count
            lines.append(f"  gave no score to {model.unscored:,} of {given:,} generated candidates ({model.unscored / given:.1%}): pairs "
                         "are chosen among the others")
        rho = model.length_rho
        if rho is not None:
            lines.append(f"  rank correlation of length and score {rho:+.2f}{approx(model.length_and_score)}")
    if numbers.chosen_longer_share is not None:
        lines.append(f"chosen longer than rejected in {numbers.chosen_longer_share:.0%} of pairs")
    for (first, second), entry in sorted(numbers.agreement.items()):
        if entry.prompts:
            pairs, same = entry.pair_order
            within = ", ".join(filter(None, [f"of the {pairs:,} neither model ties", sampled(entry.order_sample)]))
            order = f", {same / pairs:.0%} of candidate pairs ordered alike ({within})" if pairs else ""
            lines.append(f"{first} and {second}: same best generated candidate on {entry.same_best / entry.prompts:.0%} of prompts{order}")
    if numbers.unique_per_prompt:
        total = sum(numbers.unique_per_prompt.values())
        mean = sum(unique * count for unique, count in numbers.unique_per_prompt.items()) / total
        lines.append(f"distinct candidates per prompt: mean {mean:.1f}; {numbers.few_distinct_text} on {numbers.low_diversity_share:.0%} of prompts")
    if numbers.samples:
        of_samples = f"{numbers.samples:,} samples ({numbers.candidates:,} distinct)"
        lines.append(f"truncated at --max-new-tokens: {numbers.truncated / numbers.samples:.1%} of {of_samples}")
        if numbers.unanswered_harmony is not None:
            lines.append(f"no answer (the final channel never began): {numbers.unanswered_harmony / numbers.samples:.1%} of "
                         f"{of_samples}; lengths above are the answers' (the final channel), thinking apart")
        if numbers.reasoning_end:
            lines.append(f"thinking never ended (no {numbers.reasoning_end!r}): {numbers.unended_thinking / numbers.samples:.1%} of "
                         f"{of_samples}; lengths above are the answers' (after {numbers.reasoning_end!r})")
    elif not numbers.has_scores:
        lines.append("no scores file: give --scores for candidates' scores, length correlation, agreement and truncation")
    return lines


def spread(moments: Moments) -> str:
    """A standard deviation, or what it is when one value cannot give one."""
    return f"{moments.std:.3f}" if moments.count > 1 else "n/a (one value)"


def write_report(pairs: Path, scores: Path | None, out_dir: Path, reasoning_end: str | None = None) -> Report:
    numbers = read_run(pairs, scores, reasoning_end)
    figures = draw_all(numbers, out_dir)
    warnings = warnings_of(numbers)
    lines = summary_lines(numbers)
    body = [f"# Run report: {pairs.name}", ""]
    body += [f"> **Warning** — {warning}" for warning in warnings] + ([""] if warnings else [])
    body += ["```", *lines, "```", ""]
    for name, path in figures.items():
        body += [f"![{name}]({path.name})", ""]
    markdown = out_dir / "report.md"
    markdown.write_text("\n".join(body))
    return Report(lines, warnings, markdown, figures)
