import numpy as np
import pytest
import torch
from torch import nn

from fedfuse import ServerState, build_fedavg_process, build_federated_evaluation
from fedfuse.data import ArrayDataset
from fedfuse.models import TorchAdapter
from helpers import blobs


def model_fn():
    return nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3))


def _parties():
    # unequal sizes, so example weighting matters
    return [blobs(40, seed=1), blobs(160, seed=2), blobs(80, seed=3)]


def test_initialize_next_round_by_round():
    process = build_fedavg_process(model_fn, optimizer="sgd", learning_rate=0.1, epochs=2)
    state = process.initialize()
    assert isinstance(state, ServerState) and state.round == 0
    data = _parties()
    losses = []
    for _ in range(5):
        state, metrics = process.next(state, data)
        losses.append(metrics["loss"])
    assert state.round == 5
    assert metrics["num_examples"] == 280
    assert losses[-1] < losses[0]
    assert metrics["accuracy"] > 0.9


def test_next_is_example_weighted_fedavg():
    """The new global weights are the num_examples-weighted mean of the parties' local models."""
    process = build_fedavg_process(model_fn, learning_rate=0.1, seed=5)
    state = process.initialize()
    data = {"a": blobs(30, seed=1), "b": blobs(90, seed=2)}
    new_state, _ = process.next(state, data)

    from fedfuse.federation import derive_seed
    from fedfuse.models import TrainConfig

    local = {}
    for pid, d in data.items():
        adapter = TorchAdapter(model_fn())
        adapter.set_weights(state.weights)
        adapter.fit(d, TrainConfig(learning_rate=0.1, seed=derive_seed(5, 1, pid)))
        local[pid] = adapter.get_weights()
    for k in state.weights:
        expected = (30 * local["a"][k] + 90 * local["b"][k]) / 120
        np.testing.assert_allclose(new_state.weights[k], expected, atol=1e-6)


def test_federated_evaluation_weights_by_examples():
    process = build_fedavg_process(model_fn)
    state = process.initialize()
    evaluation = build_federated_evaluation(model_fn)
    data = _parties()
    metrics = evaluation(state.weights, data)
    adapter = TorchAdapter(model_fn())
    adapter.set_weights(state.weights)
    per = [adapter.evaluate(d) for d in data]
    sizes = [len(d) for d in data]
    expected = sum(m["accuracy"] * n for m, n in zip(per, sizes, strict=True)) / sum(sizes)
    assert metrics["accuracy"] == pytest.approx(expected)
    assert metrics["num_examples"] == 280


def test_initial_state_is_seeded():
    a = build_fedavg_process(model_fn, seed=1).initialize().weights
    b = build_fedavg_process(model_fn, seed=1).initialize().weights
    c = build_fedavg_process(model_fn, seed=2).initialize().weights
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not all(np.array_equal(a[k], c[k]) for k in a)


def test_process_errors():
    with pytest.raises(ValueError, match="unknown optimizer"):
        build_fedavg_process(model_fn, optimizer="sgdd")
    with pytest.raises(ValueError, match="learning_rate must be"):
        build_fedavg_process(model_fn, learning_rate=0)
    with pytest.raises(ValueError, match="unknown fusion"):
        build_fedavg_process(model_fn, fusion="mean")
    process = build_fedavg_process(model_fn)
    with pytest.raises(ValueError, match="at least one party"):
        process.next(process.initialize(), [])
    with pytest.raises(ValueError, match=r"client 'party_0': expected \(x, y\), .* got ndarray"):
        process.next(process.initialize(), [np.zeros(3)])


def test_a_party_whose_training_fails_does_not_poison_the_model():
    process = build_fedavg_process(model_fn, learning_rate=0.1)
    state = process.initialize()
    out_of_range = ArrayDataset(np.zeros((10, 5), np.float32), np.full(10, 7, np.int64))
    torch.manual_seed(0)
    new_state, metrics = process.next(state, [blobs(50), out_of_range])
    assert metrics["failed"] == 1 and metrics["num_examples"] == 50
    assert metrics["failures"]["party_1"] == "IndexError: Target 7 is out of bounds."
    assert all(np.isfinite(v).all() for v in new_state.weights.values())
    alone, _ = process.next(state, [blobs(50)])  # the same round without the failing party
    for k in state.weights:
        np.testing.assert_allclose(new_state.weights[k], alone.weights[k], atol=1e-6)
    not_finite = ArrayDataset(np.full((10, 5), np.nan, np.float32), np.zeros(10, np.int64))
    _, metrics = process.next(state, [blobs(50), not_finite])
    assert metrics["rejected"] == 1 and "not finite" in metrics["failures"]["party_1"]


def test_a_party_with_the_wrong_input_width_is_refused_before_training():
    process = build_fedavg_process(model_fn, learning_rate=0.1)
    wrong = ArrayDataset(np.zeros((10, 7), np.float32), np.zeros(10, np.int64))
    with pytest.raises(ValueError, match=r"client 'party_1' train: rows of shape \(7,\), but"):
        process.next(process.initialize(), [blobs(50), wrong])
