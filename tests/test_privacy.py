"""Differential privacy and secure aggregation in the one round loop: spec, records, budget,
resume, and SecAgg+ rounds over real ``Party`` objects with dropouts at every stage."""

from __future__ import annotations

import dp_accounting as dpa
import numpy as np
import pytest
from dp_accounting.pld import pld_privacy_accountant

from fedfuse import FederationSpec
from fedfuse.data import federate
from fedfuse.federation import (
    Aggregation,
    Federation,
    Privacy,
    Sampling,
    SecureAggregation,
    sample_parties,
)
from fedfuse.models import TorchAdapter, TrainConfig, mlp
from fedfuse.party import Party, SecureReply, SecureTask, TaskError, TrainTask
from fedfuse.recipes import simulate
from fedfuse.runtime import LocalPool, reply_from_wire, reply_to_wire, task_from_wire
from fedfuse.runtime import task_to_wire as _task_to_wire
from fedfuse.runtime._remote import PendingTask
from fedfuse.weights import from_bytes, to_bytes
from helpers import blobs

CONFIG = TrainConfig(epochs=1, batch_size=16, learning_rate=0.1)


def _parties(n: int = 6, seed: int = 0):
    train, test = blobs(60 * n, seed=seed), blobs(100, seed=seed + 1)
    fed = federate(train, test, n, "iid", seed=seed)
    torch_adapter = TorchAdapter(mlp((5,), 3, hidden=(8,)))
    return fed, torch_adapter


def _pool(fed, adapter, wrap=None):
    parties = {pid: Party(adapter, fed[pid], pid) for pid in fed.party_ids}
    if wrap:
        parties = {pid: wrap.get(pid, lambda p: p)(p) for pid, p in parties.items()}
    return LocalPool(parties)


# ---- the spec -------------------------------------------------------------------------------
def test_privacy_and_secure_settings_are_flat_names_of_the_spec():
    flat = {"noise_multiplier": 1.1, "l2_norm_clip": 0.5, "max_epsilon": 8, "poisson": True,
            "fraction": 0.2, "secagg": True, "dropout_rate": 0.2}  # fmt: skip
    spec = FederationSpec.from_flat(flat)
    assert spec.privacy.noise_multiplier == 1.1 and spec.privacy.l2_norm_clip == 0.5
    assert spec.privacy.max_epsilon == 8 and spec.sampling.poisson
    assert spec.secure.secagg and spec.secure.dropout_rate == 0.2
    spec.validate()
    again = FederationSpec.from_dict(spec.to_dict())
    assert again == spec


@pytest.mark.parametrize(
    ("flat", "needle"),
    [
        ({"noise_multiplier": 1.0, "fusion_algorithm": "median"}, "median"),
        ({"secagg": True, "fusion_algorithm": "krum"}, "krum"),
        ({"secagg": True, "noise_multiplier": 1.0, "noise_seed": 3}, "noise_seed"),
        ({"noise_multiplier": 1.0, "fusion_params": {"clip_norm": 2}}, "l2_norm_clip"),
        ({"poisson": True}, "fraction"),
        ({"poisson": True, "fraction": 0.5, "mode": "buffered"}, "buffered"),
        ({"secagg": True, "compression": "int8"}, "compression"),
        ({"noise_multiplier": 1.0, "noise": "distributed"}, "secure aggregation"),
        ({"noise_multiplier": -1.0}, "privacy.noise_multiplier"),
        ({"dropout_rate": 1.0}, "secure.dropout_rate"),
    ],
)
def test_combinations_that_cannot_work_are_refused_naming_why(flat, needle):
    with pytest.raises(ValueError, match=needle):
        FederationSpec.from_flat(flat).validate()


def test_poisson_sampling_takes_each_party_independently_and_reproducibly():
    ids = [f"p{i}" for i in range(1000)]
    sizes = [len(sample_parties(ids, r, fraction=0.1, poisson=True, seed=4)) for r in range(50)]
    assert len(set(sizes)) > 5  # the count varies from round to round
    assert 80 < np.mean(sizes) < 120
    assert sample_parties(ids, 3, fraction=0.1, poisson=True, seed=4) == sample_parties(
        ids, 3, fraction=0.1, poisson=True, seed=4
    )


