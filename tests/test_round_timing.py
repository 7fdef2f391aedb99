"""Each round's wall time split into training, transport and the loop's own work (fusion).

The tests never compare a duration with a threshold: they check that the three parts are
>= 0 and add up to the round's wall time, and which part is largest when one of them is made
to take much longer than the others (a party that spins, a transport that sleeps, a fusion
that spins).
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from fedfuse.data import federate
from fedfuse.federation import (
    Aggregation,
    Federation,
    Sampling,
    SecureAggregation,
    train_round,
    validate_update,
)
from fedfuse.federation._round import RoundResult, Stopwatch, add_training_time
from fedfuse.fusion import FusionTransform, Update, chain, fedavg, stateless
from fedfuse.models import TorchAdapter, TrainConfig, mlp
from fedfuse.party import Party
from fedfuse.runtime import LocalPool, MockPool
from helpers import blobs

SPLIT = ("train_seconds", "transport_seconds", "fusion_seconds")
SPIN = 0.02  # seconds one slow step takes: large next to a fold of tiny updates


def _spin(seconds: float) -> None:
    """Busy for ``seconds`` of wall time (a sleeping thread would not look like work)."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def _update(pid, task) -> Update:
    return Update({"w": np.full(3, 0.1, dtype=np.float32)}, 10)


def _spinning(pid, task) -> Update:
    _spin(SPIN)
    return _update(pid, task)


def _assert_split(record) -> None:
    parts = [record[name] for name in SPLIT]
    assert all(part >= 0 for part in parts), record
    assert sum(parts) <= record["seconds"] + 1e-9
    assert sum(parts) == pytest.approx(record["seconds"], abs=1e-9)
    assert record["seconds"] > 0


class _SlowTransport(MockPool):
    """A pool whose replies take a while to travel: the wait is outside ``handle``."""

    def dispatch(self, tasks, timeout=None):
        for item in super().dispatch(tasks, timeout):
            time.sleep(SPIN)
            yield item


class _CountingPool:
    """A pool that reports ``train_seconds`` and ``parallelism`` on its own (as a process
    pool would): each reply comes after ``SPIN`` of waiting, of which the parties say they
    trained ``claimed`` seconds, ``parallelism`` of them at once."""

    def __init__(self, party_ids, claimed: float, parallelism: int) -> None:
        self._ids, self.claimed, self.parallelism = list(party_ids), claimed, parallelism
        self.train_seconds = 0.0

    def party_ids(self):
        return list(self._ids)

    def dispatch(self, tasks, timeout=None):
        for pid, task in tasks.items():
            time.sleep(SPIN)
            self.train_seconds += self.claimed
            yield pid, _update(pid, task)


class _BarePool:
    """A pool with neither ``train_seconds`` nor ``parallelism``."""

    def __init__(self, party_ids) -> None:
        self._ids = list(party_ids)

    def party_ids(self):
        return list(self._ids)

    def dispatch(self, tasks, timeout=None):
        for pid, task in tasks.items():
            yield pid, _spinning(pid, task)


def _spinning_fedavg() -> FusionTransform:
    def spin_each(updates, global_weights):
        for u in updates:
            _spin(SPIN)
            yield u

    return chain(stateless(spin_each), fedavg())


def _federation(pool, **kwargs) -> Federation:
    return Federation(pool, {"w": np.zeros(3, dtype=np.float32)}, **kwargs)


def test_records_carry_the_split_and_training_dominates_when_parties_spin():
    federation = _federation(MockPool(["a", "b", "c"], _spinning))
    for record in federation.run(2):
        assert record["fused"], record["not_fused"]
        _assert_split(record)
        assert record["train_seconds"] > record["fusion_seconds"]
        assert record["train_seconds"] > record["transport_seconds"]
    assert federation.pool.train_seconds >= 2 * 3 * SPIN  # LocalPool counts handle() time


def test_transport_dominates_when_replies_are_slow_to_arrive():
    record = _federation(_SlowTransport(["a", "b", "c"], _update)).run_round()
    _assert_split(record)
    assert record["transport_seconds"] > record["train_seconds"]
    assert record["transport_seconds"] > record["fusion_seconds"]


def test_fusion_dominates_when_the_loops_own_work_is_slow():
    record = _federation(MockPool(["a", "b", "c"], _update), fusion=_spinning_fedavg()).run_round()
    assert record["fused"], record["not_fused"]
    _assert_split(record)
    assert record["fusion_seconds"] > record["train_seconds"]
    assert record["fusion_seconds"] > record["transport_seconds"]


def test_training_is_the_pools_summed_time_over_its_parallelism():
    # each reply: SPIN of waiting, of which the pool says 4 parties together trained 2 SPIN
    # (SPIN / 2 of wall time): about half the waiting is training, the rest transport
    pool = _CountingPool(["a", "b", "c", "d"], claimed=2 * SPIN, parallelism=4)
    record = _federation(pool).run_round()
    _assert_split(record)
    assert record["train_seconds"] == pytest.approx(4 * SPIN / 2)
    assert record["transport_seconds"] > 0


def test_training_is_capped_so_the_parts_still_add_up():
    pool = _CountingPool(["a", "b"], claimed=100.0, parallelism=1)  # claims more than it took
    record = _federation(pool).run_round()
    _assert_split(record)
    assert record["transport_seconds"] == 0
    assert record["train_seconds"] == pytest.approx(record["seconds"] - record["fusion_seconds"])


def test_a_pool_that_does_not_count_training_reports_none():
    record = _federation(_BarePool(["a", "b"])).run_round()
    _assert_split(record)
    assert record["train_seconds"] == 0
    assert record["transport_seconds"] > record["fusion_seconds"]  # the spinning was waited on


