"""Server optimizers (Reddi et al. 2021): arithmetic by hand, checkpointed state, training."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from fedfuse import simulate
from fedfuse.cli import main
from fedfuse.data import federate
from fedfuse.federation import Federation, load_checkpoint
from fedfuse.fusion import (
    FusionError,
    Update,
    chain,
    fedavg,
    fuse,
    get_fusion,
    server_adagrad,
    server_adam,
    server_momentum,
    server_yogi,
)
from fedfuse.models import TorchAdapter, TrainConfig
from fedfuse.runtime import LocalPool
from helpers import blobs

GLOBAL = {"w": np.zeros(2, dtype=np.float32)}
# Two parties whose example-weighted mean is the pseudo-gradient [1, -2] in round 1 ...
ROUND_1 = [
    Update({"w": np.array([0, -4], np.float32)}, 1),
    Update({"w": np.array([2, 0], np.float32)}, 1),
]
# ... and [0.5, 0.5] in round 2.
ROUND_2 = [Update({"w": np.array([0.5, 0.5], np.float32)}, 7)]


def _two_rounds(optimizer):
    transform = chain(fedavg(), optimizer)
    state = transform.init(GLOBAL)
    first, state = fuse(transform, ROUND_1, state, GLOBAL)
    second, state = fuse(transform, ROUND_2, state, GLOBAL)
    return first.weights["w"], second.weights["w"], state


def test_server_momentum_by_hand():
    first, second, state = _two_rounds(server_momentum(server_learning_rate=0.5, momentum=0.9))
    # m1 = [1, -2], step 0.5 m1; m2 = 0.9 m1 + [0.5, 0.5] = [1.4, -1.3], step 0.5 m2
    np.testing.assert_allclose(first, [0.5, -1.0], rtol=1e-6)
    np.testing.assert_allclose(second, [0.7, -0.65], rtol=1e-6)
    np.testing.assert_allclose(state[1]["m"]["w"], [1.4, -1.3], rtol=1e-6)
    assert first.dtype == np.float32


def test_server_adam_by_hand():
    # lr 0.1, b1 0.9, b2 0.99, tau 0.1, v0 = tau^2 = 0.01.
    # Round 1: m = [0.1, -0.2], v = 0.99*0.01 + 0.01*[1, 4] = [0.0199, 0.0499],
    # step = 0.1 m / (sqrt(v) + 0.1) = [0.01/0.241067, -0.02/0.323383].
    # Round 2: m = 0.9 m + 0.1 [0.5, 0.5] = [0.14, -0.13], v = 0.99 v + 0.01*0.25.
    first, second, state = _two_rounds(server_adam(0.1, b1=0.9, b2=0.99, eps=0.1))
    np.testing.assert_allclose(first, [0.0414822, -0.0618462], rtol=1e-5)
    np.testing.assert_allclose(state[1]["m"]["w"], [0.14, -0.13], rtol=1e-5)
    np.testing.assert_allclose(state[1]["v"]["w"], [0.022201, 0.051901], rtol=1e-5)
    np.testing.assert_allclose(second, [0.0562249, -0.0396562], rtol=1e-5)


def test_server_adagrad_by_hand():
    # v = 0.01 + [1, 4] = [1.01, 4.01]; step = 0.1 [0.1, -0.2] / (sqrt(v) + 0.1)
    first, _, _ = _two_rounds(server_adagrad(0.1, b1=0.9, eps=0.1))
    np.testing.assert_allclose(first, [0.01 / 1.104988, -0.02 / 2.102498], rtol=1e-5)


def test_server_yogi_by_hand():
    # v0 = 0.01 < delta^2, so v grows by (1 - b2) delta^2: [0.02, 0.05], then [0.0225, 0.0525]
    first, second, state = _two_rounds(server_yogi(0.1, b1=0.9, b2=0.99, eps=0.1))
    np.testing.assert_allclose(
        first, [0.01 / (0.02**0.5 + 0.1), -0.02 / (0.05**0.5 + 0.1)], rtol=1e-5
    )
    np.testing.assert_allclose(state[1]["v"]["w"], [0.0225, 0.0525], rtol=1e-5)
    np.testing.assert_allclose(second, [0.014 / 0.25, -0.013 / (0.0525**0.5 + 0.1)], rtol=1e-5)


def test_yogi_moves_v_less_than_adam_after_a_spike():
    spike = [Update({"w": np.array([100.0, 0.0], np.float32)}, 1)]
    states = {}
    for name, opt in (("adam", server_adam(0.1, eps=0.1)), ("yogi", server_yogi(0.1, eps=0.1))):
        t = chain(fedavg(), opt)
        _, states[name] = fuse(t, spike, t.init(GLOBAL), GLOBAL)
    assert states["yogi"][1]["v"]["w"][0] == pytest.approx(0.01 + 0.01 * 1e4)
    assert states["adam"][1]["v"]["w"][0] == pytest.approx(0.99 * 0.01 + 0.01 * 1e4)


def test_server_optimizer_needs_a_reducer_before_it():
    t = server_adam(0.1)
    with pytest.raises(FusionError, match=r"after a reducer: chain\(fedavg\(\), server_adam"):
        fuse(t, ROUND_1, t.init(GLOBAL), GLOBAL)
    full = [Update({"w": np.ones(2, np.float32)}, 1, is_delta=False)]
    with pytest.raises(FusionError, match="needs a delta"):
        fuse(chain(fedavg(), t), full, (None, t.init(GLOBAL)), GLOBAL)


def test_registry_names_build_the_chain_and_check_parameters():
    t = get_fusion("fedadam", server_learning_rate=0.1, eps=0.1)
    fused, _ = fuse(t, ROUND_1, t.init(GLOBAL), GLOBAL)
    np.testing.assert_allclose(fused.weights["w"], [0.0414822, -0.0618462], rtol=1e-5)
    t = get_fusion("fedavgm", server_learning_rate=0.5, clip_norm=1.0)
    fused, _ = fuse(t, [Update({"w": np.array([3, 4], np.float32)}, 1)], t.init(GLOBAL), GLOBAL)
    np.testing.assert_allclose(fused.weights["w"], [0.3, 0.4], rtol=1e-6)  # clipped, then 0.5x
    with pytest.raises(ValueError, match=r"unknown \['lr'\]; it takes: server_learning_rate"):
        get_fusion("fedyogi", lr=0.1)
    with pytest.raises(ValueError, match=r"fusion 'fedavg': unknown \['momentum'\]"):
        get_fusion("fedavg", momentum=0.9)
    with pytest.raises(ValueError, match=r"fusion 'fedadam': unknown \['server_epsilon'\]"):
        get_fusion("fedadam", server_epsilon=0.1)  # the transform's own name is eps


def _federation(tmp_path, fed, adapter, initial):
    return Federation(
        LocalPool.from_dataset(fed, adapter),
        initial,
        fusion=get_fusion("fedadam", server_learning_rate=0.05),
        config=TrainConfig(epochs=1, batch_size=16, learning_rate=0.1),
        checkpoint_dir=tmp_path,
    )


def test_moments_are_checkpointed_and_resume_exactly(tmp_path):
    fed = federate(blobs(300), blobs(60, seed=1), num_parties=3, scheme="iid", seed=0)
    torch.manual_seed(0)
    adapter = TorchAdapter(nn.Linear(5, 3))
    initial = adapter.get_weights()
    straight = _federation(tmp_path / "a", fed, adapter, initial)
    straight.run(3)
    interrupted = _federation(tmp_path / "b", fed, adapter, initial)
    interrupted.run(2)
    saved = load_checkpoint(tmp_path / "b").fusion_state
    np.testing.assert_array_equal(
        saved[1]["v"]["weight"], interrupted.fusion_state[1]["v"]["weight"]
    )
    resumed = _federation(tmp_path / "b", fed, adapter, initial)
    assert resumed.round == 2
    resumed.run(3)
    for name in initial:
        np.testing.assert_array_equal(resumed.weights[name], straight.weights[name])


@pytest.mark.parametrize(
    ("fusion", "params"),
    [
        ("fedavgm", {"momentum": 0.5}),
        ("fedadagrad", {"server_learning_rate": 0.1}),
        ("fedadam", {}),
        ("fedyogi", {}),
    ],
)
def test_server_optimizers_train(digits, fusion, params):
    train, test = digits
    fed = federate(train, test, num_parties=5, scheme="dirichlet", alpha=1.0, seed=0)
    result = simulate(
        federated_data=fed,
        fusion_algorithm=fusion,
        rounds=6,
        epochs=2,
        batch_size=16,
        learning_rate=0.1,
        centralized=False,
        federated_eval=False,
        **params,
    )
    # FedAvg itself reaches about 0.83 here; the server optimizers 0.88-0.91.
    assert result.history[-1]["central"]["accuracy"] > 0.8


def test_the_cli_names_fusions_and_their_parameters(tmp_path, capsys):
    args = ["simulate", "--fusion", "fedadam", "--server-learning-rate", "0.05"]
    args += ["--compression", "int8", "--rounds", "2", "--num-parties", "3"]
    args += ["--no-centralized", "--no-federated-eval", "--out", str(tmp_path)]
    assert main(args) == 0
    doc = json.loads((tmp_path / "history.json").read_text())
    assert doc["config"]["fusion"] == {"name": "fedadam", "params": {"server_learning_rate": 0.05}}
    assert 0.25 < doc["rounds"][0]["bytes_up"] / doc["rounds"][0]["bytes_dense"] < 0.26
    assert main(["simulate", "--fusion", "median", "--momentum", "0.9"]) == 2
    err = capsys.readouterr().err
    # a flat parameter the chosen fusion does not take is refused, not ignored
    assert "unknown setting 'momentum'" in err
    assert "fusion 'median' takes clip_norm" in err
