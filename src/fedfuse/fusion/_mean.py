"""Means that fold updates one at a time: memory O(model), whatever the number of parties."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from fedfuse.fusion._base import FusionError, FusionTransform, Update, _float_accumulator, stateless
from fedfuse.weights import Weights, add_scaled_

__all__ = ["fedavg", "iter_avg", "weighted_mean"]


def weighted_mean(weight_of: Callable[[Update], float]) -> FusionTransform:
    """A reducer: ``sum_k c_k u_k / sum_k c_k`` with ``c_k = weight_of(update_k)``.

    Folded in float64, one update at a time, then cast back to each parameter's dtype.
    Updates must all be deltas or all be full weights.
    """

    def reduce(updates: Iterable[Update], global_weights: Weights) -> list[Update]:
        acc: Weights | None = None
        total_weight, total_examples, is_delta = 0.0, 0, None
        metrics: dict[str, float] = {}
        for u in updates:
            is_delta = u.is_delta  # all of one kind: fuse() checks it
            c = float(weight_of(u))
            if c < 0:
                raise FusionError(f"update from {u.party_id!r} has negative weight {c}")
            if acc is None:
                acc = _float_accumulator(u.weights)
            add_scaled_(acc, u.weights, c)
            total_weight += c
            total_examples += u.num_examples
        if acc is None:
            raise FusionError("no updates to fuse")
        if total_weight <= 0:
            raise FusionError("the updates' total weight is zero")
        fused = {
            name: (arr / total_weight).astype(global_weights[name].dtype, copy=False)
            for name, arr in acc.items()
        }
        return [Update(fused, total_examples, metrics, bool(is_delta), party_id="fused")]

    return stateless(reduce)


def fedavg() -> FusionTransform:
    """Federated averaging: the mean of updates weighted by ``num_examples``.

    ``w <- w + sum_k n_k Δ_k / sum_k n_k``.

    References:
        McMahan et al., "Communication-Efficient Learning of Deep Networks from Decentralized
        Data", AISTATS 2017.
    """
    return weighted_mean(lambda u: u.num_examples)


def iter_avg() -> FusionTransform:
    """Iterative averaging: the plain (unweighted) mean of the parties' updates.

    ``w <- w + (1/K) sum_k Δ_k`` — the Model Fusion API's ``iter_avg``.
    """
    return weighted_mean(lambda u: 1.0)
