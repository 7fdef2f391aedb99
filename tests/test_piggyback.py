"""Federated evaluation carried with the next round's training tasks (``piggyback_eval``).

The claim to check: piggybacking gives the same metrics as the separate broadcast, per model,
float for float, when every party is sampled; it sends the model once per party per round
instead of twice; and records say which round's tasks brought a model's metrics.
"""

from __future__ import annotations

import itertools
import json
import threading

import numpy as np
import pytest
import torch
from torch import nn

from fedfuse.data import federate
from fedfuse.federation import Aggregation, Federation, Sampling, load_checkpoint
from fedfuse.fusion import Update
from fedfuse.models import TorchAdapter, TrainConfig
from fedfuse.party import (
    ClientParty,
    Evaluated,
    Evaluation,
    Malformed,
    Party,
    Skipped,
    TaskError,
    TrainTask,
)
from fedfuse.runtime import LocalPool, MockPool, PendingTask, RemotePool
from fedfuse.runtime._local import dataset_parties
from fedfuse.runtime._wire import reply_from_wire, reply_to_wire, task_from_wire, task_to_wire
from fedfuse.weights import num_bytes, to_bytes
from helpers import blobs

LONG = 60.0  # seconds a thread may wait for a task: generous for a busy 2-core machine
CONFIG = TrainConfig(learning_rate=0.2, epochs=1)
TEST_EXAMPLES = 48  # the parties' local test splits together: 20% of 240 examples


def _problem(num_parties: int = 4):
    fed = federate(blobs(240, seed=0), blobs(80, seed=1), num_parties, "iid", seed=0)
    torch.manual_seed(0)
    return fed, TorchAdapter(nn.Linear(5, 3))


def _federation(pool, start, *, piggyback: bool, **kwargs) -> Federation:
    return Federation(
        pool,
        start,
        config=CONFIG,
        seed=5,
        federated_eval=True,
        piggyback_eval=piggyback,
        **kwargs,
    )


def _local_run(piggyback: bool, rounds: int = 3, **kwargs) -> tuple[Federation, list[dict]]:
    fed, adapter = _problem()
    federation = _federation(
        LocalPool.from_dataset(fed, adapter), adapter.get_weights(), piggyback=piggyback, **kwargs
    )
    told: list[dict] = []
    federation.run(rounds, on_round=lambda r: told.append(json.loads(json.dumps(r))))
    return federation, told


def _assert_same_model_metrics(separate: list[dict], carried: list[dict]) -> None:
    assert [r["federated"] for r in carried] == [r["federated"] for r in separate]
    assert [r["train"] for r in carried] == [r["train"] for r in separate]
    assert all(r["federated"]["num_examples"] == TEST_EXAMPLES for r in carried)


# ---- the same metrics as the broadcast --------------------------------------------------------
def test_local_piggyback_equals_the_separate_broadcast_and_sends_the_model_once():
    broadcast, _ = _local_run(piggyback=False)
    carried, told = _local_run(piggyback=True)
    _assert_same_model_metrics(broadcast.history, carried.history)
    for name, value in broadcast.weights.items():
        np.testing.assert_array_equal(carried.weights[name], value)
    # rounds 1 and 2: brought by the next round's tasks; round 3: the final broadcast
    assert [r.get("federated_with_round") for r in carried.history] == [2, 3, None]
    model = num_bytes(broadcast.weights)
    assert [r["bytes_down"] for r in broadcast.history] == [8 * model] * 3
    assert [r["bytes_down"] for r in carried.history] == [4 * model, 4 * model, 8 * model]
    # on_round saw each record once, in order, complete
    assert [r["round"] for r in told] == [1, 2, 3]
    assert all("federated" in r for r in told)


