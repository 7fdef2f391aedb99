"""One-shot fusion of independently trained networks by neuron matching.

Two networks trained from different random initializations compute similar features in a
different order: hidden unit 3 of one may be unit 17 of the other. Averaging them coordinate by
coordinate mixes unrelated units and the result is usually no better than chance. Matching first
finds, layer by layer, the permutation of each model's hidden units that best lines them up
with a reference, applies it (which does not change what the model computes), and only then
averages.

The permutations are found by *weight matching*: coordinate descent over the layers, each step a
linear assignment problem (``scipy.optimize.linear_sum_assignment``) that maximizes the inner
product between the reference's and the permuted model's incoming and outgoing weights of the
layer's units. With more than two models every model is aligned to the reference, the aligned
models are averaged (weighted by examples), and the alignment is repeated against that average
(``passes`` times).

Layers are read from the weights' names and shapes in PyTorch's layout: a layer is a module
prefix with a ``weight`` of two or more dimensions (``Linear`` ``(out, in)``, ``Conv2d``
``(out, in, kh, kw)``) and usually a ``bias``; a module whose arrays are all 1-D with one entry
per unit of the layer before it (``BatchNorm``: ``weight``, ``bias``, ``running_mean``,
``running_var``) is permuted with that layer. A ``Flatten`` between a convolution with ``C``
channels and a linear layer with ``C * s`` inputs is handled (channel-major blocks of ``s``).
The last layer's outputs (the classes) are never permuted.

References:
    Ainsworth, Hayase and Srinivasa, "Git Re-Basin: Merging Models modulo Permutation
    Symmetries", ICLR 2023 (weight matching).
    Wang et al., "Federated Learning with Matched Averaging", ICLR 2020 (FedMA).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from fedfuse._extras import import_extra
from fedfuse._natural import natural_key
from fedfuse.fusion._base import FusionError, FusionTransform, Update, stateless
from fedfuse.weights import Weights

__all__ = [
    "Layer",
    "align",
    "align_activations",
    "average",
    "infer_layers",
    "matched_average",
    "matched_fusion",
]


@dataclass(frozen=True)
class Layer:
    """One permutable layer: its ``weight`` (and ``bias``), and per-unit arrays that follow it."""

    weight: str
    bias: str | None
    per_unit: tuple[str, ...] = ()


def infer_layers(weights: Mapping[str, np.ndarray]) -> list[Layer]:
    """The layers of a feed-forward network, in order, from PyTorch-style names and shapes."""
    groups: dict[str, dict[str, str]] = {}
    for name in weights:
        prefix, _, leaf = name.rpartition(".")
        groups.setdefault(prefix, {})[leaf] = name
    layers: list[Layer] = []
    for prefix in sorted(groups, key=natural_key):
        members = groups[prefix]
        weight = members.get("weight")
        if weight is not None and weights[weight].ndim >= 2:
            layers.append(Layer(weight, members.get("bias")))
            continue
        units = weights[layers[-1].weight].shape[0] if layers else None
        if layers and all(weights[n].shape == (units,) for n in members.values()):
            last = layers[-1]
            layers[-1] = Layer(
                last.weight, last.bias, last.per_unit + tuple(sorted(members.values()))
            )
            continue
        raise FusionError(
            f"cannot read the layer structure at {prefix!r} ({sorted(members)}): matching "
            "needs a feed-forward network of Linear/Conv layers (PyTorch names and layouts)"
        )
    if len(layers) < 2:
        raise FusionError("matching needs at least two layers (one hidden layer to permute)")
    return layers


def _inputs_view(w: np.ndarray, units: int) -> np.ndarray:
    """``w``'s input axis as the first axis, ``(units, -1)``; Flatten blocks are grouped."""
    blocks = w.reshape(w.shape[0], units, -1)
    return np.moveaxis(blocks, 1, 0).reshape(units, -1)


def _permute_inputs(w: np.ndarray, perm: np.ndarray) -> np.ndarray:
    shape = w.shape
    return w.reshape(shape[0], len(perm), -1)[:, perm].reshape(shape)


def _apply(weights: Mapping[str, np.ndarray], layers: Sequence[Layer], perms) -> Weights:
    """``weights`` with hidden layer ``l``'s units reordered by ``perms[l]``."""
    out = {name: np.asarray(arr) for name, arr in weights.items()}
    for i, perm in enumerate(perms):
        layer, following = layers[i], layers[i + 1]
        for name in (layer.weight, layer.bias, *layer.per_unit):
            if name is not None:
                out[name] = out[name][perm]
        out[following.weight] = _permute_inputs(out[following.weight], perm)
    return out


def _unit_features(w: Mapping[str, np.ndarray], layers: Sequence[Layer], i: int) -> np.ndarray:
    """Incoming and outgoing weights of hidden layer ``i``'s units, one row per unit."""
    layer = layers[i]
    units = w[layer.weight].shape[0]
    parts = [w[layer.weight].reshape(units, -1)]
    parts += [w[n].reshape(units, 1) for n in (layer.bias, *layer.per_unit) if n is not None]
    parts.append(_inputs_view(w[layers[i + 1].weight], units))
    return np.concatenate(parts, axis=1)