# ---- differential privacy in the loop -------------------------------------------------------
def _pld_epsilon(q: float, z: float, rounds: int, delta: float) -> float:
    accountant = pld_privacy_accountant.PLDAccountant()  # dp-accounting's own default grid
    event = dpa.PoissonSampledDpEvent(q, dpa.GaussianDpEvent(z))
    accountant.compose(dpa.SelfComposedDpEvent(event, rounds))
    return accountant.get_epsilon(delta)


def test_every_record_carries_epsilon_delta_and_sigma_equal_to_dp_accounting():
    fed, adapter = _parties(8)
    privacy = Privacy(noise_multiplier=0.8, l2_norm_clip=1.0, noise_seed=1)
    federation = Federation(
        _pool(fed, adapter),
        adapter.get_weights(),
        config=CONFIG,
        sampling=Sampling(fraction=0.5, poisson=True),
        privacy=privacy,
    )
    history = federation.run(3)
    for t, record in enumerate(history, start=1):
        assert record["sigma"] == 0.8 and record["delta"] == 1e-5
        assert record["epsilon"] == pytest.approx(_pld_epsilon(0.5, 0.8, t, 1e-5), rel=1e-4)
    assert history[0]["epsilon"] < history[1]["epsilon"] < history[2]["epsilon"]


def test_a_round_that_would_exceed_max_epsilon_is_not_run():
    fed, adapter = _parties(4)
    privacy = Privacy(noise_multiplier=1.0, max_epsilon=_pld_epsilon(1.0, 1.0, 2, 1e-5) * 1.01)
    federation = Federation(_pool(fed, adapter), adapter.get_weights(), config=CONFIG,
                            privacy=privacy)  # fmt: skip
    history = federation.run(10)
    assert len(history) == 2
    assert "max_epsilon" in federation.stop_reason
    assert history[-1]["epsilon"] <= privacy.max_epsilon


def test_central_dp_noise_is_calibrated_to_the_clip_and_the_expected_count():
    """With updates far larger than the clip and z = 0, the step is the mean of clipped updates
    over the expected count; with z > 0 the extra noise has std z C / m."""
    fed, adapter = _parties(4)
    start = adapter.get_weights()
    fused = {}
    for z in (0.0, 2.0):
        federation = Federation(
            _pool(fed, adapter),
            start,
            config=TrainConfig(epochs=1, batch_size=8, learning_rate=0.3),
            privacy=Privacy(noise_multiplier=z, l2_norm_clip=0.01, noise_seed=5),
        )
        federation.run(1)
        fused[z] = np.concatenate([(federation.weights[n] - start[n]).ravel() for n in start])
    assert np.linalg.norm(fused[0.0]) <= 0.01 + 1e-6  # every update clipped to 0.01
    noise = fused[2.0] - fused[0.0]
    assert np.std(noise) == pytest.approx(2.0 * 0.01 / 4, rel=0.25)


def test_a_resumed_private_federation_keeps_its_budget_and_its_noise(tmp_path):
    fed, adapter = _parties(4)
    start = adapter.get_weights()
    kwargs = {
        "config": CONFIG,
        "privacy": Privacy(
            noise_multiplier=1.0, clipping="adaptive", noise_seed=7, accountant="rdp"
        ),
        "sampling": Sampling(fraction=0.5, poisson=True),
        "seed": 3,
    }
    straight = Federation(_pool(fed, adapter), start, **kwargs)
    straight.run(4)
    first = Federation(_pool(fed, adapter), start, checkpoint_dir=tmp_path, **kwargs)
    first.run(2)
    resumed = Federation(_pool(fed, adapter), start, checkpoint_dir=tmp_path, **kwargs)
    assert resumed.accountant.epsilon() == pytest.approx(first.accountant.epsilon())
    resumed.run(4)
    clips = [r["clip_norm"] for r in resumed.history]
    assert clips[0] != clips[1] != clips[2]  # adaptive clipping moves the clip every round
    assert [r["epsilon"] for r in resumed.history] == pytest.approx(
        [r["epsilon"] for r in straight.history]
    )
    for name in start:
        np.testing.assert_allclose(resumed.weights[name], straight.weights[name], atol=1e-6)


