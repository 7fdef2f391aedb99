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

import dataclasses
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from fedfuse.weights import Weights

__all__ = [
    "FusionError",
    "FusionTransform",
    "Update",
    "apply_update",
    "chain",
    "fuse",
    "stateless",
    "with_info",
]


@dataclass(frozen=True, eq=False)
class Update:
    """What a party returns from a train task.

    Attributes:
        weights: the delta ``local - global`` (default) or full local weights.
        num_examples: examples the party trained on (the FedAvg weight).
        metrics: the party's training metrics (e.g. ``loss``, ``accuracy``).
        is_delta: whether ``weights`` is a delta.
        party_id: who sent it (filled in by the round loop).
        info: side information for the transforms (optax's ``extra_args``): the round loop
            puts ``staleness`` (model versions since the party's task started) here; a party
            may send plain data such as ``label_counts``. Transforms read what they need and
            pass the rest on; nothing in ``info`` is averaged.
    """

    weights: Weights
    num_examples: int
    metrics: Mapping[str, float] = field(default_factory=dict)
    is_delta: bool = True
    party_id: str = ""
    info: Mapping[str, Any] = field(default_factory=dict)


def with_info(update: Update, **info: Any) -> Update:
    """``update`` with ``info`` added to its side information."""
    return dataclasses.replace(update, info={**update.info, **info})


def apply_update(global_weights: Weights, fused: Update) -> Weights:
    """The new global model: ``global + fused`` for a delta, the fused weights otherwise."""
    if not fused.is_delta:
        return dict(fused.weights)
    return {name: global_weights[name] + fused.weights[name] for name in global_weights}


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
    """Run ``transform`` and return its single fused update and the new state.

    The updates must be all deltas or all full weights (a ``FusionError`` otherwise): this is
    the one place that is checked, for every chain."""
    out, new_state = transform.update(_one_kind(updates), state, global_weights)
    out = list(out)
    if len(out) != 1:
        raise FusionError(
            f"a fusion chain must end in exactly one fused update, got {len(out)}; "
            "put a reducer such as fedavg() in the chain"
        )
    return out[0], new_state


def fused_update(updates: Iterable[Update], name: str, *, delta: bool = False) -> Update:
    """The one fused update a reducer produced, for the transform ``name`` that follows it;
    ``FusionError`` if there is not exactly one (or, with ``delta``, it is not a delta)."""
    updates = list(updates)
    if len(updates) != 1:
        raise FusionError(
            f"{name} needs the one fused update of a reducer, got {len(updates)} updates; "
            f"put it after a reducer: chain(fedavg(), {name}(...))"
        )
    if delta and not updates[0].is_delta:
        raise FusionError(f"{name} needs a delta (a pseudo-gradient), not full weights")
    return updates[0]


def _one_kind(updates: Iterable[Update]) -> Iterator[Update]:
    kind = None
    for u in updates:
        if kind is None:
            kind = u.is_delta
        elif u.is_delta != kind:
            raise FusionError("cannot fuse deltas together with full weights")
        yield u


def _float_accumulator(w: Mapping[str, np.ndarray]) -> Weights:
    """Zeros in float64 for exact folding of many float32 updates."""
    return {name: np.zeros(arr.shape, dtype=np.float64) for name, arr in w.items()}