def test_a_failed_evaluation_costs_only_the_evaluation():
    fed, adapter = _problem()
    fed_no_test = federate(blobs(240, seed=0), None, 4, "iid", seed=0, local_test_fraction=0)
    parties = dataset_parties(fed, adapter)
    parties["party_1"] = Party(adapter, fed_no_test["party_1"], "party_1")  # no test split
    federation = _federation(LocalPool(parties), adapter.get_weights(), piggyback=True)
    history = federation.run(2)
    assert history[0]["participants"] == ["party_0", "party_1", "party_2", "party_3"]
    assert history[0]["not_evaluated"] == {"party_1": "party has no test data"}
    assert history[0]["federated"]["num_examples"] == TEST_EXAMPLES - len(fed["party_1"].test)


def test_parties_that_reply_without_an_evaluation_are_asked_separately():
    """A pool (or an older party) that ignores ``evaluate`` still gets its model evaluated."""
    broadcast, _ = _local_run(piggyback=False, rounds=2)
    fed, adapter = _problem()
    parties = dataset_parties(fed, adapter)

    def handle(pid: str, task):
        if pid == "party_2" and isinstance(task, TrainTask):  # trains, ignores ``evaluate``
            return parties[pid].handle(TrainTask(task.round, task.weights, task.config))
        return parties[pid].handle(task)

    pool = MockPool(list(parties), handle)
    federation = _federation(pool, adapter.get_weights(), piggyback=True)
    history = federation.run(2)
    _assert_same_model_metrics(broadcast.history, history)
    model = num_bytes(federation.weights)
    assert history[0]["bytes_down"] == 5 * model  # 4 training tasks, 1 separate evaluation


def test_with_sampling_the_next_rounds_parties_evaluate():
    fed, adapter = _problem(num_parties=6)
    federation = _federation(
        LocalPool.from_dataset(fed, adapter),
        adapter.get_weights(),
        piggyback=True,
        sampling=Sampling(fraction=0.5),
    )
    history = federation.run(3)
    for record, following in itertools.pairwise(history):
        sampled_test = sum(len(fed[p].test) for p in following["sampled"])
        assert record["federated"]["num_examples"] == sampled_test
        assert record["federated_with_round"] == following["round"]
    assert history[-1]["federated"]["num_examples"] == TEST_EXAMPLES  # the final broadcast


def test_resume_completes_the_pending_evaluation(tmp_path):
    straight, _ = _local_run(piggyback=True, rounds=3)

    def checkpointed() -> Federation:
        fed, adapter = _problem()
        pool = LocalPool.from_dataset(fed, adapter)
        return _federation(pool, adapter.get_weights(), piggyback=True, checkpoint_dir=tmp_path)

    first = checkpointed()
    first.run_round()
    first.run_round()  # stopped here: round 2's evaluation was still to come
    assert "federated" not in load_checkpoint(tmp_path).history[-1]
    resumed = checkpointed()
    told: list[int] = []
    resumed.run(3, on_round=lambda r: told.append(r["round"]))
    assert told == [2, 3]
    assert [r["federated"] for r in resumed.history] == [r["federated"] for r in straight.history]
    assert "federated" in load_checkpoint(tmp_path).history[-1]


def test_buffered_mode_keeps_the_broadcast():
    fed, adapter = _problem()
    federation = _federation(
        LocalPool.from_dataset(fed, adapter),
        adapter.get_weights(),
        piggyback=True,
        aggregation=Aggregation(mode="buffered", buffer_size=2),
        sampling=Sampling(count=2),
    )
    assert not federation.piggybacks
    record = federation.run_round()
    assert "federated" in record and "federated_with_round" not in record


