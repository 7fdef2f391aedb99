"""CohortPool: vectorized parties give LocalPool's updates within 1e-5, and everything it
cannot vectorize is LocalPool's own answer, bit for bit."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from torch import nn

from fedfuse.data import ArrayDataset, FederatedDataset, PartyData
from fedfuse.federation import Federation
from fedfuse.fusion import Update
from fedfuse.models import TorchAdapter, TrainConfig, build_model
from fedfuse.party import EvaluateTask, Party, TaskError, TrainTask
from fedfuse.runtime import _cohort
from fedfuse.runtime._cohort import CohortPool
from fedfuse.runtime._local import LocalPool

TOLERANCE = 1e-5  # max abs and relative-norm difference of an update (module docstring)
DIM, CLASSES, BATCH = 12, 10, 8
SIZES = (3, 16, 21, 8, 30, 1, 13)  # below the batch size, exact multiples, uneven


def _federation(sizes=SIZES, dim=DIM, seed=0) -> FederatedDataset:
    rng = np.random.default_rng(seed)
    parties = {}
    for i, n in enumerate(sizes):
        x = rng.normal(size=(n, dim)).astype(np.float32)
        y = rng.integers(0, CLASSES, n)
        test = ArrayDataset(x[: max(1, n // 3)], y[: max(1, n // 3)])
        parties[f"p{i}"] = PartyData(ArrayDataset(x, y), test)
    return FederatedDataset(parties, num_classes=CLASSES)


def _adapter(model: str | nn.Module = "logreg") -> TorchAdapter:
    torch.manual_seed(0)
    module = build_model(model, (DIM,), CLASSES) if isinstance(model, str) else model
    return TorchAdapter(module)


def _tasks(fed, weights, config, **task_options) -> dict[str, TrainTask]:
    return {
        pid: TrainTask(1, weights, config.with_seed(100 + i), **task_options)
        for i, pid in enumerate(fed.party_ids)
    }


def _both(fed, adapter, tasks, **options):
    """The replies of LocalPool, then CohortPool (and the pool), to the same tasks."""
    local = list(LocalPool.from_dataset(fed, adapter).dispatch(tasks))
    cohort = CohortPool.from_dataset(fed, adapter, **options)
    return local, list(cohort.dispatch(tasks)), cohort


def _assert_close(local, vectorized) -> None:
    assert [pid for pid, _ in vectorized] == [pid for pid, _ in local]
    for (_, a), (_, b) in zip(local, vectorized, strict=True):
        assert isinstance(a, Update) and isinstance(b, Update)
        assert (b.num_examples, b.is_delta, b.party_id) == (a.num_examples, a.is_delta, a.party_id)
        assert b.info == a.info
        assert list(b.weights) == list(a.weights)
        diff = np.sqrt(sum(float(((a.weights[n] - b.weights[n]) ** 2).sum()) for n in a.weights))
        norm = np.sqrt(sum(float((a.weights[n] ** 2).sum()) for n in a.weights))
        assert diff <= TOLERANCE * norm
        for name in a.weights:
            assert b.weights[name].dtype == a.weights[name].dtype
            assert np.abs(a.weights[name] - b.weights[name]).max() <= TOLERANCE
        assert set(b.metrics) == {"loss", "accuracy"} == set(a.metrics)
        assert b.metrics["loss"] == pytest.approx(a.metrics["loss"], rel=TOLERANCE)
        # a logit one rounding error from a tie may flip one example's argmax, no more
        assert abs(b.metrics["accuracy"] - a.metrics["accuracy"]) <= 1 / a.num_examples + 1e-12


def _assert_identical(local, sequential) -> None:
    assert [pid for pid, _ in sequential] == [pid for pid, _ in local]
    for (_, a), (_, b) in zip(local, sequential, strict=True):
        assert type(a) is type(b)
        if isinstance(a, TaskError):
            assert a == b
            continue
        assert a.num_examples == b.num_examples and a.metrics == b.metrics
        for name, arr in getattr(a, "weights", {}).items():
            assert np.array_equal(arr, b.weights[name])


@pytest.mark.parametrize("model", ["logreg", "mlp"])
@pytest.mark.parametrize(
    "config, task_options",
    [
        (TrainConfig(batch_size=BATCH, learning_rate=0.05), {}),
        (
            TrainConfig(
                epochs=2,
                batch_size=BATCH,
                learning_rate=0.05,
                proximal_mu=0.3,
                count_examples="processed",
                share_label_counts=True,
            ),
            {},
        ),
        (TrainConfig(epochs=2, batch_size=BATCH, learning_rate=0.1), {"send_delta": False}),
    ],
)
def test_updates_match_local_pool(model, config, task_options):
    fed, adapter = _federation(), _adapter(model)
    tasks = _tasks(fed, adapter.get_weights(), config, **task_options)
    local, vectorized, pool = _both(fed, adapter, tasks, cohort_size=3)
    _assert_close(local, vectorized)
    assert (pool.vectorized, pool.fell_back, pool.fallback_reason) == (len(SIZES), 0, "")
    assert pool.train_seconds > 0


def test_each_party_starts_from_its_own_task_weights_and_batch_sizes_may_differ():
    fed, adapter = _federation(), _adapter("mlp")
    rng = np.random.default_rng(5)
    tasks = {}
    for i, pid in enumerate(fed.party_ids):
        start = {
            n: (w + rng.normal(scale=0.05, size=w.shape)).astype(w.dtype)
            for n, w in adapter.get_weights().items()
        }
        config = TrainConfig(epochs=1 + i % 2, batch_size=4 + 3 * i, learning_rate=0.05, seed=i)
        tasks[pid] = TrainTask(1, start, config)
    local, vectorized, pool = _both(fed, adapter, tasks)
    _assert_close(local, vectorized)
    assert pool.vectorized == len(SIZES)


def test_an_unseeded_config_draws_the_batch_order_from_torch_as_local_pool_does():
    fed, adapter = _federation(), _adapter()
    tasks = {pid: TrainTask(1, adapter.get_weights(), TrainConfig(batch_size=BATCH)) for pid in fed}
    torch.manual_seed(7)
    local = list(LocalPool.from_dataset(fed, adapter).dispatch(tasks))
    pool = CohortPool.from_dataset(fed, adapter)
    torch.manual_seed(7)
    _assert_close(local, list(pool.dispatch(tasks)))
    assert pool.vectorized == len(SIZES)


def test_a_federation_ends_where_the_local_one_does():
    fed = _federation()
    config = TrainConfig(epochs=2, batch_size=BATCH, learning_rate=0.1, proximal_mu=0.01)
    runs = []
    for pool_type in (LocalPool, CohortPool):
        adapter = _adapter("mlp")
        federation = Federation(
            pool_type.from_dataset(fed, adapter), adapter.get_weights(), config=config, seed=3
        )
        federation.run(3)
        runs.append(federation)
    local, cohort = runs
    assert [r["participants"] for r in cohort.history] == [r["participants"] for r in local.history]
    for name, arr in local.weights.items():
        assert np.allclose(cohort.weights[name], arr, rtol=0, atol=TOLERANCE)
    assert cohort.pool.vectorized == 3 * len(SIZES) and cohort.pool.fell_back == 0


class _ItemModel(nn.Module):
    """A model torch.func.vmap refuses (``.item()`` on a batched tensor)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(DIM, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) * (1.0 + 0.0 * float(x.mean().item()))


