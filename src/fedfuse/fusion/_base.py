"""The fusion transform contract, modelled on optax's ``GradientTransformation``.

A transform is a pair of pure functions::

    init(global_weights) -> state
    update(updates, state, global_weights) -> (updates, state)

``updates`` is an iterable of ``Update``. Per-update transforms (clipping, noise) map it;
a *reducer* (``fedavg()``, ``iter_avg()``, ``median()``) folds it into a single fused update;
server-side transforms after the reducer (server momentum, Adam) refine that one update.
``chain`` composes them left to right; ``fuse`` runs a chain and checks that exactly one fused
update comes out.

A transform may return a lazy iterable only when its state does not depend on the values it
has not yet seen, so memory stays O(model) from the transport to the reducer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from fedfuse.weights import Weights

__all__ = ["FusionError", "FusionTransform", "Update", "chain", "fuse", "stateless"]


@dataclass(frozen=True, eq=False)
class Update:
    """What a party returns from a train task.

    Attributes:
        weights: the delta ``local - global`` (default) or full local weights.
        num_examples: examples the party trained on (the FedAvg weight).
        metrics: the party's training metrics (e.g. ``loss``, ``accuracy``).
        is_delta: whether ``weights`` is a delta.
        party_id: who sent it (filled in by the round loop).
    """

    weights: Weights
    num_examples: int
    metrics: Mapping[str, float] = field(default_factory=dict)
    is_delta: bool = True
    party_id: str = ""


class FusionError(ValueError):
    """A fusion chain could not produce one fused update (e.g. no updates, or no reducer)."""


State = Any
UpdateFn = Callable[[Iterable[Update], State, Weights], tuple[Iterable[Update], State]]


class FusionTransform(NamedTuple):
    """``init`` and ``update`` of one fusion step (see the module docstring)."""

    init: Callable[[Weights], State]
    update: UpdateFn


def stateless(fn: Callable[[Iterable[Update], Weights], Iterable[Update]]) -> FusionTransform:
    """A transform with no state from a function ``fn(updates, global_weights) -> updates``."""

    def init(global_weights: Weights) -> None:
        return None

    def update(updates: Iterable[Update], state: None, global_weights: Weights):
        return fn(updates, global_weights), None

    return FusionTransform(init, update)


def chain(*transforms: FusionTransform) -> FusionTransform:
    """Apply ``transforms`` in order; the state is the tuple of their states."""

    def init(global_weights: Weights) -> tuple:
        return tuple(t.init(global_weights) for t in transforms)

    def update(updates: Iterable[Update], state: tuple, global_weights: Weights):
        new_state = []
        for t, s in zip(transforms, state, strict=True):
            updates, s = t.update(updates, s, global_weights)
            new_state.append(s)
        return updates, tuple(new_state)

    return FusionTransform(init, update)


def fuse(
    transform: FusionTransform, updates: Iterable[Update], state: State, global_weights: Weights
) -> tuple[Update, State]:
    """Run ``transform`` and return its single fused update and the new state."""
    out, new_state = transform.update(updates, state, global_weights)
    out = list(out)
    if len(out) != 1:
        raise FusionError(
            f"a fusion chain must end in exactly one fused update, got {len(out)}; "
            "put a reducer such as fedavg() in the chain"
        )
    return out[0], new_state


def _float_accumulator(w: Mapping[str, np.ndarray]) -> Weights:
    """Zeros in float64 for exact folding of many float32 updates."""
    return {name: np.zeros(arr.shape, dtype=np.float64) for name, arr in w.items()}