# ---- through the service's RemotePool and the wire -------------------------------------------
class WireParties:
    """Remote parties on one thread, as the service sees them: each task goes through
    ``task_to_wire`` / JSON / safetensors / ``task_from_wire`` to a ``Party``, and its reply
    back through ``reply_to_wire`` / ``reply_from_wire`` into ``RemotePool.submit``. The
    parties answer in a fixed order, so the fusion folds their updates in the same order in
    every run (the pool yields replies as they arrive)."""

    def __init__(self, pool: RemotePool, parties: dict[str, Party]) -> None:
        self.pool, self.parties = pool, parties
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.task_kinds: list[str] = []
        for pid in parties:
            pool.add_remote(pid)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            while not self.stop.is_set():
                for pid, party in self.parties.items():
                    pending = None
                    while pending is None and not self.stop.is_set():
                        pending = self.pool.next_task(pid, wait=0.2)
                    if pending is not None:
                        self._answer(pid, party, pending)
        except BaseException as exc:  # surfaced by close()
            self.error = exc

    def _answer(self, pid: str, party: Party, pending: PendingTask) -> None:
        meta, weights = task_to_wire(pending)
        received = task_from_wire(json.loads(json.dumps(meta)), to_bytes(weights))
        self.task_kinds.append(meta["kind"] + ("+evaluate" if "evaluate" in meta else ""))
        reply_meta, body = reply_to_wire(party.handle(received.task))
        reply = reply_from_wire(
            json.loads(json.dumps(reply_meta)), to_bytes(body) if body is not None else b"", pid
        )
        self.pool.submit(pid, pending.task_id, reply)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(LONG)
        assert not self.thread.is_alive()
        if self.error is not None:
            raise self.error


def _remote_run(piggyback: bool) -> tuple[list[dict], list[str]]:
    fed, adapter = _problem()
    pool = RemotePool(liveness=3600)
    parties = WireParties(pool, dataset_parties(fed, adapter))
    try:
        federation = _federation(
            pool, adapter.get_weights(), piggyback=piggyback, aggregation=Aggregation(deadline=LONG)
        )
        history = federation.run(3)
    finally:
        parties.close()
    return history, parties.task_kinds


def test_remote_piggyback_equals_the_separate_broadcast():
    separate, separate_tasks = _remote_run(piggyback=False)
    carried, carried_tasks = _remote_run(piggyback=True)
    _assert_same_model_metrics(separate, carried)
    local, _ = _local_run(piggyback=False)
    assert [r["federated"] for r in carried] == [r["federated"] for r in local.history]
    assert (
        separate_tasks == ["train"] * 4 + ["evaluate"] * 4 + (["train"] * 4 + ["evaluate"] * 4) * 2
    )
    assert carried_tasks == ["train"] * 4 + ["train+evaluate"] * 8 + ["evaluate"] * 4


# ---- the party and the wire -----------------------------------------------------------------
def test_party_evaluates_the_weights_it_received_before_training():
    fed, adapter = _problem()
    party = Party(adapter, fed["party_0"], "party_0")
    start = adapter.get_weights()
    task = TrainTask(3, start, CONFIG.with_seed(1), evaluate="test")
    reply = party.handle(task)
    assert isinstance(reply, Evaluated) and isinstance(reply.reply, Update)
    adapter.set_weights(start)
    assert reply.evaluation == Evaluation(
        len(fed["party_0"].test), adapter.evaluate(fed["party_0"].test)
    )
    plain = Party(adapter, fed["party_0"], "party_0").handle(
        TrainTask(3, start, CONFIG.with_seed(1))
    )
    for name, value in plain.weights.items():
        np.testing.assert_array_equal(reply.reply.weights[name], value)


def _through_wire(reply):
    meta, body = reply_to_wire(reply)
    return reply_from_wire(json.loads(json.dumps(meta)), to_bytes(body) if body else b"", "p")


