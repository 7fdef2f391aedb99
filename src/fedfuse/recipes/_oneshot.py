"""One-shot fusion of edge models trained independently, from different random initializations.

Each party builds the model from its own seed, trains it on its own data once, and sends it.
The aggregator fuses the models in one step, with no further rounds: by a plain average, or by
``matched_average`` (neuron matching, then averaging), optionally averaging the classifier's
rows class by class with the parties' label counts (``label_counts``). Units are matched by
their activations on unlabeled inputs the aggregator holds (``inputs``), or, without inputs,
by their weights.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from fedfuse.data import ArrayDataset, FederatedDataset
from fedfuse.federation import derive_seed
from fedfuse.fusion import (
    Layer,
    Update,
    classwise_fusion,
    fuse,
    infer_layers,
    matched_fusion,
    with_info,
)
from fedfuse.models import TorchAdapter, TrainConfig, torch_seed
from fedfuse.recipes._ensemble import train_edge_models
from fedfuse.runtime import LocalPool, PartyPool
from fedfuse.weights import Weights

__all__ = [
    "OneShotResult",
    "compare_oneshot",
    "hidden_activations",
    "independent_inits",
    "oneshot_fusion",
]


@dataclass
class OneShotResult:
    """The parties' models and the two fusions of them."""

    edges: dict[str, Weights]
    num_examples: dict[str, int]
    plain: Weights
    matched: Weights
    label_counts: dict[str, np.ndarray] = field(default_factory=dict)


def hidden_activations(
    module: nn.Module, weights: Weights, x: np.ndarray, layers: Sequence[Layer] | None = None
) -> list[np.ndarray]:
    """Activations of every hidden layer's units on inputs ``x``, ``(samples, units)`` each.

    What reaches the next layer is recorded (after the nonlinearity, normalization, pooling and
    flattening), regrouped per unit: a convolution's every position, or a flattened channel's
    every entry, counts as a sample.
    """
    layers = list(layers) if layers is not None else infer_layers(weights)
    adapter = TorchAdapter(module)
    adapter.set_weights(weights)
    captured: list[torch.Tensor] = []
    handles = [
        module.get_submodule(layer.weight.rpartition(".")[0]).register_forward_pre_hook(
            lambda _, inputs: captured.append(inputs[0].detach())
        )
        for layer in layers[1:]
    ]
    try:
        adapter.predict(x, batch_size=len(x))
    finally:
        for handle in handles:
            handle.remove()
    out = []
    for layer, act in zip(layers[:-1], captured, strict=True):
        units = weights[layer.weight].shape[0]
        per_unit = act.reshape(act.shape[0], units, -1).transpose(1, 2).reshape(-1, units)
        out.append(per_unit.numpy())
    return out


def independent_inits(
    model_fn: Callable[[], nn.Module], party_ids: Sequence[str], seed: int = 0
) -> dict[str, Weights]:
    """A differently seeded initialization of ``model_fn()`` for every party."""
    inits = {}
    for pid in party_ids:
        with torch_seed(derive_seed(seed, 0, f"init:{pid}")):
            inits[pid] = TorchAdapter(model_fn()).get_weights()
    return inits


def _fused(transform: Any, updates: Sequence[Update]) -> Weights:
    """The full weights ``transform`` fuses ``updates`` (full weights) into."""
    return fuse(transform, updates, None, updates[0].weights)[0].weights


def _without_label_counts(updates: Sequence[Update]) -> list[Update]:
    return [
        dataclasses.replace(u, info={k: v for k, v in u.info.items() if k != "label_counts"})
        for u in updates
    ]


def oneshot_fusion(
    pool: PartyPool,
    model_fn: Callable[[], nn.Module],
    config: TrainConfig,
    *,
    inputs: np.ndarray | None = None,
    party_ids: Sequence[str] | None = None,
    seed: int = 0,
    passes: int = 2,
) -> OneShotResult:
    """Train one model per party from independent inits; fuse them by plain and matched averaging.

    Both fusions are ordinary transforms (``classwise_fusion``, ``matched_fusion``) fed what the
    parties sent: with ``config.share_label_counts`` each party's update carries its label
    counts in ``info``, and both fusions average the output layer class by class; without, by
    examples. ``inputs`` (unlabeled, held by the aggregator) selects activation matching (the
    aggregator puts each model's activations in its update's ``info``), else weight matching.
    """
    party_ids = list(party_ids or pool.party_ids())
    trained = train_edge_models(
        pool, independent_inits(model_fn, party_ids, seed), config, party_ids=party_ids, seed=seed
    )
    updates = [trained[p] for p in party_ids]
    if inputs is not None:
        updates = [
            with_info(u, activations=hidden_activations(model_fn(), u.weights, inputs))
            for u in updates
        ]
    counts = {p: trained[p].info.get("label_counts") for p in party_ids}
    return OneShotResult(
        {p: trained[p].weights for p in party_ids},
        {p: trained[p].num_examples for p in party_ids},
        _fused(classwise_fusion(), updates),
        _fused(matched_fusion(passes, seed), updates),
        {p: np.asarray(c) for p, c in counts.items() if c is not None},
    )


def compare_oneshot(
    fed: FederatedDataset,
    model_fn: Callable[[], nn.Module],
    config: TrainConfig,
    *,
    seed: int = 0,
    passes: int = 2,
    max_inputs: int = 2000,
) -> dict[str, Any]:
    """Edge models from independent inits against their plain and matched fusions.

    The aggregator's central test set (its first ``max_inputs`` examples) serves as its
    unlabeled inputs for activation matching;
    every model is scored on the union of the parties' test splits. Fusions: ``plain``,
    ``matched`` (activations), ``weight_matched`` (weights, no data), each also with the output
    layer averaged class by class with the parties' label counts (``*_classwise``).
    """
    if fed.test is None:
        raise ValueError("activation matching needs inputs the aggregator holds (fed.test)")
    tests = fed.test_data()
    if not tests:
        raise ValueError("one-shot fusion is scored on the parties' test splits; there are none")
    pool = LocalPool.from_dataset(fed, TorchAdapter(model_fn()))
    party_ids = fed.party_ids
    shared = dataclasses.replace(config, share_label_counts=True)  # the parties send them
    updates = train_edge_models(
        pool, independent_inits(model_fn, party_ids, seed), shared, party_ids=party_ids, seed=seed
    )
    inputs = fed.test.x[:max_inputs]
    classwise = [updates[p] for p in party_ids]
    with_activations = [
        with_info(u, activations=hidden_activations(model_fn(), u.weights, inputs))
        for u in classwise
    ]
    fused = {}
    for suffix, keep in (("", False), ("_classwise", True)):
        base = classwise if keep else _without_label_counts(classwise)
        acts = with_activations if keep else _without_label_counts(with_activations)
        fused["plain" + suffix] = _fused(classwise_fusion(), base)
        fused["matched" + suffix] = _fused(matched_fusion(passes, seed), acts)
        fused["weight_matched" + suffix] = _fused(matched_fusion(passes, seed), base)
    union = ArrayDataset(np.concatenate([d.x for d in tests]), np.concatenate([d.y for d in tests]))
    adapter = TorchAdapter(model_fn())

    def accuracy(weights: Weights) -> float:
        adapter.set_weights(weights)
        return adapter.evaluate(union)["accuracy"]

    return {
        "union_examples": len(union),
        "matching_inputs": len(inputs),
        "edges": {p: accuracy(updates[p].weights) for p in party_ids},
        **{name: accuracy(weights) for name, weights in fused.items()},
    }
