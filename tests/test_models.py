import numpy as np
import pytest
import torch
from torch import nn

from fedfuse.models import (
    MODELS,
    TorchAdapter,
    TrainConfig,
    build_model,
    mnist_cnn,
    resolve_optimizer,
)
from fedfuse.weights import WeightsMismatchError
from helpers import blobs


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("optim.Adadelta", torch.optim.Adadelta),
        ("Adadelta", torch.optim.Adadelta),
        ("adam", torch.optim.Adam),
        ("sgd", torch.optim.SGD),
        ("torch.optim.AdamW", torch.optim.AdamW),
    ],
)
def test_optimizer_names_as_users_write_them(name, cls):
    assert resolve_optimizer(name) is cls


def test_unknown_optimizer_lists_choices():
    with pytest.raises(ValueError, match=r"unknown optimizer 'adamm'; choose one of: .*adam"):
        resolve_optimizer("adamm")


def test_weights_round_trip_and_are_copies():
    torch.manual_seed(0)
    adapter = TorchAdapter(nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)))
    w = adapter.get_weights()
    assert list(w) == sorted(w)
    assert "1.running_mean" in w and "1.num_batches_tracked" not in w
    w["0.weight"] += 1.0
    assert not np.allclose(adapter.get_weights()["0.weight"], w["0.weight"])
    adapter.set_weights(w)
    np.testing.assert_array_equal(adapter.get_weights()["0.weight"], w["0.weight"])


def test_set_weights_rejects_wrong_shape_naming_it():
    adapter = TorchAdapter(nn.Linear(3, 2))
    w = adapter.get_weights()
    w["weight"] = np.zeros((2, 4), dtype=np.float32)
    with pytest.raises(WeightsMismatchError, match="'weight' has shape"):
        adapter.set_weights(w)


def test_fit_learns_and_is_seeded():
    data = blobs(300)
    results = []
    for _ in range(2):
        torch.manual_seed(1)
        adapter = TorchAdapter(build_model("mlp", (5,), 3))
        before = adapter.evaluate(data)["accuracy"]
        metrics = adapter.fit(data, TrainConfig(epochs=3, batch_size=16, learning_rate=0.1, seed=7))
        results.append(adapter.get_weights())
    after = adapter.evaluate(data)
    assert after["accuracy"] > 0.95 > before
    assert set(metrics) == {"loss", "accuracy"}
    for k in results[0]:
        np.testing.assert_array_equal(results[0][k], results[1][k])


def test_user_supplied_loss_is_used():
    calls = []

    def loss(out, target):
        calls.append(len(target))
        return nn.functional.cross_entropy(out, target)

    adapter = TorchAdapter(nn.Linear(5, 3), loss=loss)
    adapter.fit(blobs(40), TrainConfig(batch_size=16, seed=0))
    assert calls == [16, 16, 8]


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (TrainConfig(epochs=0), "epochs must be"),
        (TrainConfig(batch_size=0), "batch_size must be"),
        (TrainConfig(learning_rate=-1.0), "learning_rate must be"),
        (TrainConfig(optimizer="nope"), "unknown optimizer 'nope'"),
    ],
)
def test_bad_train_config_names_the_field(config, message):
    with pytest.raises(ValueError, match=message):
        TorchAdapter(nn.Linear(5, 3)).fit(blobs(10), config)


def test_zoo_models_accept_their_inputs():
    for name in MODELS:
        shape = (3, 32, 32) if name == "cifar_cnn" else (1, 28, 28)
        model = build_model(name, shape, 10)
        assert model(torch.zeros(2, *shape)).shape == (2, 10)
    # image models also take flat rows (8x8 digits)
    assert build_model("cifar_cnn", (64,), 10)(torch.zeros(2, 64)).shape == (2, 10)
    assert build_model("mnist_cnn", (64,), 10)(torch.zeros(2, 64)).shape == (2, 10)
    assert any(isinstance(m, nn.GroupNorm) for m in build_model("cifar_cnn", (64,), 10).modules())


def test_tutorial_cnn_has_the_tutorial_shape():
    linear = [m for m in mnist_cnn().modules() if isinstance(m, nn.Linear)]
    assert linear[0].in_features == 9216


def test_zoo_errors():
    with pytest.raises(ValueError, match="unknown model 'resnet'; choose one of"):
        build_model("resnet", (4,), 2)
    with pytest.raises(ValueError, match="needs image inputs"):
        build_model("cifar_cnn", (5,), 2)


def test_predict_and_evaluate_on_empty():
    adapter = TorchAdapter(nn.Linear(5, 3))
    assert adapter.predict(np.zeros((4, 5), dtype=np.float32)).shape == (4, 3)
    with pytest.raises(ValueError, match="empty"):
        adapter.evaluate(blobs(10).subset([]))
