"""Keras 3 (torch backend) federated exactly like PyTorch: adapter, model type, data handlers."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from fedfuse import Federation, LocalPool, TrainConfig
from fedfuse._extras import MissingExtraError, import_keras
from fedfuse.data import ArrayDataset, PartyData, federate, get_data_handler
from fedfuse.models import KerasAdapter, ModelFileError, get_model_type, keras_optimizer

keras = import_keras()


def _mlp(name: str = "mlp", inputs: int = 64):
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input((inputs,)),
            keras.layers.Dense(32, activation="relu", name="hidden"),
            keras.layers.Dense(10, name="head"),
        ],
        name=name,
    )


def _keras_file(model, tmp_path) -> bytes:
    path = tmp_path / "model.keras"
    model.save(path)
    return path.read_bytes()


def test_weights_are_named_by_variable_path_and_round_trip():
    adapter = KerasAdapter(_mlp())
    weights = adapter.get_weights()
    assert list(weights) == [
        "mlp/head/bias",
        "mlp/head/kernel",
        "mlp/hidden/bias",
        "mlp/hidden/kernel",
    ]
    assert weights["mlp/hidden/kernel"].shape == (64, 32)
    changed = {name: np.full_like(w, 0.5) for name, w in weights.items()}
    adapter.set_weights(changed)
    assert all(np.all(w == 0.5) for w in adapter.get_weights().values())
    with pytest.raises(ValueError, match="mlp/head/bias"):
        adapter.set_weights({k: v for k, v in changed.items() if k != "mlp/head/bias"})


@pytest.mark.parametrize("name", ["adam", "Adam", "optimizers.Adam", "keras.optimizers.Adam"])
def test_optimizers_are_named_as_keras_users_write_them(name):
    optimizer = keras_optimizer(name, 0.002)
    assert type(optimizer).__name__ == "Adam"
    assert float(optimizer.learning_rate) == pytest.approx(0.002)


def test_unknown_optimizer_lists_the_choices():
    with pytest.raises(ValueError, match=r"unknown Keras optimizer 'adamm'.*rmsprop"):
        keras_optimizer("adamm", 0.1)


def test_keras_federation_learns_digits(digits):
    train, test = digits
    fed = federate(train, test, num_parties=3, scheme="dirichlet", alpha=1.0, seed=0)
    adapter = KerasAdapter(_mlp())
    federation = Federation(
        LocalPool.from_dataset(fed, adapter),
        adapter.get_weights(),
        config=TrainConfig(epochs=2, batch_size=32, optimizer="adam", learning_rate=0.01),
        central_eval=lambda w: (adapter.set_weights(w), adapter.evaluate(fed.test))[1],
        federated_eval=True,
    )
    history = federation.run(4)
    assert all(r["participants"] == fed.party_ids for r in history)
    assert history[-1]["central"]["accuracy"] > 0.9
    assert history[-1]["federated"]["accuracy"] > 0.9
    assert history[-1]["central"]["accuracy"] > history[0]["central"]["accuracy"] - 0.01


def test_model_type_keras_loads_a_keras_file_from_bytes(tmp_path, digits):
    train, test = digits
    adapter = get_model_type("keras").load(_keras_file(_mlp(), tmp_path), ())
    assert isinstance(adapter, KerasAdapter)
    before = adapter.evaluate(test)["accuracy"]
    metrics = adapter.fit(train, TrainConfig(epochs=2, optimizer="optimizers.Adam", seed=0))
    assert metrics["accuracy"] > 0.6
    assert adapter.evaluate(test)["accuracy"] > max(before, 0.85)
    assert adapter.predict(test.x[:5]).shape == (5, 10)


def test_a_lambda_layer_is_refused_in_safe_mode(tmp_path):
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Lambda(lambda x: x * 2), keras.layers.Dense(2)]
    )
    with pytest.raises(ModelFileError, match="cannot load Keras model file"):
        get_model_type("keras").load(_keras_file(model, tmp_path), ())


def test_bytes_that_are_not_a_keras_file_are_refused():
    with pytest.raises(ModelFileError, match="not a .keras model file"):
        get_model_type("keras").load(b"definitely not a zip", ())


def test_missing_keras_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "keras", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'fedfuse\[keras\]'"):
        import_keras()


def test_mnist_keras_and_cifar10_keras_handlers():
    rng = np.random.default_rng(0)
    grey = ArrayDataset(rng.integers(0, 256, (6, 784)).astype(np.uint8), np.arange(6) % 10)
    out = get_data_handler("mnist_keras")(PartyData(grey, grey))
    assert out.train.x.shape == (6, 28, 28, 1) and out.train.x.dtype == np.float32
    assert out.train.x.min() >= 0.0 and out.train.x.max() <= 1.0
    assert out.test.x.shape == (6, 28, 28, 1)

    channels_first = rng.random((4, 3, 32, 32)).astype(np.float32)
    colour = get_data_handler("cifar10_keras")(
        PartyData(ArrayDataset(channels_first, np.arange(4)))
    )
    assert colour.train.x.shape == (4, 32, 32, 3)
    np.testing.assert_array_equal(colour.train.x[1, 5, 7], channels_first[1, :, 5, 7])
    assert colour.test is None


def test_keras_runs_on_torch_after_importing_fedfuse_without_any_set_up():
    """A user who imports fedfuse, then keras, sets no KERAS_BACKEND by hand."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    code = "import fedfuse, keras; print(keras.backend.backend())"
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "torch"