def test_add_training_time_moves_the_pools_growth_out_of_transport():
    class Pool:
        train_seconds, parallelism = 3.0, 4

    result = RoundResult(1, {}, None, {}, seconds=1.5, transport_seconds=1.0, fusion_seconds=0.5)
    add_training_time(result, Pool(), train_before=1.0)  # (3 - 1) / 4 parties at once
    assert (result.train_seconds, result.transport_seconds) == (0.5, 0.5)
    add_training_time(result, object(), train_before=0.0)  # a pool without the counters
    assert (result.train_seconds, result.transport_seconds) == (0.0, 0.5)


def test_stopwatch_counts_only_the_time_blocked_on_the_iterator():
    def slow():
        for i in range(3):
            time.sleep(SPIN)
            yield i

    stopwatch = Stopwatch()
    assert list(stopwatch.wrap(slow())) == [0, 1, 2]
    assert stopwatch.waited >= 3 * SPIN
    result = RoundResult(1, {}, None, {})
    stopwatch.split(result, stopwatch.waited + 0.25)
    assert result.fusion_seconds == pytest.approx(0.25)
    assert result.transport_seconds == pytest.approx(stopwatch.waited)
    assert result.train_seconds == 0


def test_train_round_splits_its_time_too():
    pool = MockPool(["a", "b"], _spinning)
    result = train_round(1, {"w": np.zeros(3, np.float32)}, fedavg(), None, pool, ["a", "b"],
                         TrainConfig())  # fmt: skip
    assert result.fused
    parts = [getattr(result, name) for name in SPLIT]
    assert all(p >= 0 for p in parts) and sum(parts) == pytest.approx(result.seconds, abs=1e-9)
    assert result.train_seconds > result.fusion_seconds


def _parties(n: int = 4):
    fed = federate(blobs(40 * n), blobs(40, seed=1), n, "iid", seed=0)
    adapter = TorchAdapter(mlp((5,), 3, hidden=(8,)))
    return {pid: Party(adapter, fed[pid], pid) for pid in fed.party_ids}, adapter


CONFIG = TrainConfig(batch_size=16, learning_rate=0.1)


@pytest.mark.parametrize("mode", ["sync", "buffered"])
def test_torch_parties_secure_and_buffered_rounds_record_the_split(mode):
    parties, adapter = _parties()
    kwargs = {}
    if mode == "buffered":
        kwargs = {"aggregation": Aggregation(mode="buffered", buffer_size=2),
                  "sampling": Sampling(count=3)}  # fmt: skip
    for secure in (SecureAggregation(), SecureAggregation(secagg=True, clip_range=4.0)):
        federation = Federation(
            LocalPool(parties), adapter.get_weights(), config=CONFIG, secure=secure, **kwargs
        )
        for record in federation.run(2):
            assert record["fused"], record["not_fused"]
            _assert_split(record)  # a secure round's wall time is measured too
            assert record["train_seconds"] > 0


# ---- the per-party shortcuts keep every check (issue 12: per-party overhead) --------------
def test_a_fit_after_a_valid_config_still_refuses_a_bad_one():
    adapter = TorchAdapter(mlp((5,), 3, hidden=(4,)))
    data = blobs(20)
    good = TrainConfig(learning_rate=0.1)
    adapter.fit(data, good.with_seed(1))
    adapter.fit(data, good.with_seed(2))  # the same objects but the seed: not checked again
    bad = [
        good.with_seed(-1),
        good.with_seed(True),
        TrainConfig(learning_rate=0.1, epochs=1.0),  # 1.0 == 1, but not an integer
        TrainConfig(learning_rate=True),
        TrainConfig(learning_rate=0.1, optimizer="nope"),
    ]
    for config in bad:
        with pytest.raises(ValueError):
            adapter.fit(data, config)
    assert adapter.fit(data, good.with_seed(3))["loss"] > 0


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (np.nan, "parameter 'b' contains NaN or infinite values"),
        (np.inf, "parameter 'b' contains NaN or infinite values"),
        (1e20, "update norm 1.732e+20 exceeds the limit 100"),  # float32 squares overflow
        (1e3, "update norm 1732 exceeds the limit 100"),
    ],
)
def test_one_pass_validation_still_rejects_what_it_must(value, reason):
    reference = {"a": np.ones(4, np.float32), "b": np.ones(3, np.float32)}
    weights = {"a": np.zeros(4, np.float32), "b": np.full(3, value, np.float32)}
    assert validate_update(Update(weights, 5), reference, max_ratio=10.0) == reason
    ok = {"a": np.full(4, 0.5, np.float32), "b": np.zeros(3, np.float32)}  # ||ok|| = 1
    assert validate_update(Update(ok, 5), reference, max_ratio=10.0) is None
    assert validate_update(Update(ok, 5), reference, max_norm=0.5) is not None
    # the global model's norm given by the caller (once per round) is the one used
    assert validate_update(Update(ok, 5), reference, max_ratio=0.05) is not None  # limit 0.5
    assert validate_update(Update(ok, 5), reference, max_ratio=0.05, reference_norm=100.0) is None


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_a_kept_optimizer_changes_nothing_two_fits_from_one_start_agree(optimizer):
    adapter = TorchAdapter(mlp((5,), 3, hidden=(4,)))
    data, start = blobs(40), adapter.get_weights()
    config = TrainConfig(learning_rate=0.05, optimizer=optimizer, seed=4)
    runs = []
    for _ in range(2):  # a second fit must not see state from the first (Adam's moments)
        adapter.set_weights(start)
        metrics = adapter.fit(data, config)
        runs.append((adapter.get_weights(), metrics))
    (first, m1), (second, m2) = runs
    assert m1 == m2
    assert all(np.array_equal(first[n], second[n]) for n in start)
    assert not all(np.array_equal(first[n], start[n]) for n in start)
