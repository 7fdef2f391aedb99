"""No party can end, stall or poison a federation.

Threat: a party (a buggy one, or one the operator does not control) answers its train task
with anything it likes: a reply of the wrong kind, an example count that is not a sane
integer, metrics that are not finite numbers, an update scaled far beyond an honest one, or no
answer at all. Each must be a *rejected* (or failed) update with its reason in the round's
record, never an exception out of the round loop; the global model must be the model trained
without the hostile party; a round that cannot be fused is recorded as not fused and the
federation goes on.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re

import numpy as np
import pytest
from torch import nn

from fedfuse._settings import SettingsError
from fedfuse.data import federate
from fedfuse.federation import MAX_NUM_EXAMPLES, Aggregation, Federation, validate_update
from fedfuse.fusion import Update, check_fusion_size, krum
from fedfuse.models import TorchAdapter, TrainConfig, torch_seed
from fedfuse.party import Malformed, Party, Skipped, TaskError
from fedfuse.recipes import FederationSpec, simulate
from fedfuse.runtime import LocalPool, MockPool
from fedfuse.runtime._wire import decode_meta, reply_from_wire, reply_to_wire
from fedfuse.weights import to_bytes
from helpers import blobs

HOSTILE = "party_3"
CONFIG = TrainConfig(batch_size=16, learning_rate=0.1)


class Hostile:
    """A Party-like object: trains honestly, then hands ``rewrite(reply)`` to the aggregator."""

    def __init__(self, party: Party, rewrite) -> None:
        self.party, self.rewrite = party, rewrite

    def handle(self, task):
        return self.rewrite(self.party.handle(task))


def _parties(num_parties: int = 4):
    fed = federate(blobs(320, seed=0), blobs(80, seed=1), num_parties, "iid", seed=0)
    with torch_seed(0):
        adapter = TorchAdapter(nn.Linear(5, 3))
    return fed, adapter


def _run(rewrite, rounds: int = 2, aggregation: Aggregation | None = None):
    """Rounds with party_3 hostile, and the same rounds with the honest parties alone."""
    fed, adapter = _parties()
    start = adapter.get_weights()
    parties = {pid: Party(adapter, fed[pid], pid) for pid in fed.party_ids}
    hostile = dict(parties, **{HOSTILE: Hostile(parties[HOSTILE], rewrite)})
    attacked = Federation(LocalPool(hostile), start, config=CONFIG, seed=3, aggregation=aggregation)
    history = attacked.run(rounds)
    honest = {pid: p for pid, p in parties.items() if pid != HOSTILE}
    clean = Federation(LocalPool(honest), start, config=CONFIG, seed=3, aggregation=aggregation)
    clean.run(rounds)
    return attacked, clean, history


def _same_model(a: Federation, b: Federation) -> None:
    assert a.weights.keys() == b.weights.keys()
    for name in a.weights:
        np.testing.assert_allclose(a.weights[name], b.weights[name], rtol=0, atol=1e-7)


def _with(**changes):
    return lambda reply: dataclasses.replace(reply, **changes)


def _scaled_to(value: float):
    return lambda r: dataclasses.replace(
        r, weights={k: np.full_like(v, value) for k, v in r.weights.items()}
    )


@pytest.mark.parametrize(
    ("rewrite", "reason"),
    [
        (_with(is_delta=False), "the task asked for a delta, the party sent full weights"),
        (_with(num_examples=10**400), f"exceeds the limit {MAX_NUM_EXAMPLES}"),
        (_with(num_examples=-1), "num_examples must be a positive integer, got -1"),
        (_with(num_examples=True), "num_examples must be a positive integer, got True"),
        (_with(num_examples="5"), "num_examples must be a positive integer, got '5'"),
        (_with(num_examples=2.5), "num_examples must be a positive integer, got 2.5"),
        (_with(metrics={"loss": math.nan}), "metric 'loss' is not finite: nan"),
        (_with(metrics={"loss": math.inf}), "metric 'loss' is not finite: inf"),
        (_with(metrics={"loss": "low"}), "metric 'loss' is not a number: 'low'"),
        (_with(metrics=["loss"]), "metrics must map names to numbers"),
        (_scaled_to(1e30), r"update norm 4\.243e\+30 exceeds the limit 100"),
        (_scaled_to(1e3), "update norm .* exceeds the limit 100"),
        (lambda r: Skipped(10**400, {}, "nothing new"), "exceeds the limit"),
        (lambda r: Skipped(5, {"loss": math.nan}, "nothing new"), "not finite"),
        (lambda r: Malformed("malformed update reply: bad body"), "bad body"),
        (lambda r: dataclasses.replace(r, weights=[1, 2]), "not named arrays"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_a_hostile_reply_is_rejected_and_the_model_is_the_honest_parties_fedavg(rewrite, reason):
    attacked, clean, history = _run(rewrite)
    for record, honest in zip(history, clean.history, strict=True):
        assert record["fused"] and HOSTILE not in record["participants"]
        assert record["train"] == pytest.approx(honest["train"])  # metrics not poisoned
        assert HOSTILE in record["rejected"], record
        assert re.search(reason, record["rejected"][HOSTILE]), record["rejected"]
        assert len(record["rejected"][HOSTILE]) < 300  # a readable reason, not a 400-digit number
    _same_model(attacked, clean)


@pytest.mark.parametrize(
    ("rewrite", "reason"),
    [
        (lambda r: None, "expected an update, got NoneType"),
        (lambda r: "an update, trust me", "expected an update, got str"),
        (lambda r: TaskError("gave up"), "gave up"),
        (lambda r: 1 / 0, "ZeroDivisionError: division by zero"),
    ],
)
def test_a_party_that_answers_nothing_usable_has_failed_and_the_round_goes_on(rewrite, reason):
    attacked, clean, history = _run(rewrite)
    assert all(r["fused"] and r["failed"] == {HOSTILE: reason} for r in history), history
    _same_model(attacked, clean)


def test_the_default_bound_is_visible_and_can_be_turned_off():
    unbounded = Aggregation(max_update_ratio=None)
    attacked, _, history = _run(_scaled_to(1e3), rounds=1, aggregation=unbounded)
    assert HOSTILE in history[0]["participants"] and not history[0]["rejected"]
    assert np.abs(attacked.weights["weight"]).max() > 100  # what the default bound prevents


def test_an_absolute_bound_and_a_ratio_bound_both_apply():
    _, _, history = _run(_scaled_to(0.5), rounds=1, aggregation=Aggregation(max_update_norm=1.0))
    assert "exceeds the limit 1" in history[0]["rejected"][HOSTILE]


def test_full_weights_are_bounded_by_how_far_they_move_the_model():
    ref = {"w": np.full((2, 2), 50.0, np.float32)}  # ||w|| = 100: limit 1000 at ratio 10
    near = Update({"w": np.full((2, 2), 60.0, np.float32)}, 5, is_delta=False)
    far = Update({"w": np.full((2, 2), -600.0, np.float32)}, 5, is_delta=False)
    assert validate_update(near, ref, max_ratio=10, expect_delta=False) is None
    reason = validate_update(far, ref, max_ratio=10, expect_delta=False)
    assert reason == "update norm 1300 exceeds the limit 1000"
    assert validate_update(near, ref, expect_delta=True) == (
        "the task asked for a delta, the party sent full weights"
    )


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf, "10", True])
def test_bound_settings_that_mean_nothing_are_refused(bad):
    fed, adapter = _parties()
    pool = LocalPool.from_dataset(fed, adapter)
    ratio = r"aggregation\.max_update_ratio must be None or a number >= 0, got "
    with pytest.raises(SettingsError, match=ratio):
        Federation(pool, adapter.get_weights(), aggregation=Aggregation(max_update_ratio=bad))
    norm = r"aggregation\.max_update_norm must be None or a number >= 0, got "
    with pytest.raises(SettingsError, match=norm):
        Federation(pool, adapter.get_weights(), aggregation=Aggregation(max_update_norm=bad))


class Silent:
    """A party that never answers in the rounds listed (as the pool reports a lost party)."""

    def __init__(self, party: Party, rounds: set[int]) -> None:
        self.party, self.rounds = party, rounds

    def handle(self, task):
        if task.round in self.rounds:
            return TaskError("deadline passed before the party answered")
        return self.party.handle(task)


def test_krum_short_of_updates_is_not_fused_and_the_federation_completes():
    fed, adapter = _parties(num_parties=5)
    start = adapter.get_weights()
    parties = {pid: Party(adapter, fed[pid], pid) for pid in fed.party_ids}
    parties["party_4"] = Silent(parties["party_4"], rounds={1, 3})
    federation = Federation(LocalPool(parties), start, fusion="krum", config=CONFIG, seed=1)
    history = federation.run(4)
    assert [r["fused"] for r in history] == [False, True, False, True]
    for record in (history[0], history[2]):
        assert record["not_fused"] == (
            "fusion failed: krum with num_byzantine=1 needs more than 4 updates, got 4"
        )
        assert record["failed"] == {"party_4": "deadline passed before the party answered"}
        assert len(record["participants"]) == 4
    assert history[1]["not_fused"] == "" and federation.round == 4
    # a round that is not fused leaves the model as it was
    fresh = Federation(LocalPool(parties), start, fusion="krum", config=CONFIG, seed=1)
    fresh.run_round()
    for name in start:
        np.testing.assert_array_equal(fresh.weights[name], start[name])


def constant(party_ids, delta, task_seconds=None) -> MockPool:
    """Parties that always send the same delta, whatever they are asked."""
    return MockPool(party_ids, lambda pid, task: Update(delta, 10, {"loss": 1.0}), task_seconds)


def test_a_fused_model_that_is_not_finite_is_never_installed():
    start = {"w": np.full(3, 2e38, np.float32)}  # finite; 2e38 + 2e38 overflows float32
    delta = {"w": np.full(3, 2e38, np.float32)}
    pool = constant(["a", "b"], delta)
    federation = Federation(pool, start, aggregation=Aggregation(max_update_ratio=None))
    history = federation.run(2)
    assert [r["fused"] for r in history] == [False, False]
    assert history[0]["participants"] == ["a", "b"]
    assert "the fused model is not finite (parameter 'w')" in history[0]["not_fused"]
    np.testing.assert_array_equal(federation.weights["w"], start["w"])


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        (lambda meta, body: ({**meta, "num_examples": "5"}, body), "malformed update reply"),
        (lambda meta, body: ({**meta, "num_examples": 10**400}, body), "exceeds the limit"),
        (lambda meta, body: ({**meta, "metrics": {"loss": "x"}}, body), "'metrics'"),
        (lambda meta, body: ({**meta, "metrics": {"loss": math.inf}}, body), "not finite"),
        (lambda meta, body: ({**meta, "is_delta": False}, body), "asked for a delta"),
        (lambda meta, body: ({**meta, "is_delta": "yes"}, body), "'is_delta'"),
        (lambda meta, body: (meta, b"\x80\x04pickle"), "malformed update reply"),
        (lambda meta, body: (meta, body[:-4]), "malformed update reply"),
    ],
)
def test_replies_through_the_wire_functions_are_screened_the_same_way(tamper, reason):
    def through_the_wire(reply):
        meta, weights = reply_to_wire(reply)
        meta, body = tamper(meta, to_bytes(weights))
        return reply_from_wire(decode_meta(json.dumps(meta)), body, HOSTILE)

    attacked, clean, history = _run(through_the_wire, rounds=1)
    assert re.search(reason, history[0]["rejected"][HOSTILE]), history[0]["rejected"]
    _same_model(attacked, clean)


def test_krum_that_can_never_run_is_refused_at_creation():
    with pytest.raises(ValueError, match="krum with num_byzantine=1 needs more than 4 updates"):
        check_fusion_size("krum", {}, 4)
    check_fusion_size("krum", {}, 5)
    with pytest.raises(
        SettingsError, match=r"^fusion: multi_krum with num_byzantine=2 .* at most 5 parties"
    ):
        FederationSpec.from_flat(
            {
                "fusion_algorithm": "multi_krum",
                "num_parties": 10,
                "fraction": 0.5,
                "num_byzantine": 2,
            }
        ).validate()
    with pytest.raises(ValueError, match="krum with num_byzantine=1 needs more than 4 updates"):
        simulate(fusion_algorithm="krum", num_parties=4, rounds=1, centralized=False)


def test_the_service_spec_carries_both_bounds():
    spec = FederationSpec.from_flat({"max_update_norm": 5.0, "max_update_ratio": 0})
    spec.validate()
    assert (spec.aggregation.max_update_norm, spec.aggregation.max_update_ratio) == (5.0, 0)
    nested = FederationSpec.from_dict({"aggregation": {"max_update_norm": 5.0}})
    assert nested.aggregation == spec.aggregation.replace(max_update_ratio=10.0)
    assert FederationSpec().aggregation.max_update_ratio == 10.0
    with pytest.raises(
        SettingsError, match=r"^aggregation\.max_update_ratio must be None or a number >= 0"
    ):
        FederationSpec.from_flat({"max_update_ratio": -2}).validate()


@pytest.fixture
def client(tmp_path):
    from fastapi.testclient import TestClient

    from fedfuse.service import ServiceSettings, create_app

    with TestClient(create_app(ServiceSettings(data_dir=str(tmp_path)))) as c:
        yield c


ZOO_FORM = {"fusion_algorithm": "fedavg", "model": "mlp", "input_shape": "64", "num_classes": 10}


def test_the_rest_form_sets_both_bounds_and_refuses_krum_that_can_never_run(client):
    r = client.post(
        "/start-aggregator", data=ZOO_FORM | {"fusion_algorithm": "krum", "num_parties": 4}
    )
    assert r.status_code == 400 and "krum with num_byzantine=1 needs more than 4" in r.text
    r = client.post("/start-aggregator", data=ZOO_FORM | {"max_update_ratio": -1})
    assert r.status_code == 400
    assert "aggregation.max_update_ratio must be None or a number >= 0, got -1" in r.text
    listing = client.get("/v1/federations")  # still serving, nothing half-made was stored
    assert listing.status_code == 200 and listing.json() == []
    r = client.post(
        "/start-aggregator", data=ZOO_FORM | {"max_update_ratio": 0.5, "max_update_norm": 3}
    )
    assert r.status_code == 200, r.text
    config = client.get(f"/v1/federations/{r.json()['aggregator_id']}").json()["config"]
    bounds = config["aggregation"]
    assert (bounds["max_update_ratio"], bounds["max_update_norm"]) == (0.5, 3.0)
    r = client.post("/start-aggregator", data=ZOO_FORM)
    config = client.get(f"/v1/federations/{r.json()['aggregator_id']}").json()["config"]
    bounds = config["aggregation"]
    assert (bounds["max_update_ratio"], bounds["max_update_norm"]) == (10.0, None)


def test_a_buffer_that_cannot_be_fused_is_recorded_and_the_model_stays():
    start = {"w": np.zeros(1, np.float32)}
    seconds = {"a": 1.0, "b": 1.5, "c": 2.0}
    pool = constant("abc", {"w": np.ones(1, np.float32)}, task_seconds=seconds)
    buffered = Aggregation(mode="buffered", buffer_size=2)
    fed = Federation(pool, start, fusion=krum(1), aggregation=buffered)
    history = fed.run(3)
    assert len(history) == 3 and all(not r["fused"] for r in history)
    assert [len(r["participants"]) for r in history] == [2, 2, 2]
    for record in history:
        assert record["not_fused"] == (
            "fusion failed: krum with num_byzantine=1 needs more than 4 updates, got 2"
        )
    assert fed.version == 0 and fed.weights["w"] == start["w"]
    with pytest.raises(ValueError, match="krum with num_byzantine=1 needs more than 4 updates"):
        Federation(pool, start, fusion="krum", aggregation=buffered.replace(buffer_size=4))


def test_fedfuse_create_sends_both_bounds(monkeypatch, capsys):
    import argparse

    import httpx

    from fedfuse.cli._service import add_parsers

    sent = {}

    class Answer:
        status_code = 200

        def json(self):
            return {"aggregator_id": "f1"}

    def post(url, **kwargs):
        sent.update(url=url, spec=kwargs["json"])
        return Answer()

    monkeypatch.setattr(httpx, "post", post)
    parser = argparse.ArgumentParser()
    add_parsers(parser.add_subparsers())
    flags = ["--max-update-ratio", "0", "--max-update-norm", "2.5"]
    args = parser.parse_args(["create", "--server", "http://127.0.0.1:1", *flags])
    assert args.func(args) == 0 and '"aggregator_id": "f1"' in capsys.readouterr().out
    assert sent["url"] == "http://127.0.0.1:1/v1/federations"
    bounds = sent["spec"]["aggregation"]
    assert (bounds["max_update_ratio"], bounds["max_update_norm"]) == (0.0, 2.5)
    args = parser.parse_args(["create", "--server", "http://127.0.0.1:1"])
    args.func(args)
    bounds = sent["spec"]["aggregation"]  # the service's defaults apply
    assert (bounds["max_update_ratio"], bounds["max_update_norm"]) == (10.0, None)