class _OwnParty(Party):
    """A Party subclass: it may answer differently, so it is never vectorized."""


BATCHNORM = nn.Sequential(nn.Linear(DIM, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, CLASSES))
DROPOUT = nn.Sequential(nn.Linear(DIM, 6), nn.Dropout(0.5), nn.Linear(6, CLASSES))
PLAIN = TrainConfig(batch_size=BATCH, learning_rate=0.05)


@pytest.mark.parametrize(
    "model, config, reason",
    [
        (BATCHNORM, PLAIN, "buffers"),
        (DROPOUT, PLAIN, "stochastic"),
        ("logreg", TrainConfig(batch_size=BATCH, compression="int8"), "compression"),
        ("logreg", TrainConfig(batch_size=BATCH, optimizer="adam"), "optimizer"),
        ("logreg", TrainConfig(batch_size=BATCH, skip_relative_norm=0.5), "skipping"),
        (
            "logreg",
            TrainConfig(batch_size=BATCH, dp_sgd_noise_multiplier=1.0, dp_sgd_seeded_noise=True),
            "DP-SGD",
        ),
        (_ItemModel(), PLAIN, "vectorized path failed"),
    ],
    ids=["batchnorm", "dropout", "compression", "adam", "skip", "dp-sgd", "vmap-refuses"],
)
def test_what_cannot_be_vectorized_is_local_pool_bit_for_bit(model, config, reason):
    fed = _federation(sizes=(9, 16, 5))
    adapter = _adapter(model)
    tasks = _tasks(fed, adapter.get_weights(), config)
    local, sequential, pool = _both(fed, adapter, tasks)
    _assert_identical(local, sequential)
    assert (pool.vectorized, pool.fell_back) == (0, 3)
    assert reason in pool.fallback_reason
    list(pool.dispatch(tasks))  # decided once: the next round goes the same way
    assert (pool.vectorized, pool.fell_back) == (0, 6) and reason in pool.fallback_reason


