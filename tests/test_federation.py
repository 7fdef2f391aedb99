import json

import numpy as np
import pytest
import torch
from torch import nn

from fedfuse._settings import SettingsError
from fedfuse.data import federate
from fedfuse.federation import (
    Aggregation,
    Federation,
    Sampling,
    derive_seed,
    load_checkpoint,
    sample_parties,
    validate_update,
)
from fedfuse.fusion import Update
from fedfuse.models import TorchAdapter, TrainConfig
from fedfuse.party import Party, TaskError
from fedfuse.runtime import LocalPool, MockPool
from helpers import blobs

IDS = [f"p{i}" for i in range(10)]


def test_sampling_fraction_and_count_are_seeded():
    a = sample_parties(IDS, 3, fraction=0.3, seed=1)
    assert len(a) == 3 and a == sample_parties(IDS, 3, fraction=0.3, seed=1)
    assert a == sorted(a, key=IDS.index)
    rounds = {tuple(sample_parties(IDS, r, count=4, seed=1)) for r in range(1, 20)}
    assert len(rounds) > 5
    assert sample_parties(IDS, 1) == IDS
    assert len(sample_parties(IDS, 1, fraction=0.01)) == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"fraction": 0.0}, r"sampling.fraction must be None or a number > 0 and <= 1, got 0.0"),
        ({"fraction": 1.5}, r"sampling.fraction must be None or a number > 0 and <= 1, got 1.5"),
        ({"count": 0}, "sampling.count must be None or an integer >= 1, got 0"),
        ({"count": 11}, "count=11 exceeds the 10 parties"),
        ({"count": 2, "fraction": 0.5}, "either fraction or count"),
    ],
)
def test_sampling_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        sample_parties(IDS, 1, **kwargs)


def test_derive_seed_is_stable_and_distinct():
    assert derive_seed(0, 1, "a") == derive_seed(0, 1, "a")
    assert len({derive_seed(0, r, p) for r in range(5) for p in "abcde"}) == 25


REF = {"w": np.zeros((2, 2), dtype=np.float32)}


@pytest.mark.parametrize(
    ("update", "reason"),
    [
        (Update({"w": np.full((2, 2), np.nan, np.float32)}, 5), "'w' contains NaN"),
        (Update({"w": np.full((2, 2), np.inf, np.float32)}, 5), "NaN or infinite"),
        (Update({"w": np.zeros((3, 2), np.float32)}, 5), r"'w' has shape \(3, 2\)"),
        (Update({"w": np.zeros((2, 2), np.float64)}, 5), "'w' has dtype float64"),
        (Update({"v": np.zeros((2, 2), np.float32)}, 5), "names differ"),
        (Update({"w": np.zeros((2, 2), np.float32)}, 0), "num_examples must be a positive"),
        (Update({"w": np.zeros((2, 2), np.float32)}, 2.5), "num_examples must be a positive"),
        (Update({"w": np.full((2, 2), 10, np.float32)}, 5), "norm 20 exceeds the limit 1"),
    ],
)
def test_validate_update_rejections(update, reason):
    got = validate_update(update, REF, max_norm=1.0)
    assert got is not None and __import__("re").search(reason, got), got


def test_validate_update_accepts_a_good_one():
    assert validate_update(Update({"w": np.ones((2, 2), np.float32)}, 3), REF, max_norm=5) is None


def faulty_pool(fed, adapter, corrupt):
    """Real parties (one per entry of ``fed``) behind a ``MockPool``; the listed ones corrupt
    their replies."""
    parties = {pid: Party(adapter, fed[pid], pid) for pid in fed.party_ids}

    def handler(pid, task):
        reply = parties[pid].handle(task)
        return corrupt[pid](reply) if pid in corrupt else reply

    return MockPool(fed.party_ids, handler)


def _setup(num_parties=4, seed=0):
    train = blobs(400, seed=seed)
    fed = federate(train, blobs(100, seed=seed + 1), num_parties, "iid", seed=seed)
    torch.manual_seed(seed)
    adapter = TorchAdapter(nn.Linear(5, 3))
    return fed, adapter


def _nan(reply):
    return Update(
        {k: np.full_like(v, np.nan) for k, v in reply.weights.items()}, reply.num_examples
    )


def test_bad_updates_are_recorded_and_left_out():
    fed, adapter = _setup()
    start = adapter.get_weights()
    cfg = TrainConfig(learning_rate=0.1)
    clean = Federation(
        LocalPool.from_dataset(fed, adapter), start, config=cfg, sampling=Sampling(count=2), seed=4
    )
    pool = faulty_pool(fed, adapter, {"party_1": _nan, "party_3": lambda r: TaskError("disk full")})
    faulty = Federation(pool, start, config=cfg, seed=4)
    record = faulty.run_round()
    assert record["rejected"] == {"party_1": "parameter 'bias' contains NaN or infinite values"}
    assert record["failed"] == {"party_3": "disk full"}
    assert record["participants"] == ["party_0", "party_2"]
    assert all(np.isfinite(v).all() for v in faulty.weights.values())
    # the same as a clean round with only the two good parties
    clean.pool = LocalPool({p: Party(adapter, fed[p], p) for p in ("party_0", "party_2")})
    clean.sampling = Sampling()
    clean.run_round()
    for k in start:
        np.testing.assert_allclose(faulty.weights[k], clean.weights[k], atol=1e-6)


