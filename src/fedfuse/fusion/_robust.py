"""Robust fusion: rules that a few malicious or broken parties cannot steer.

``clip_by_norm`` works one update at a time (lazy, memory O(model)). ``median``,
``trimmed_mean`` and ``krum_select`` (with ``krum`` and ``multi_krum`` built on it) must see
all updates at once: they hold every update of the round, so the aggregator needs memory
O(parties x model) while they run.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator

import numpy as np

from fedfuse.fusion._base import (
    FusionError,
    FusionTransform,
    Update,
    chain,
    stateless,
    with_info,
)
from fedfuse.fusion._mean import iter_avg
from fedfuse.weights import Weights, global_norm, scale

__all__ = ["clip_by_norm", "krum", "krum_select", "median", "multi_krum", "trimmed_mean"]


def clip_by_norm(max_norm: float) -> FusionTransform:
    """Scale each update down to an L2 norm of at most ``max_norm``: ``u · min(1, c / ||u||)``.

    Per update and lazy: updates stream through one at a time. Bounds how far any one party
    can pull the model (and is the sensitivity bound of differential privacy): each update
    leaves with ``info["clip_norm"] = max_norm``, which ``dp_mean`` reads as the sensitivity.

    References:
        McMahan et al., "Learning Differentially Private Recurrent Language Models", ICLR 2018.
    """
    if not (isinstance(max_norm, int | float) and max_norm > 0):
        raise ValueError(f"clip_by_norm: max_norm must be a number > 0, got {max_norm!r}")

    def clip(updates: Iterable[Update], global_weights: Weights) -> Iterator[Update]:
        for u in updates:
            norm = global_norm(u.weights)
            if norm > max_norm:
                u = dataclasses.replace(u, weights=scale(u.weights, max_norm / norm))
            yield with_info(u, clip_norm=float(max_norm))

    return stateless(clip)


def _all(updates: Iterable[Update], rule: str) -> list[Update]:
    updates = list(updates)
    if not updates:
        raise FusionError("no updates to fuse")
    return updates


def _coordinatewise(
    rule: str, combine: Callable[[np.ndarray], np.ndarray], min_updates: Callable[[int], int]
) -> FusionTransform:
    def reduce(updates: Iterable[Update], global_weights: Weights) -> list[Update]:
        updates = _all(updates, rule)
        if len(updates) < min_updates(len(updates)):
            raise FusionError(f"{rule} needs at least {min_updates(len(updates))} updates")
        fused = {}
        for name, ref in global_weights.items():
            stacked = np.stack([u.weights[name] for u in updates])
            fused[name] = combine(stacked).astype(ref.dtype, copy=False)
        total = sum(u.num_examples for u in updates)
        return [Update(fused, total, {}, updates[0].is_delta, party_id="fused")]

    return stateless(reduce)


def median() -> FusionTransform:
    """Coordinate-wise median of the updates (unweighted).

    Needs all updates at once: memory O(parties x model).

    References:
        Yin et al., "Byzantine-Robust Distributed Learning: Towards Optimal Statistical Rates",
        ICML 2018.
    """
    return _coordinatewise("median", lambda s: np.median(s, axis=0), lambda k: 1)


def trimmed_mean(trim_fraction: float = 0.1) -> FusionTransform:
    """Coordinate-wise trimmed mean: drop the ``⌊βK⌋`` largest and smallest values of each
    coordinate among the K updates, average the rest (unweighted), with
    ``β = trim_fraction`` in ``[0, 0.5)``.

    Needs all updates at once: memory O(parties x model).

    References:
        Yin et al., "Byzantine-Robust Distributed Learning: Towards Optimal Statistical Rates",
        ICML 2018.
    """
    if not (isinstance(trim_fraction, int | float) and 0 <= trim_fraction < 0.5):
        raise ValueError(f"trimmed_mean: trim_fraction must be in [0, 0.5), got {trim_fraction!r}")

    def combine(stacked: np.ndarray) -> np.ndarray:
        cut = int(np.floor(trim_fraction * len(stacked)))
        kept = np.sort(stacked, axis=0)[cut : len(stacked) - cut]
        return kept.mean(axis=0, dtype=np.float64)

    return _coordinatewise("trimmed_mean", combine, lambda k: 1)


def _krum_scores(updates: list[Update], num_byzantine: int) -> np.ndarray:
    """Score of each update: the sum of squared distances to its ``K - f - 2`` nearest others
    (``f = num_byzantine``)."""
    k = len(updates)
    gram = np.zeros((k, k), dtype=np.float64)
    for name in updates[0].weights:
        flat = np.stack([u.weights[name].ravel() for u in updates]).astype(np.float64)
        gram += flat @ flat.T
    sq = np.diag(gram)
    dist = np.maximum(sq[:, None] + sq[None, :] - 2 * gram, 0.0)
    np.fill_diagonal(dist, np.inf)
    nearest = np.sort(dist, axis=1)[:, : k - num_byzantine - 2]
    return nearest.sum(axis=1)


def krum_select(num_byzantine: int, num_selected: int = 1) -> FusionTransform:
    """Keep the ``m = num_selected`` updates with the lowest Krum scores, for a reducer after
    it; ``f = num_byzantine`` is how many parties may be Byzantine.

    The score of update ``i`` is ``sum_{j in N_i} ||u_i - u_j||²`` over its ``K - f - 2``
    nearest neighbours; with at most ``f`` Byzantine parties among ``K > 2f + 2`` updates,
    an honest-looking update wins. Needs all updates at once: memory O(parties x model).

    References:
        Blanchard et al., "Machine Learning with Adversaries: Byzantine Tolerant Gradient
        Descent", NeurIPS 2017 (Krum, Multi-Krum).
    """
    f, m = num_byzantine, num_selected
    if isinstance(f, bool) or not isinstance(f, int) or f < 0:
        raise ValueError(f"krum: num_byzantine must be an integer >= 0, got {f!r}")
    if isinstance(m, bool) or not isinstance(m, int) or m < 1:
        raise ValueError(f"krum: num_selected must be an integer >= 1, got {m!r}")

    def select(updates: Iterable[Update], global_weights: Weights) -> list[Update]:
        updates = _all(updates, "krum")
        if len(updates) <= 2 * f + 2:
            raise FusionError(
                f"krum with num_byzantine={f} needs more than {2 * f + 2} updates, "
                f"got {len(updates)}"
            )
        order = np.argsort(_krum_scores(updates, f), kind="stable")
        return [updates[i] for i in sorted(order[:m])]

    return stateless(select)


def krum(num_byzantine: int = 1) -> FusionTransform:
    """Krum: the one update with the lowest Krum score (see ``krum_select``)."""
    return chain(krum_select(num_byzantine, 1), iter_avg())


def multi_krum(num_byzantine: int = 1, num_selected: int | None = None) -> FusionTransform:
    """Multi-Krum: the plain mean of the ``num_selected`` updates with the lowest Krum scores.

    ``num_selected`` defaults to ``K - num_byzantine`` (every update but as many as may be
    Byzantine), taken when the round's updates arrive.
    """
    if num_selected is not None:
        return chain(krum_select(num_byzantine, num_selected), iter_avg())

    def select_all_but_f(updates: Iterable[Update], global_weights: Weights) -> list[Update]:
        updates = _all(updates, "multi_krum")
        keep = max(1, len(updates) - num_byzantine)
        return krum_select(num_byzantine, keep).update(updates, None, global_weights)[0]

    return chain(stateless(select_all_but_f), iter_avg())