def align(
    reference: Mapping[str, np.ndarray],
    other: Mapping[str, np.ndarray],
    layers: Sequence[Layer] | None = None,
    *,
    max_sweeps: int = 20,
    seed: int = 0,
) -> Weights:
    """``other`` with its hidden units permuted to line up with ``reference`` (weight matching).

    The result computes exactly the same function as ``other``.
    """
    optimize = import_extra("scipy.optimize", "matching", "neuron matching")
    layers = list(layers) if layers is not None else infer_layers(reference)
    hidden = len(layers) - 1
    perms = [np.arange(reference[layers[i].weight].shape[0]) for i in range(hidden)]
    rng = np.random.default_rng(seed)
    for _ in range(max_sweeps):
        changed = False
        for i in rng.permutation(hidden):
            # this layer's units in their own order, every other layer as matched so far
            trial = [np.arange(len(p)) if j == i else p for j, p in enumerate(perms)]
            current = _apply(other, layers, trial)
            cost = _unit_features(reference, layers, i) @ _unit_features(current, layers, i).T
            _, perm = optimize.linear_sum_assignment(cost, maximize=True)
            if not np.array_equal(perm, perms[i]):
                perms[i], changed = perm, True
        if not changed:
            break
    return _apply(other, layers, perms)


def _standardized(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    return (a - a.mean(axis=0)) / (a.std(axis=0) + 1e-8)


def align_activations(
    reference: Sequence[np.ndarray],
    other: Sequence[np.ndarray],
    weights: Mapping[str, np.ndarray],
    layers: Sequence[Layer] | None = None,
) -> Weights:
    """``weights`` permuted so each hidden unit lines up with the reference unit whose
    activations it correlates with most (activation matching).

    ``reference[i]`` and ``other[i]`` are the activations of hidden layer ``i``'s units on the
    same inputs, ``(samples, units)`` (for a convolution, every position is a sample). Each
    layer is one linear assignment problem on the correlation matrix; the result computes the
    same function as ``weights``.
    """
    optimize = import_extra("scipy.optimize", "matching", "neuron matching")
    layers = list(layers) if layers is not None else infer_layers(weights)
    if len(reference) != len(layers) - 1 or len(other) != len(layers) - 1:
        raise FusionError(f"need the activations of {len(layers) - 1} hidden layers")
    perms = []
    for ref, act in zip(reference, other, strict=True):
        correlation = _standardized(ref).T @ _standardized(act) / len(ref)
        perms.append(optimize.linear_sum_assignment(correlation, maximize=True)[1])
    return _apply(weights, layers, perms)


def _mean(models: Sequence[Mapping[str, np.ndarray]], weights: Sequence[float]) -> Weights:
    total = float(sum(weights))
    return {
        name: sum(c * m[name].astype(np.float64) for c, m in zip(weights, models, strict=True))
        / total
        for name in models[0]
    }


def _output_mean(
    models: Sequence[Mapping[str, np.ndarray]], last: Layer, per_output: Sequence[np.ndarray]
) -> dict[str, np.ndarray]:
    """The last layer's rows averaged per output unit with weights ``per_output[k][c]``."""
    c = np.asarray(per_output, dtype=np.float64) + 1e-9  # an output no model saw: plain mean
    out = {}
    for name in (last.weight, last.bias):
        if name is None:
            continue
        shape = (-1,) + (1,) * (models[0][name].ndim - 1)
        total = sum(ck.reshape(shape) * m[name] for ck, m in zip(c, models, strict=True))
        out[name] = total / c.sum(axis=0).reshape(shape)
    return out


def average(
    models: Sequence[Mapping[str, np.ndarray]],
    num_examples: Sequence[int] | None = None,
    *,
    output_weights: Sequence[np.ndarray] | None = None,
    layers: Sequence[Layer] | None = None,
) -> Weights:
    """Plain coordinate-wise average (weighted by ``num_examples``), without matching.

    With ``output_weights`` (one array per model with a weight per output unit, e.g. each
    party's example count per class) the last layer's rows are averaged class by class with
    those weights, so a class is predicted by the models that saw it: what label-skewed
    parties need. Returns the first model's dtypes.
    """
    if len(models) < 1:
        raise FusionError("no models to fuse")
    counts = list(num_examples) if num_examples is not None else [1] * len(models)
    result = _mean(models, counts)
    if output_weights is not None:
        last = (list(layers) if layers is not None else infer_layers(models[0]))[-1]
        result.update(_output_mean(models, last, output_weights))
    return {name: arr.astype(models[0][name].dtype) for name, arr in result.items()}


def matched_average(
    models: Sequence[Mapping[str, np.ndarray]],
    num_examples: Sequence[int] | None = None,
    *,
    output_weights: Sequence[np.ndarray] | None = None,
    activations: Sequence[Sequence[np.ndarray]] | None = None,
    layers: Sequence[Layer] | None = None,
    passes: int = 2,
    seed: int = 0,
) -> Weights:
    """Align ``models`` to the first one, then ``average`` them.

    With ``activations`` (per model, the hidden layers' activations on the same inputs, e.g.
    unlabeled data the aggregator holds) units are matched by activation correlation
    (``align_activations``). Without, by weight matching (``align``): every model is aligned to
    the first and averaged, then aligned again to that average, ``passes`` times in all. Weight
    matching needs models trained far from their initialization; with little training the
    random initial weights dominate and activations match better. ``num_examples`` and
    ``output_weights`` are as for ``average``.
    """
    if len(models) < 1:
        raise FusionError("no models to fuse")
    layers = list(layers) if layers is not None else infer_layers(models[0])
    if activations is not None:
        aligned = [
            align_activations(activations[0], acts, m, layers)
            for m, acts in zip(models, activations, strict=True)
        ]
        return average(aligned, num_examples, output_weights=output_weights, layers=layers)
    target: Mapping[str, np.ndarray] = models[0]
    for _ in range(max(passes, 1)):
        aligned = [align(target, m, layers, seed=seed) for m in models]
        target = average(aligned, num_examples, output_weights=output_weights, layers=layers)
    return dict(target)


def _models(updates: list[Update], global_weights: Weights) -> list[Mapping[str, np.ndarray]]:
    """Full models of ``updates`` (deltas are added to the global weights)."""
    if updates[0].is_delta:  # all of one kind: fuse() checks it
        return [{n: global_weights[n] + a for n, a in u.weights.items()} for u in updates]
    return [u.weights for u in updates]


def _label_weights(
    updates: list[Update], layers: Sequence[Layer], global_weights: Weights
) -> list[np.ndarray] | None:
    """Each update's ``info["label_counts"]``, padded to the model's outputs, when every
    update carries them (``TrainConfig.share_label_counts``); else ``None``."""
    counts = [u.info.get("label_counts") for u in updates]
    if any(c is None for c in counts):
        return None
    outputs = global_weights[layers[-1].weight].shape[0]
    padded = []
    for u, c in zip(updates, counts, strict=True):
        c = np.asarray(c, dtype=np.float64).ravel()
        if len(c) > outputs or not np.isfinite(c).all() or (c < 0).any():
            raise FusionError(
                f"label_counts of {u.party_id!r} must be {outputs} or fewer counts >= 0"
            )
        padded.append(np.pad(c, (0, outputs - len(c))))
    return padded


def _fused_update(fused: Weights, updates: list[Update], global_weights: Weights) -> list[Update]:
    is_delta = updates[0].is_delta
    if is_delta:
        fused = {
            n: (a - global_weights[n]).astype(global_weights[n].dtype) for n, a in fused.items()
        }
    total = sum(u.num_examples for u in updates)
    return [Update(fused, total, {}, is_delta, party_id="fused")]


def classwise_fusion() -> FusionTransform:
    """A reducer: the models' example-weighted average whose classifier rows are averaged
    class by class with the parties' ``info["label_counts"]`` (``average`` with
    ``output_weights``), so each class is predicted by the models that saw it. Without label
    counts on every update it is a plain example-weighted average. Needs all updates at once.

    References:
        Wang et al., "Federated Learning with Matched Averaging", ICLR 2020 (output layers
        of label-skewed parties).
    """

    def reduce(updates: Iterable[Update], global_weights: Weights) -> list[Update]:
        updates = list(updates)
        if not updates:
            raise FusionError("no updates to fuse")
        layers = infer_layers(global_weights)
        per_class = _label_weights(updates, layers, global_weights)
        models = _models(updates, global_weights)
        examples = [u.num_examples for u in updates]
        fused = average(models, examples, output_weights=per_class, layers=layers)
        return _fused_update(fused, updates, global_weights)

    return stateless(reduce)


def matched_fusion(passes: int = 2, seed: int = 0) -> FusionTransform:
    """A reducer: ``matched_average`` of the parties' models, weighted by examples.

    Side information on the updates is used when every update has it: ``label_counts``
    average the classifier class by class (as ``classwise_fusion``), ``activations`` (the hidden
    layers' activations of each model on the same inputs, e.g. the aggregator's unlabeled data)
    match units by activation instead of by weight. It needs all updates at once (memory
    O(parties * model)). Deltas are turned into models by adding the global weights; the fused
    update is of the same kind (delta or full) as the updates.
    """

    def reduce(updates: Iterable[Update], global_weights: Weights) -> list[Update]:
        updates = list(updates)
        if not updates:
            raise FusionError("no updates to fuse")
        layers = infer_layers(global_weights)
        activations = [u.info.get("activations") for u in updates]
        fused = matched_average(
            _models(updates, global_weights),
            [u.num_examples for u in updates],
            output_weights=_label_weights(updates, layers, global_weights),
            activations=None if any(a is None for a in activations) else activations,
            layers=layers,
            passes=passes,
            seed=seed,
        )
        return _fused_update(fused, updates, global_weights)

    return stateless(reduce)
