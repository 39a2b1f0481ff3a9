"""The report's pictures, as PNG files (matplotlib, headless): one question each, labelled so they read alone."""

from __future__ import annotations

import logging
from pathlib import Path

from rsample.producer.report.stats import RunNumbers
from rsample.workers.common.errors import first_line

SIZE = (7.5, 4.2)
DPI = 110


def _pyplot():
    import logging

    import matplotlib

    logging.getLogger("matplotlib").setLevel(logging.WARNING)  # not its font cache's first-run INFO line in a run's output
    matplotlib.use("Agg")  # no display: files only
    import matplotlib.pyplot as plt

    return plt


def _save(plt, figure, path: Path) -> Path:
    if not figure.get_constrained_layout():
        figure.tight_layout()
    figure.savefig(path, dpi=DPI)
    plt.close(figure)
    return path


def scores(numbers: RunNumbers, path: Path) -> Path | None:
    if not numbers.models:
        return None
    plt = _pyplot()
    figure, axes = plt.subplots(1, len(numbers.models), figsize=(SIZE[0] * min(2, len(numbers.models)) / 1.5, SIZE[1]), squeeze=False)
    for axis, (name, model) in zip(axes[0], numbers.models.items()):
        for label, sample, color in (("all candidates", model.candidates, "0.6"), ("chosen", model.chosen, "tab:green"),
                                     ("rejected", model.rejected, "tab:red")):
            if sample.items:
                axis.hist(sample.items, bins=_bins(sample.items), density=True, histtype="step" if label != "all candidates" else "stepfilled",
                          alpha=0.9 if label != "all candidates" else 0.4, color=color, linewidth=1.6, label=label)
        axis.set_title(_short(name), fontsize=10)
        axis.set_xlabel("score")
        axis.set_ylabel("density")
        axis.legend(fontsize=8)
    figure.suptitle("Reward scores: chosen should sit right of rejected", fontsize=11)
    return _save(plt, figure, path)


def margins(numbers: RunNumbers, path: Path) -> Path | None:
    models = {name: m for name, m in numbers.models.items() if m.margins.items}
    if not models:
        return None
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=SIZE)
    for name, model in models.items():
        axis.hist(model.margins.items, bins=_bins(model.margins.items), histtype="step", linewidth=1.6, label=_short(name))
    axis.axvline(0, color="0.3", linewidth=0.8)
    axis.set_xlabel("margin: chosen score minus rejected score")
    axis.set_ylabel("pairs")
    axis.set_title("Margins (a pile-up near 0 means weak preferences)", fontsize=11)
    axis.legend(fontsize=8)
    return _save(plt, figure, path)


def lengths(numbers: RunNumbers, path: Path) -> Path | None:
    if not numbers.length_pairs.items:
        return None
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(SIZE[1] * 1.25, SIZE[1] * 1.15))
    chosen, rejected = zip(*numbers.length_pairs.items)
    few = len(chosen) < 2000
    axis.scatter(rejected, chosen, s=24 if few else 5, alpha=0.8 if few else 0.3, color="tab:blue", linewidths=0)
    top = max(max(chosen), max(rejected), 1)
    axis.plot([0, top], [0, top], color="0.3", linewidth=0.8, label="same length")
    axis.set_xlabel("rejected length (characters)")
    axis.set_ylabel("chosen length (characters)")
    share = numbers.chosen_longer_share or 0.0
    axis.set_title(f"Chosen longer than rejected in {share:.0%} of pairs", fontsize=11)
    axis.legend(fontsize=8, loc="upper left")
    return _save(plt, figure, path)


