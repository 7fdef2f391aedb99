"""FedBuff: buffered asynchronous aggregation on a simulated clock."""

import numpy as np
import pytest
import torch

from fedfuse.data import federate
from fedfuse.federation import AsyncFederation, spread_task_seconds
from fedfuse.fusion import Update, iter_avg
from fedfuse.models import TorchAdapter, TrainConfig, build_model
from fedfuse.runtime import LocalPool


class ConstantPool:
    """Every party's delta is ``+1`` (or NaN for the ``broken`` ones); records task rounds."""

    def __init__(self, ids, broken=()):
        self.ids, self.broken, self.started = list(ids), set(broken), []

    def party_ids(self):
        return self.ids

    def dispatch(self, tasks, timeout=None):
        for pid, task in tasks.items():
            self.started.append((pid, task.round))
            value = np.nan if pid in self.broken else 1.0
            yield pid, Update({"w": np.full(1, value, np.float32)}, 1)


W0 = {"w": np.zeros(1, np.float32)}


def test_spread_task_seconds():
    seconds = spread_task_seconds([f"p{i}" for i in range(5)], fastest=2.0, spread=10.0, seed=1)
    values = sorted(seconds.values())
    assert values[0] == pytest.approx(2.0) and values[-1] == pytest.approx(20.0)
    np.testing.assert_allclose(np.diff(np.log(values)), np.log(10) / 4)
    assert seconds == spread_task_seconds(list(seconds), fastest=2.0, spread=10.0, seed=1)
    assert seconds != spread_task_seconds(list(seconds), fastest=2.0, spread=10.0, seed=2)


def test_stale_updates_are_weighted_down_by_hand():
    """fast takes 1 s, slow 3 s, buffer of 1: versions at t = 1, 2, 3, 3.

    t=1: fast (started at v0) -> +1, v1.  t=2: fast (v1) -> +1, v2.
    t=3: slow started at v0, arrives at v2: staleness 2, weight 1/sqrt(3) -> v3;
         then fast (started at v2, now v3): staleness 1, weight 1/sqrt(2) -> v4.
    """
    pool = ConstantPool(["fast", "slow"])
    fed = AsyncFederation(pool, W0, {"fast": 1.0, "slow": 3.0}, fusion=iter_avg(), buffer_size=1)
    history = fed.run(4)
    assert [r["time"] for r in history] == [1.0, 2.0, 3.0, 3.0]
    assert [r["participants"] for r in history] == [["fast"], ["fast"], ["slow"], ["fast"]]
    assert [r["staleness"] for r in history] == [[0], [0], [2], [1]]
    np.testing.assert_allclose(fed.weights["w"], [2 + 1 / np.sqrt(3) + 1 / np.sqrt(2)], rtol=1e-6)
    again = AsyncFederation(
        ConstantPool(["fast", "slow"]), W0, {"fast": 1.0, "slow": 3.0}, buffer_size=1
    )
    assert [r["time"] for r in again.run(100, until=2.5)] == [1.0, 2.0]
    # every task starts from the newest model: the round field carries version + 1
    assert sorted(pool.started[:2]) == [("fast", 1), ("slow", 1)]
    assert pool.started[2:5] == [("fast", 2), ("fast", 3), ("slow", 4)]


def test_buffer_fuses_every_k_arrivals_and_rejects_bad_updates():
    pool = ConstantPool(["a", "b", "c"], broken=["c"])
    fed = AsyncFederation(
        pool,
        W0,
        {"a": 1.0, "b": 1.5, "c": 2.0},
        fusion=iter_avg(),
        buffer_size=2,
        staleness_exponent=0.0,
    )
    history = fed.run(2)
    # a@1, b@1.5 -> v1; c@2 (NaN, rejected), a@2, b@3 -> v2 at t=3
    assert [r["time"] for r in history] == [1.5, 3.0]
    assert history[1]["participants"] == ["a", "b"]
    assert "NaN" in history[1]["rejected"]["c"]
    np.testing.assert_allclose(fed.weights["w"], [2.0])


def test_configuration_errors():
    with pytest.raises(ValueError, match=r"task_seconds has no time for parties \['b'\]"):
        AsyncFederation(ConstantPool(["a", "b"]), W0, {"a": 1.0})
    with pytest.raises(ValueError, match=r"concurrency must be an integer in \[1, 1\]"):
        AsyncFederation(ConstantPool(["a"]), W0, {"a": 1.0}, concurrency=2)
    with pytest.raises(ValueError, match="buffer_size must be an integer >= 1"):
        AsyncFederation(ConstantPool(["a"]), W0, {"a": 1.0}, buffer_size=0)


def test_fedbuff_trains(digits):
    train, test = digits
    fed = federate(train, test, num_parties=8, scheme="iid", seed=0)
    torch.manual_seed(0)
    adapter = TorchAdapter(build_model("mlp", (64,), 10))
    evaluator = TorchAdapter(build_model("mlp", (64,), 10))

    def central_eval(weights):
        evaluator.set_weights(weights)
        return evaluator.evaluate(fed.test)

    federation = AsyncFederation(
        LocalPool.from_dataset(fed, adapter),
        adapter.get_weights(),
        spread_task_seconds(fed.party_ids, spread=10.0, seed=0),
        config=TrainConfig(epochs=2, batch_size=16, learning_rate=0.1),
        buffer_size=4,
        concurrency=6,
        central_eval=central_eval,
    )
    history = federation.run(12)
    assert history[-1]["central"]["accuracy"] > 0.8
    assert max(max(r["staleness"]) for r in history) >= 1
    assert history[-1]["bytes_up"] == 4 * 4 * 55210 == history[-1]["bytes_dense"]
