"""Metrics aggregated across parties, weighted by the examples each one used."""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["WeightedMetrics"]


class WeightedMetrics:
    """Running example-weighted means of named metrics, each over the parties that reported it.

    ``mean(m) = sum_k n_k m_k / sum_k n_k`` where ``k`` runs over the parties whose metrics hold
    ``m``: a party that reports no ``accuracy`` (a Flower ``fit`` that returns ``{}``) is left out
    of the accuracy's mean instead of counting as 0, as Flower's and TFF's aggregations do.
    ``num_examples`` in the result counts the examples of every party added.
    """

    def __init__(self) -> None:
        self._sums: dict[str, float] = {}
        self._weights: dict[str, int] = {}
        self.num_examples = 0
        self.count = 0

    def add(self, metrics: Mapping[str, float], num_examples: int) -> None:
        for name, value in metrics.items():
            if name == "num_examples":
                continue
            self._sums[name] = self._sums.get(name, 0.0) + float(value) * num_examples
            self._weights[name] = self._weights.get(name, 0) + int(num_examples)
        self.num_examples += int(num_examples)
        self.count += 1

    def result(self) -> dict[str, float]:
        """The weighted means plus ``num_examples``; empty if nothing was added."""
        if self.num_examples == 0:
            return {}
        means = {
            name: total / self._weights[name]
            for name, total in self._sums.items()
            if self._weights[name] > 0
        }
        return {**means, "num_examples": self.num_examples}