def test_the_wire_carries_the_evaluation_and_the_split():
    weights = {"w": np.ones(2, np.float32)}
    meta, _ = task_to_wire(PendingTask(7, TrainTask(1, weights, evaluate="test")))
    assert meta["evaluate"] == "test"
    assert task_from_wire(meta, to_bytes(weights)).task.evaluate == "test"
    plain, _ = task_to_wire(PendingTask(8, TrainTask(1, weights)))
    assert (
        "evaluate" not in plain and task_from_wire(plain, to_bytes(weights)).task.evaluate is None
    )
    for bad in ("valid", 1, ["test"]):
        with pytest.raises(ValueError, match="'evaluate' must be one of test, train"):
            task_from_wire({**meta, "evaluate": bad}, to_bytes(weights))
    with pytest.raises(ValueError, match="'split' must be one of"):
        evaluate = {"task_id": 1, "round": 1, "kind": "evaluate", "split": "../x"}
        task_from_wire(evaluate, to_bytes(weights))

    update = Update(weights, 5, {"loss": 0.5})
    back = _through_wire(Evaluated(update, Evaluation(3, {"accuracy": 0.75})))
    assert isinstance(back, Evaluated) and back.evaluation == Evaluation(3, {"accuracy": 0.75})
    np.testing.assert_array_equal(back.reply.weights["w"], weights["w"])
    skipped = _through_wire(Evaluated(Skipped(5, {}, "small"), TaskError("party has no test data")))
    assert skipped.reply == Skipped(5, {}, "small")
    assert skipped.evaluation == TaskError("party has no test data")


@pytest.mark.parametrize(
    "evaluation",
    [
        "not an object",
        {"num_examples": "3", "metrics": {}},
        {"num_examples": 3, "metrics": {"accuracy": "high"}},
        {"num_examples": 3, "metrics": [1, 2]},
    ],
)
def test_a_malformed_evaluation_leaves_the_update_readable(evaluation):
    meta, body = reply_to_wire(Update({"w": np.ones(2, np.float32)}, 5, {"loss": 0.5}))
    reply = reply_from_wire({**meta, "evaluation": evaluation}, to_bytes(body), "p")
    assert isinstance(reply, Evaluated) and isinstance(reply.reply, Update)
    assert isinstance(reply.evaluation, Malformed)
    assert "malformed evaluation" in reply.evaluation.reason


def test_hostile_evaluations_are_left_out_with_a_reason():
    """Counts and metrics are judged by the round loop, as for a broadcast's evaluations."""
    fed, adapter = _problem()
    parties = dataset_parties(fed, adapter)
    hostile = {
        "party_0": Evaluation(-4, {"accuracy": 0.5}),
        "party_1": Evaluation(10, {"accuracy": float("nan")}),
        "party_2": Malformed("malformed evaluation: metadata field 'num_examples' is missing"),
    }

    def handle(pid: str, task):
        reply = parties[pid].handle(task)
        if isinstance(reply, Evaluated) and pid in hostile:
            return Evaluated(reply.reply, hostile[pid])
        return reply

    pool = MockPool(list(parties), handle)
    federation = _federation(pool, adapter.get_weights(), piggyback=True)
    history = federation.run(2)
    assert sorted(history[0]["not_evaluated"]) == ["party_0", "party_1", "party_2"]
    assert "malformed evaluation" in history[0]["not_evaluated"]["party_2"]
    assert history[0]["federated"]["num_examples"] == len(fed["party_3"].test)
    assert history[0]["participants"] == ["party_0", "party_1", "party_2", "party_3"]


class _Client:
    """A Flower-style client: ``evaluate`` reports the first parameter's sum as its loss."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def fit(self, parameters, config):
        self.calls.append("fit")
        return [p + 1 for p in parameters], 6, {}

    def evaluate(self, parameters, config):
        self.calls.append("evaluate")
        return float(parameters[0].sum()), 3, {"accuracy": 0.5}


def test_a_flower_style_client_evaluates_before_it_fits():
    client = _Client()
    weights = {"w": np.ones(2, np.float32)}
    reply = ClientParty(client, "c").handle(TrainTask(2, weights, evaluate="test"))
    assert client.calls == ["evaluate", "fit"]
    assert isinstance(reply, Evaluated)
    assert reply.evaluation == Evaluation(3, {"loss": 2.0, "accuracy": 0.5})
    np.testing.assert_array_equal(reply.reply.weights["w"], np.ones(2, np.float32))  # the delta