def test_simulate_with_dp_from_flat_settings_reports_epsilon():
    result = simulate(
        dataset="digits",
        num_parties=4,
        rounds=2,
        noise_multiplier=0.5,
        l2_norm_clip=1.0,
        fraction=0.5,
        poisson=True,
        evaluation={"centralized": False, "federated": False},
    )
    assert [r["round"] for r in result.history] == [1, 2]
    assert all(r["epsilon"] > 0 for r in result.history)


# ---- secure aggregation ---------------------------------------------------------------------
class _DropAt:
    """A party that stops answering at one stage of secure aggregation."""

    def __init__(self, party: Party, stage: str) -> None:
        self.party, self.stage = party, stage

    def handle(self, task):
        if isinstance(task, SecureTask) and task.stage == self.stage:
            return TaskError("gone")
        return self.party.handle(task)


def _plain_fedavg(fed, adapter, start, party_ids, config):
    """FedAvg of the same parties' deltas, by hand."""
    total, count = None, 0
    for pid in party_ids:
        reply = Party(adapter, fed[pid], pid).handle(TrainTask(1, start, config))
        n = reply.num_examples
        flat = {k: v.astype(np.float64) * n for k, v in reply.weights.items()}
        total = flat if total is None else {k: total[k] + flat[k] for k in flat}
        count += n
    return {k: start[k] + (v / count).astype(np.float32) for k, v in total.items()}


@pytest.mark.parametrize("drop_stage", [None, "advertise", "share", "mask"])
def test_a_secure_round_fuses_what_plain_fedavg_fuses_from_the_survivors(drop_stage):
    fed, adapter = _parties(6)
    start = adapter.get_weights()
    config = CONFIG.with_seed(11)  # the same local training in both runs
    wrap = {"party_2": lambda p: _DropAt(p, drop_stage)} if drop_stage else None
    pool = _pool(fed, adapter, wrap)

    class _SameSeed(Federation):  # every party trains with the seed of the by-hand run
        def _task(self, step, party_id):
            return TrainTask(step, self.weights, config)

    federation = _SameSeed(
        pool,
        start,
        config=CONFIG,
        secure=SecureAggregation(secagg=True, dropout_rate=0.3, clip_range=4.0),
        aggregation=Aggregation(quorum=3),
    )
    record = federation.run_round()
    assert record["fused"], record["not_fused"]
    survivors = [p for p in fed.party_ids if drop_stage is None or p != "party_2"]
    assert sorted(record["participants"]) == survivors
    if drop_stage:
        assert "party_2" in record["failed"]
    expected = _plain_fedavg(fed, adapter, start, survivors, config)
    for name in start:  # within the quantizer's error (about 1e-6 here)
        np.testing.assert_allclose(federation.weights[name], expected[name], atol=1e-5)
    assert record["secure"]["threshold"] <= record["secure"]["degree"]


def test_secure_aggregation_with_distributed_dp_noise_records_epsilon():
    fed, adapter = _parties(6)
    federation = Federation(
        _pool(fed, adapter),
        adapter.get_weights(),
        config=CONFIG,
        secure=SecureAggregation(secagg=True),
        privacy=Privacy(noise_multiplier=1.0, l2_norm_clip=0.5, noise="distributed"),
    )
    history = federation.run(2)
    assert all(r["fused"] for r in history), [r["not_fused"] for r in history]
    assert history[-1]["epsilon"] > history[0]["epsilon"] > 0