def test_quorum_not_met_keeps_the_model():
    fed, adapter = _setup()
    start = adapter.get_weights()
    pool = faulty_pool(fed, adapter, {p: _nan for p in fed.party_ids[1:]})
    federation = Federation(pool, start, aggregation=Aggregation(quorum=2))
    record = federation.run_round()
    assert record["fused"] is False and record["participants"] == ["party_0"]
    for k in start:
        np.testing.assert_array_equal(federation.weights[k], start[k])


def test_weighted_metrics_and_evaluations_are_recorded():
    fed, adapter = _setup()

    def central(w):
        adapter.set_weights(w)
        return adapter.evaluate(fed.test)

    federation = Federation(
        LocalPool.from_dataset(fed, adapter),
        adapter.get_weights(),
        config=TrainConfig(learning_rate=0.2, epochs=3),
        central_eval=central,
        federated_eval=True,
    )
    history = federation.run(3)
    assert [r["round"] for r in history] == [1, 2, 3]
    assert history[-1]["central"]["accuracy"] > 0.9
    total_test = sum(len(d) for d in fed.test_data())
    assert history[-1]["federated"]["num_examples"] == total_test
    assert history[-1]["train"]["num_examples"] == sum(len(d) for d in fed.train_data())


def test_checkpoint_resume_matches_an_uninterrupted_run(tmp_path):
    fed, adapter = _setup()
    start = adapter.get_weights()
    cfg = TrainConfig(learning_rate=0.1)
    straight = Federation(
        LocalPool.from_dataset(fed, adapter),
        start,
        config=cfg,
        sampling=Sampling(fraction=0.5),
        seed=3,
    )
    straight.run(4)

    first = Federation(
        LocalPool.from_dataset(fed, adapter),
        start,
        config=cfg,
        sampling=Sampling(fraction=0.5),
        seed=3,
        checkpoint_dir=tmp_path,
    )
    first.run(2)
    assert load_checkpoint(tmp_path).round == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoint.json",
        "round_000001.safetensors",  # the previous checkpoint, in case the newest is damaged
        "round_000002.safetensors",
    ]
    resumed = Federation(
        LocalPool.from_dataset(fed, adapter),
        start,
        config=cfg,
        sampling=Sampling(fraction=0.5),
        seed=3,
        checkpoint_dir=tmp_path,
    )
    assert resumed.round == 2
    resumed.run(4)
    assert [r["round"] for r in resumed.history] == [1, 2, 3, 4]
    assert [r["sampled"] for r in resumed.history] == [r["sampled"] for r in straight.history]
    for k in start:
        np.testing.assert_array_equal(resumed.weights[k], straight.weights[k])
    index = json.loads((tmp_path / "checkpoint.json").read_text())
    assert index["round"] == 4 and index["weights_file"] == "round_000004.safetensors"


def test_resume_refuses_a_checkpoint_of_another_model(tmp_path):
    fed, adapter = _setup()
    Federation(
        LocalPool.from_dataset(fed, adapter), adapter.get_weights(), checkpoint_dir=tmp_path
    ).run(1)
    other = {"weight": np.zeros((7, 5), np.float32), "bias": np.zeros(7, np.float32)}
    with pytest.raises(ValueError, match="'weight' has shape"):
        Federation(LocalPool.from_dataset(fed, adapter), other, checkpoint_dir=tmp_path)


def test_federation_argument_errors():
    fed, adapter = _setup()
    pool = LocalPool.from_dataset(fed, adapter)
    w = adapter.get_weights()
    with pytest.raises(SettingsError, match="fusion.name must be one of 'classwise_avg', .*'avg'"):
        Federation(pool, w, fusion="avg")
    with pytest.raises(SettingsError, match="config.epochs must be an integer >= 1, got 0"):
        Federation(pool, w, config=TrainConfig(epochs=0))
    with pytest.raises(SettingsError, match="sampling.fraction must be None or a number > 0"):
        Federation(pool, w, sampling=Sampling(fraction=2))
    with pytest.raises(SettingsError, match="aggregation.quorum must be an integer >= 1, got 0"):
        Federation(pool, w, aggregation=Aggregation(quorum=0))
    with pytest.raises(ValueError, match="count=5 exceeds the 4 parties available"):
        Federation(pool, w, sampling=Sampling(count=5))
    with pytest.raises(ValueError, match="rounds must be"):
        Federation(pool, w).run(0)