def test_evaluation_party_subclasses_and_unknown_parties_go_one_by_one_in_task_order():
    fed, adapter = _federation(), _adapter()
    weights = adapter.get_weights()
    parties = {pid: Party(adapter, fed[pid], pid) for pid in fed}
    parties["p2"] = _OwnParty(adapter, fed["p2"], "p2")
    train = TrainTask(1, weights, PLAIN.with_seed(1))
    tasks = {pid: train for pid in fed}
    tasks["p4"] = EvaluateTask(1, weights)
    tasks["ghost"] = train
    local = list(LocalPool(parties).dispatch(tasks))
    pool = CohortPool(parties, cohort_size=10)  # p3 alone is a cohort of one
    replies = list(pool.dispatch(tasks))
    assert [pid for pid, _ in replies] == list(tasks)
    assert replies[-1] == ("ghost", TaskError("unknown party 'ghost'")) == local[-1]
    sequential = [2, 4, 7]  # the subclass, the evaluation, the unknown party
    _assert_identical([local[i] for i in sequential], [replies[i] for i in sequential])
    vectorized = [i for i in range(len(tasks)) if i not in sequential]
    _assert_close([local[i] for i in vectorized], [replies[i] for i in vectorized])
    assert (pool.vectorized, pool.fell_back) == (5, 3)
    assert pool.fallback_reason == "unknown party 'ghost'"
    evaluations = list(pool.dispatch(dict.fromkeys(fed, EvaluateTask(1, weights))))
    _assert_identical(
        list(LocalPool(parties).dispatch(dict.fromkeys(fed, EvaluateTask(1, weights)))), evaluations
    )
    assert "EvaluateTask" in pool.fallback_reason


def test_the_deadline_is_checked_before_each_cohort(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    fed, adapter = _federation(), _adapter()
    pool = CohortPool.from_dataset(fed, adapter, cohort_size=2)
    replies = pool.dispatch(_tasks(fed, adapter.get_weights(), PLAIN), timeout=10)
    first = [next(replies)]
    now[0] = 11.0  # the deadline passes while the first cohort's replies are folded
    rest = list(replies)
    kinds = [type(reply).__name__ for _, reply in first + rest]
    assert kinds == ["Update", "Update"] + ["TaskError"] * (len(SIZES) - 2)
    assert rest[-1][1] == TaskError("deadline passed before the party was reached")
    assert pool.vectorized == 2


def test_clock_and_buffered_tasks_are_local_pool_s():
    fed, adapter = _federation(), _adapter()
    seconds = {pid: 1.0 + i for i, pid in enumerate(fed.party_ids)}
    tasks = _tasks(fed, adapter.get_weights(), PLAIN)
    pools = [
        LocalPool.from_dataset(fed, adapter, seconds),
        CohortPool.from_dataset(fed, adapter, seconds),
    ]
    for pool in pools:
        list(pool.dispatch(tasks))
        list(pool.dispatch({"p1": tasks["p1"], "p0": EvaluateTask(1, adapter.get_weights())}))
        pool.start("p3", tasks["p3"])
        pool.start("p0", tasks["p0"])
    assert pools[1].clock == pools[0].clock == len(SIZES) + 2.0
    for pool in pools:
        assert pool.next_arrival()[0] == "p0"
        pool.cancel("p3")
        assert pool.next_arrival() is None
    assert pools[1].clock == pools[0].clock


@pytest.mark.parametrize("size", [-1, 1.5, True])
def test_cohort_size_must_be_a_count(size):
    with pytest.raises(ValueError, match="cohort_size"):
        CohortPool({}, cohort_size=size)


def test_a_party_s_bad_data_fails_that_party_not_the_model():
    fed = _federation(sizes=(9, 16, 5))
    bad = PartyData(ArrayDataset(fed["p1"].train.x, np.full(16, CLASSES)))  # labels out of range
    adapter = _adapter()
    parties = {pid: Party(adapter, bad if pid == "p1" else fed[pid], pid) for pid in fed}
    pool = CohortPool(parties)
    tasks = {pid: TrainTask(1, adapter.get_weights(), PLAIN.with_seed(1)) for pid in parties}
    replies = dict(pool.dispatch(tasks))
    assert isinstance(replies["p1"], TaskError)
    assert isinstance(replies["p0"], Update) and isinstance(replies["p2"], Update)
    assert "vectorized path failed" in pool.fallback_reason and pool.fell_back == 3
    del tasks["p1"]
    assert all(isinstance(reply, Update) for _, reply in pool.dispatch(tasks))
    assert pool.vectorized == 2


def test_an_automatic_cohort_of_one_party_trains_sequentially():
    fed, adapter = _federation(sizes=(9, 16, 5)), _adapter()
    weights = adapter.get_weights()
    tasks = {"p0": TrainTask(1, weights, PLAIN.with_seed(1)), "p1": EvaluateTask(1, weights)}
    tasks["p2"] = TrainTask(1, weights, PLAIN.with_seed(2))
    local, sequential, pool = _both(fed, adapter, tasks)
    _assert_identical(local, sequential)
    assert (pool.vectorized, pool.fell_back) == (0, 3)
    assert pool.fallback_reason == "a cohort of one party trains faster one by one"


def test_a_config_setting_it_does_not_know_sends_the_task_the_sequential_way(monkeypatch):
    monkeypatch.setattr(_cohort, "_UNDERSTOOD", _cohort._UNDERSTOOD - {"share_label_counts"})
    fed, adapter = _federation(sizes=(9, 16, 5)), _adapter()
    config = TrainConfig(batch_size=BATCH, share_label_counts=True)
    local, sequential, pool = _both(fed, adapter, _tasks(fed, adapter.get_weights(), config))
    _assert_identical(local, sequential)
    assert pool.fallback_reason == "share_label_counts=True is not vectorized"
