"""Bounded memory over any number of rows: a uniform reservoir sample for pictures and rank statistics, exact
running moments for the printed means."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass
class Reservoir(Generic[T]):
    """A uniform sample of at most `capacity` of the items added (Li's algorithm L: once full, it draws how many
    items to skip before the next replacement, so most items cost a comparison, not a random number)."""

    capacity: int = 200_000
    seen: int = 0
    items: list[T] = field(default_factory=list)
    rng: random.Random = field(default_factory=lambda: random.Random(0))
    _weight: float = 1.0
    _next: int = 0

    def add(self, item: T) -> None:
        self.seen += 1
        if len(self.items) < self.capacity:
            self.items.append(item)
            if len(self.items) == self.capacity:
                self._advance()
        elif self.seen == self._next:
            self.items[self.rng.randrange(self.capacity)] = item
            self._advance()

    def _advance(self) -> None:
        self._weight *= math.exp(math.log(1.0 - self.rng.random()) / self.capacity)
        self._next = self.seen + 1 + int(math.log(1.0 - self.rng.random()) / math.log(1.0 - self._weight)) if self._weight < 1 else self.seen + 1

    @property
    def exact(self) -> bool:
        return self.seen == len(self.items)


@dataclass
class Moments:
    """Count, mean and standard deviation, exact, in one pass (Welford)."""

    count: int = 0
    mean: float = 0.0
    _m2: float = 0.0

    def add(self, value: float) -> None:
        self.count += 1
        delta = value - self.mean
        self.mean += delta / self.count
        self._m2 += delta * (value - self.mean)

    @property
    def std(self) -> float:
        return math.sqrt(self._m2 / (self.count - 1)) if self.count > 1 else 0.0


def spearman(pairs: list[tuple[float, float]]) -> float | None:
    """Spearman's rank correlation (average ranks for ties); None for fewer than 3 pairs or a constant side."""
    if len(pairs) < 3:
        return None

    def ranks(values: list[float]) -> list[float]:
        order = sorted(range(len(values)), key=values.__getitem__)
        result = [0.0] * len(values)
        start = 0
        while start < len(order):
            end = start
            while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
                end += 1
            for position in range(start, end + 1):
                result[order[position]] = (start + end) / 2
            start = end + 1
        return result

    xs, ys = ranks([p[0] for p in pairs]), ranks([p[1] for p in pairs])
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    covariance = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys))
    spread = math.sqrt(sum((x - mean_x) ** 2 for x in xs) * sum((y - mean_y) ** 2 for y in ys))
    return covariance / spread if spread else None
