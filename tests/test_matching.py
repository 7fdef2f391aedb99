"""One-shot fusion by neuron matching: exact recovery of permutations, and fused models that
beat plain averaging and every single edge model on label-skewed parties."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
import torch
from torch import nn

from fedfuse import LocalPool, TrainConfig
from fedfuse.data import federate
from fedfuse.fusion import Update, align, fuse, get_fusion, infer_layers, matched_average
from fedfuse.models import TorchAdapter
from fedfuse.recipes import compare_oneshot, oneshot_fusion


def _permuted(weights, layers, rng):
    """A copy of ``weights`` with every hidden layer's units shuffled (same function)."""
    out = dict(weights)
    for layer, following in itertools.pairwise(layers):
        perm = rng.permutation(out[layer.weight].shape[0])
        for name in (layer.weight, layer.bias, *layer.per_unit):
            if name is not None:
                out[name] = out[name][perm]
        w = out[following.weight]
        out[following.weight] = w.reshape(w.shape[0], len(perm), -1)[:, perm].reshape(w.shape)
    return out


def _cnn():
    return nn.Sequential(
        nn.Conv2d(1, 6, 3),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.Conv2d(6, 8, 3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 4 * 4, 16),
        nn.ReLU(),
        nn.Linear(16, 3),
    )


def test_align_undoes_a_permutation_of_a_cnn_with_batchnorm_and_flatten():
    torch.manual_seed(0)
    adapter = TorchAdapter(_cnn())
    adapter.module.eval()
    weights = adapter.get_weights()
    for name in ("1.running_mean", "1.running_var"):  # non-trivial statistics to permute
        weights[name] = np.random.default_rng(1).random(6).astype(np.float32) + 0.5
    layers = infer_layers(weights)
    assert [layer.weight for layer in layers] == ["0.weight", "3.weight", "6.weight", "8.weight"]
    assert layers[0].per_unit == ("1.bias", "1.running_mean", "1.running_var", "1.weight")
    shuffled = _permuted(weights, layers, np.random.default_rng(2))
    x = np.random.default_rng(3).random((5, 1, 8, 8)).astype(np.float32)
    adapter.set_weights(weights)
    expected = adapter.predict(x)
    adapter.set_weights(shuffled)
    np.testing.assert_allclose(adapter.predict(x), expected, rtol=1e-4, atol=1e-5)
    recovered = align(weights, shuffled, layers)
    for name in weights:
        np.testing.assert_array_equal(recovered[name], weights[name])


def test_matched_avg_fusion_of_permuted_copies_computes_the_model_itself():
    torch.manual_seed(0)
    adapter = TorchAdapter(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)))
    weights = adapter.get_weights()
    layers = infer_layers(weights)
    copies = [_permuted(weights, layers, np.random.default_rng(s)) for s in range(3)]
    updates = [Update(c, 10, is_delta=False) for c in copies]
    transform = get_fusion("matched_avg")
    fused, _ = fuse(transform, updates, transform.init(weights), weights)
    x = np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32)
    expected = adapter.predict(x)
    adapter.set_weights(fused.weights)
    np.testing.assert_allclose(adapter.predict(x), expected, rtol=1e-5, atol=1e-6)
    adapter.set_weights({n: np.mean([c[n] for c in copies], axis=0) for n in weights})
    assert not np.allclose(adapter.predict(x), expected, atol=1e-2)  # plain averaging


def _mlp():
    return nn.Sequential(
        nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10)
    )


def _config(epochs):
    return TrainConfig(epochs=epochs, batch_size=32, optimizer="adam", learning_rate=0.003)


def test_matching_repairs_plain_averaging_of_independently_initialized_models(digits):
    train, test = digits
    fed = federate(train, test, num_parties=3, scheme="dirichlet", alpha=0.5, seed=0)
    result = compare_oneshot(fed, _mlp, _config(30), seed=0)
    assert result["plain"] < 0.65  # permuted neurons: averaging mixes unrelated units
    assert result["matched"] > result["plain"] + 0.15
    assert result["weight_matched"] > result["plain"] + 0.15  # no data needed


def test_matched_fusion_beats_every_edge_model_on_the_union_of_test_data(digits):
    train, test = digits
    fed = federate(train, test, num_parties=2, scheme="classes", classes_per_party=6, seed=0)
    result = compare_oneshot(fed, _mlp, _config(15), seed=0)
    best_edge = max(result["edges"].values())
    assert best_edge < 0.7  # each party lacks four or five classes
    assert result["matched_classwise"] > best_edge + 0.08
    assert result["matched"] > result["plain"]


def test_oneshot_fusion_returns_edges_and_both_fusions(digits):
    train, test = digits
    fed = federate(train, test, num_parties=3, scheme="iid", seed=1)
    pool = LocalPool.from_dataset(fed, TorchAdapter(_mlp()))
    shared = dataclasses.replace(_config(1), share_label_counts=True)  # the parties send them
    result = oneshot_fusion(pool, _mlp, shared, inputs=test.x[:100], seed=0)
    assert sorted(result.edges) == fed.party_ids
    for pid, counts in fed.label_stats().items():  # what the fusion used came from the parties
        np.testing.assert_array_equal(
            result.label_counts[pid], counts[: len(result.label_counts[pid])]
        )
    first = result.edges["party_0"]["0.weight"]
    assert not np.allclose(first, result.edges["party_1"]["0.weight"])  # independent inits
    assert result.matched["4.weight"].shape == result.plain["4.weight"].shape == (10, 128)


def test_plain_average_keeps_num_examples_weighting():
    a = {"0.weight": np.ones((2, 2), np.float32), "0.bias": np.zeros(2, np.float32)}
    b = {"0.weight": np.zeros((2, 2), np.float32), "0.bias": np.zeros(2, np.float32)}
    c = {"1.weight": np.ones((1, 2), np.float32), "1.bias": np.zeros(1, np.float32)}
    fused = matched_average([{**a, **c}, {**b, **c}], [3, 1], passes=1)
    assert fused["0.weight"].sum() == pytest.approx(3.0)  # rows matched, then 3:1 average


def test_simulate_runs_the_oneshot_use():
    from fedfuse import simulate

    result = simulate(use="oneshot", num_parties=2, rounds=1, epochs=1, partition="iid")
    assert {"plain", "matched", "weight_matched_classwise"} <= set(result.report)
    assert result.report["union_examples"] > 0
