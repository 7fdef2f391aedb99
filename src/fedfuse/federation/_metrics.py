"""Metrics aggregated across parties, weighted by the examples each one used."""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["WeightedMetrics"]


class WeightedMetrics:
    """Running example-weighted means of named metrics: ``sum n_k m_k / sum n_k``."""

    def __init__(self) -> None:
        self._sums: dict[str, float] = {}
        self.num_examples = 0
        self.count = 0

    def add(self, metrics: Mapping[str, float], num_examples: int) -> None:
        for name, value in metrics.items():
            self._sums[name] = self._sums.get(name, 0.0) + float(value) * num_examples
        self.num_examples += int(num_examples)
        self.count += 1

    def result(self) -> dict[str, float]:
        """The weighted means plus ``num_examples``; empty if nothing was added."""
        if self.num_examples == 0:
            return {}
        means = {name: total / self.num_examples for name, total in self._sums.items()}
        return {**means, "num_examples": self.num_examples}