def test_a_secure_round_that_loses_too_many_parties_is_not_fused_and_keeps_the_model():
    fed, adapter = _parties(4)
    start = adapter.get_weights()
    wrap = {pid: (lambda p: _DropAt(p, "mask")) for pid in fed.party_ids[:3]}
    federation = Federation(
        _pool(fed, adapter, wrap), start, config=CONFIG, secure=SecureAggregation(secagg=True)
    )
    record = federation.run_round()
    assert not record["fused"] and "secure aggregation" in record["not_fused"]
    for name in start:
        np.testing.assert_array_equal(federation.weights[name], start[name])


def test_secure_tasks_and_replies_survive_the_wire():
    fed, adapter = _parties(2)
    start = adapter.get_weights()
    party = Party(adapter, fed["party_0"], "party_0")
    from fedfuse.party import SecureEncoding

    task = SecureTask(1, "advertise", {"stage": "advertise", "session": b"\x01" * 16}, start,
                      CONFIG, SecureEncoding(max_summands=2))  # fmt: skip
    meta, weights = _task_to_wire(PendingTask(9, task))
    back = task_from_wire(meta, to_bytes(weights)).task
    assert isinstance(back, SecureTask) and back.stage == "advertise"
    assert back.request == task.request and back.encoding == task.encoding
    assert sorted(back.weights) == sorted(start)
    reply = SecureReply("mask", {"stage": "mask", "masked": np.arange(5, dtype=np.uint32)})
    meta, weights = reply_to_wire(reply)
    again = reply_from_wire(meta, bytearray(to_bytes(weights)), "party_0")
    assert isinstance(again, SecureReply)
    np.testing.assert_array_equal(again.message["masked"], np.arange(5, dtype=np.uint32))
    assert party.handle(SecureTask(1, "share", {})).message.startswith("no secure")
    assert from_bytes(to_bytes(weights))  # plain safetensors, no pickle


def test_buffered_secure_aggregation_fuses_each_full_buffer_of_held_updates():
    """FedBuff under SecAgg+: parties train at their own pace and hold their update; each
    buffer of held updates is one secure round, staleness-weighted by the parties themselves."""
    fed, adapter = _parties(6)
    start = adapter.get_weights()
    parties = {pid: Party(adapter, fed[pid], pid) for pid in fed.party_ids}
    seconds = {pid: 1.0 + i for i, pid in enumerate(fed.party_ids)}  # slow and fast parties
    federation = Federation(
        LocalPool(parties, seconds),
        start,
        config=CONFIG,
        aggregation=Aggregation(mode="buffered", buffer_size=4),
        sampling=Sampling(count=5),
        secure=SecureAggregation(secagg=True, clip_range=4.0),
        privacy=Privacy(noise_multiplier=0.5, noise="distributed"),
    )
    history = federation.run(3)
    for record in history:
        assert record["fused"], record["not_fused"]
        assert len(record["participants"]) == 4 and len(set(record["participants"])) == 4
        assert len(record["staleness"]) == 4
        assert record["epsilon"] > 0 and record["secure"]["dropped"] == {}
    assert any(s > 0 for r in history for s in r["staleness"])  # the slow parties were stale
    assert not all(np.allclose(federation.weights[n], start[n]) for n in start)
    last = history[-1]["participants"]
    assert all(p.held is None for p in parties.values() if p.party_id in last)


def test_buffered_dp_accounts_each_buffer_without_amplification():
    """FedBuff with central DP: no sampler to amplify with, so each buffer is one Gaussian
    mechanism, its multiplier divided by how often one party arrived in it."""
    fed, adapter = _parties(4)
    parties = {pid: Party(adapter, fed[pid], pid) for pid in fed.party_ids}
    seconds = {"party_0": 1.0, "party_1": 1.0, "party_2": 5.0, "party_3": 5.0}
    federation = Federation(
        LocalPool(parties, seconds),
        adapter.get_weights(),
        config=CONFIG,
        aggregation=Aggregation(mode="buffered", buffer_size=3),
        privacy=Privacy(noise_multiplier=2.0, noise_seed=0),
    )
    history = federation.run(2)
    accountant = pld_privacy_accountant.PLDAccountant()
    for record in history:
        assert record["fused"]
        most = max(record["participants"].count(p) for p in record["participants"])
        accountant.compose(dpa.GaussianDpEvent(2.0 / most))
    assert any(len(set(r["participants"])) < 3 for r in history)  # a fast party came twice
    assert history[-1]["epsilon"] == pytest.approx(accountant.get_epsilon(1e-5), rel=1e-3)


