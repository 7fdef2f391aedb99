"""Staleness weighting for buffered asynchronous aggregation, as an ordinary transform."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator

from fedfuse.fusion._base import FusionTransform, Update, stateless
from fedfuse.weights import Weights, scale

__all__ = ["scale_by_staleness", "staleness_weight"]


def staleness_weight(staleness: int, exponent: float) -> float:
    """``(1 + staleness) ** -exponent``: 1 for a fresh update, less the older it is."""
    return float((1 + staleness) ** -exponent)


def scale_by_staleness(exponent: float = 0.5) -> FusionTransform:
    """Scale each update by ``(1 + s) ** -exponent``, ``s = update.info["staleness"]``.

    ``s`` counts the global model versions fused since the party's task started (the round loop
    records it in ``info``; an update without it counts as fresh). With FedBuff's default
    ``exponent = 0.5`` an update two versions old counts ``1/sqrt(3)`` of a fresh one; put this
    before the reducer (``chain(scale_by_staleness(0.5), fedavg())``).

    References:
        Nguyen et al., "Federated Learning with Buffered Asynchronous Aggregation", AISTATS
        2022 (polynomial staleness weighting, their Eq. 5).
    """
    if isinstance(exponent, bool) or not (isinstance(exponent, int | float) and exponent >= 0):
        raise ValueError(f"scale_by_staleness: exponent must be a number >= 0, got {exponent!r}")

    def weigh(updates: Iterable[Update], global_weights: Weights) -> Iterator[Update]:
        for u in updates:
            weight = staleness_weight(int(u.info.get("staleness", 0)), exponent)
            yield u if weight == 1.0 else dataclasses.replace(u, weights=scale(u.weights, weight))

    return stateless(weigh)