def agreement(numbers: RunNumbers, path: Path) -> Path | None:
    names = sorted(numbers.models)
    if len(names) < 2 or not numbers.agreement:
        return None
    plt = _pyplot()
    matrix = [[1.0 if a == b else _order_agreement(numbers, a, b) for b in names] for a in names]
    figure, axis = plt.subplots(figsize=(4.8 + 0.9 * len(names), 3.6 + 0.9 * len(names)), layout="constrained")
    image = axis.imshow(matrix, vmin=0.5, vmax=1.0, cmap="viridis")
    numbers_only = [str(index + 1) for index in range(len(names))]
    axis.set_xticks(range(len(names)), numbers_only, fontsize=9)
    axis.set_yticks(range(len(names)), numbers_only, fontsize=9)
    axis.set_xlabel("\n".join(f"{index + 1}: {_short(name, 48)}" for index, name in enumerate(names)), fontsize=8)
    for i, row in enumerate(matrix):
        for j, value in enumerate(row):
            axis.text(j, i, f"{value:.2f}", ha="center", va="center", color="white" if value < 0.8 else "black", fontsize=10)
    figure.colorbar(image, ax=axis, fraction=0.046, pad=0.04).set_label("candidate pairs ordered alike", fontsize=9)
    axis.set_title("Reward models' agreement\n(0.5: no better than chance)", fontsize=10)
    return _save(plt, figure, path)


def diversity(numbers: RunNumbers, path: Path) -> Path | None:
    if not numbers.unique_per_prompt:
        return None
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=SIZE)
    counts = sorted(numbers.unique_per_prompt.items())
    axis.bar([c for c, _ in counts], [n for _, n in counts], color=["tab:red" if c <= numbers.few_distinct else "tab:blue" for c, _ in counts])
    from matplotlib.ticker import MaxNLocator

    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.set_xlabel("distinct candidates per prompt")
    axis.set_ylabel("prompts")
    axis.set_title(f"Diversity (red: {numbers.few_distinct_text} distinct candidates)", fontsize=11)
    return _save(plt, figure, path)


def truncation(numbers: RunNumbers, path: Path) -> Path | None:
    if not numbers.truncated_share_per_prompt.items:
        return None
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=SIZE)
    axis.hist([100 * s for s in numbers.truncated_share_per_prompt.items], bins=20, range=(0, 100), color="tab:orange")
    overall = numbers.truncated / numbers.samples if numbers.samples else 0.0
    axis.set_xlabel("samples cut at --max-new-tokens (% of the prompt's)")
    axis.set_ylabel("prompts")
    axis.set_title(f"Truncation: {overall:.1%} of all samples were cut", fontsize=11)
    return _save(plt, figure, path)


def _order_agreement(numbers: RunNumbers, a: str, b: str) -> float:
    entry = numbers.agreement.get((min(a, b), max(a, b)))
    pairs, same = entry.pair_order if entry else (0, 0)
    return same / pairs if pairs else float("nan")


def _bins(values: list[float]) -> int:
    """Enough bins to show a shape, few enough that a small run's bars are not single samples; one where the values
    differ by rounding alone (0.1 + 0.2 and 0.3), which finer bins cannot split (numpy refuses them)."""
    import numpy

    count = max(8, min(50, int(len(values) ** 0.5) * 2))
    with numpy.errstate(all="ignore"):
        try:
            edges = numpy.histogram_bin_edges(values, bins=count)
        except ValueError:
            return 1
    return count if numpy.isfinite(edges).all() and (numpy.diff(edges) > 0).all() else 1


def _short(name: str, limit: int = 32) -> str:
    return name if len(name) <= limit else "…" + name[-(limit - 1):]


ALL = {"scores": scores, "margins": margins, "lengths": lengths, "agreement": agreement, "diversity": diversity, "truncation": truncation}
"""Figure name -> function drawing it (None when the run has nothing to show for it)."""


def draw_all(numbers: RunNumbers, directory: Path) -> dict[str, Path]:
    """The figures that could be drawn: one that fails (on values no one foresaw) costs itself alone, with a warning."""
    directory.mkdir(parents=True, exist_ok=True)
    drawn = {}
    for name, draw in ALL.items():
        try:
            drawn[name] = draw(numbers, directory / f"{name}.png")
        except Exception as exc:
            logging.getLogger(__name__).warning("report figure %r not drawn: %s", name, first_line(exc, with_type=True))
            _pyplot().close("all")
    for name in ALL:  # an earlier report's figure that this one has not (a report drawn before without the scores)
        if drawn.get(name) is None:
            (directory / f"{name}.png").unlink(missing_ok=True)
    return {name: path for name, path in drawn.items() if path is not None}