def test_dp_ftrl_tree_noise_is_accounted_as_one_gaussian_over_the_tree():
    """DP-FTRL: no sampling amplification; a party in p rounds touches at most p * levels tree
    nodes, so the release is one Gaussian of multiplier z / (p sqrt(levels))."""
    fed, adapter = _parties(4)
    federation = Federation(
        _pool(fed, adapter),
        adapter.get_weights(),
        config=CONFIG,
        privacy=Privacy(noise_multiplier=4.0, noise="tree", noise_seed=2),
    )
    history = federation.run(3)
    assert all(r["fused"] for r in history)
    levels = 2  # rounds 1..3 sit in ceil(log2(3 + 1)) = 2 levels of the tree
    exact = dpa.get_epsilon_gaussian(4.0 / (3 * levels**0.5), 1e-5)  # every party in 3 rounds
    assert history[-1]["epsilon"] == pytest.approx(exact, rel=1e-6)


@pytest.mark.parametrize("noise", ["central", "tree"])
def test_under_secure_aggregation_the_aggregator_adds_central_or_tree_noise(noise):
    fed, adapter = _parties(6)
    start = adapter.get_weights()
    steps = {}
    same = CONFIG.with_seed(1)  # the same local training in both runs
    for z in (0.0, 3.0):
        federation = Federation(
            _pool(fed, adapter),
            start,
            config=CONFIG,
            secure=SecureAggregation(secagg=True, clip_range=4.0),
            privacy=Privacy(noise_multiplier=z, noise=noise, l2_norm_clip=0.05),
        )
        federation._task = lambda step, pid, f=federation: TrainTask(step, f.weights, same)
        assert federation.run_round()["fused"]
        steps[z] = np.concatenate([(federation.weights[n] - start[n]).ravel() for n in start])
    assert np.std(steps[3.0] - steps[0.0]) == pytest.approx(3.0 * 0.05 / 6, rel=0.25)


@pytest.mark.parametrize(
    "body",
    [
        {},  # no message tensor
        {"fedfuse.secagg": np.zeros(4, np.float32)},  # not bytes
        {"fedfuse.secagg": np.frombuffer(b"not json", np.uint8)},
        {"fedfuse.secagg": np.frombuffer(b'{"a": {"$x": 1}}', np.uint8)},  # unknown tag
        {"fedfuse.secagg": np.frombuffer(b"{}", np.uint8), "extra": np.zeros(2, np.uint32)},
    ],
)
def test_a_hostile_secure_reply_is_malformed_never_an_exception(body):
    from fedfuse.party import Malformed

    meta = {"kind": "secure", "stage": "mask", "metrics": {}}
    reply = reply_from_wire(meta, bytearray(to_bytes(body)), "party_0")
    assert isinstance(reply, Malformed) and "secure" in reply.reason


def test_a_party_with_non_finite_metrics_drops_out_of_a_secure_round_only():
    fed, adapter = _parties(6)

    class _NaNMetrics:
        def __init__(self, party):
            self.party = party

        def handle(self, task):
            reply = self.party.handle(task)
            if isinstance(reply, SecureReply) and reply.stage == "advertise":
                return SecureReply(reply.stage, reply.message, {"loss": float("nan")})
            return reply

    federation = Federation(
        _pool(fed, adapter, {"party_1": _NaNMetrics}),
        adapter.get_weights(),
        config=CONFIG,
        secure=SecureAggregation(secagg=True, dropout_rate=0.3),
    )
    record = federation.run_round()
    assert record["fused"], record["not_fused"]
    assert "not finite" in record["rejected"]["party_1"]
    assert "party_1" not in record["participants"] and len(record["participants"]) == 5
    assert np.isfinite(record["train"]["loss"])
