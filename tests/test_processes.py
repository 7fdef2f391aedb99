"""The processes backend: parties pinned to forked worker processes, same results as in-process."""

import os
import threading

import numpy as np
import pytest
import torch

from fedfuse import simulate
from fedfuse._settings import SettingsError
from fedfuse.fusion import Update
from fedfuse.party import EvaluateTask, Evaluation, TaskError, TrainTask
from fedfuse.recipes import FederationSpec
from fedfuse.runtime import Backend, LocalPool, MockPool, ProcessPool, available_cores, make_pool
from fedfuse.service._spec import SpecError, check_spec

QUIET = {"centralized": False}


@pytest.fixture
def one_thread():
    """Bit-identity holds against an in-process run with the workers' thread count."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def same_weights(a, b) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_processes_backend_gives_the_in_process_weights_bit_for_bit(one_thread):
    settings = {"rounds": 3, "num_parties": 5, "fraction": 0.8, **QUIET}
    local = simulate(**settings)
    spread = simulate(**settings, backend="processes", workers=2)
    assert same_weights(local.weights, spread.weights)
    for a, b in zip(local.history, spread.history, strict=True):
        assert a["sampled"] == b["sampled"] and a["participants"] == b["participants"]
        assert a["train"] == b["train"] and a["central"] == b["central"]
        assert a["federated"] == b["federated"]  # federated evaluation runs in the workers too


def test_buffered_aggregation_on_processes_equals_in_process(one_thread):
    settings = {
        "rounds": 3,
        "num_parties": 6,
        "aggregation": {"mode": "buffered", "buffer_size": 2},
        "count": 4,
        "federated_eval": False,
        **QUIET,
    }
    local = simulate(**settings)
    spread = simulate(**settings, backend="processes", workers=3)
    assert same_weights(local.weights, spread.weights)
    assert [r["participants"] for r in local.history] == [r["participants"] for r in spread.history]
    assert [r["staleness"] for r in local.history] == [r["staleness"] for r in spread.history]


def echo(party_id, task):
    if isinstance(task, EvaluateTask):
        return Evaluation(1, {"loss": float(os.getpid())})
    return Update({"w": task.weights["w"] + 1}, 1, {"pid": float(os.getpid())})


def test_parties_are_pinned_round_robin_to_distinct_worker_processes():
    ids = [f"p{i}" for i in range(5)]
    with ProcessPool(MockPool(ids, echo)._parties, workers=2) as pool:
        assert pool.parallelism == 2
        assert pool.shard_of == {"p0": 0, "p1": 1, "p2": 0, "p3": 1, "p4": 0}
        task = TrainTask(1, {"w": np.zeros(2, np.float32)}, None)
        replies = list(pool.dispatch(dict.fromkeys(reversed(ids), task)))
        assert [pid for pid, _ in replies] == list(reversed(ids))  # the order of the tasks
        pids = {pid: reply.metrics["pid"] for pid, reply in replies}
        assert pids["p0"] == pids["p2"] == pids["p4"] != pids["p1"] == pids["p3"]
        assert os.getpid() not in pids.values()
        assert all(np.array_equal(r.weights["w"], np.ones(2)) for _, r in replies)
        assert pool.train_seconds > 0
        again = dict(pool.dispatch({"p2": task, "p3": task}))
        assert again["p2"].metrics["pid"] == pids["p2"]  # the same worker, round after round
    assert all(w is None for w in pool._workers)
    with pytest.raises(RuntimeError, match="closed"):
        next(pool.dispatch({"p0": task}))


def test_workers_default_to_the_available_cores_and_not_more_than_parties():
    with ProcessPool(MockPool(["a"], echo)._parties) as pool:
        assert pool.parallelism == 1
    many = [str(i) for i in range(64)]
    with ProcessPool(MockPool(many, echo)._parties) as pool:
        assert pool.parallelism == min(64, available_cores())


def failing(party_id, task):
    if party_id == "bad":
        raise RuntimeError("broken local data")
    return echo(party_id, task)


def test_a_party_that_raises_fails_alone_and_an_unknown_party_is_an_error():
    with ProcessPool(MockPool(["ok", "bad", "ok2"], failing)._parties, workers=2) as pool:
        task = TrainTask(1, {"w": np.zeros(1, np.float32)}, None)
        replies = dict(pool.dispatch({"ok": task, "bad": task, "ghost": task, "ok2": task}))
    assert isinstance(replies["bad"], TaskError) and "broken local data" in replies["bad"].message
    assert isinstance(replies["ghost"], TaskError) and "unknown party" in replies["ghost"].message
    assert isinstance(replies["ok"], Update) and isinstance(replies["ok2"], Update)


def dies_in_round_two(party_id, task):
    if party_id == "fragile" and task.round == 2:
        os._exit(3)  # the whole worker process goes, not just this party
    return echo(party_id, task)


def test_a_dead_worker_costs_its_tasks_that_round_and_is_replaced_the_next():
    ids = ["fragile", "other", "sibling"]  # fragile and sibling share worker 0
    with ProcessPool(MockPool(ids, dies_in_round_two)._parties, workers=2) as pool:
        weights = {"w": np.zeros(1, np.float32)}
        first = dict(pool.dispatch(dict.fromkeys(ids, TrainTask(1, weights, None))))
        second = dict(pool.dispatch(dict.fromkeys(ids, TrainTask(2, weights, None))))
        third = dict(pool.dispatch(dict.fromkeys(ids, TrainTask(3, weights, None))))
    assert all(isinstance(r, Update) for r in first.values())
    for pid in ("fragile", "sibling"):
        assert isinstance(second[pid], TaskError)
        assert "exit code 3" in second[pid].message
    assert isinstance(second["other"], Update)
    assert all(isinstance(r, Update) for r in third.values())
    assert third["fragile"].metrics["pid"] != first["fragile"].metrics["pid"]


def slow(party_id, task):
    if party_id == "slow" and task.round == 1:
        # fork copies the event unset: the worker waits for a marker file instead
        path = task.weights["path"].tobytes().decode()
        while not os.path.exists(path):
            threading.Event().wait(0.01)
    return Update({"w": np.full(1, task.round, np.float32)}, 1, {})


def test_a_deadline_fails_the_late_party_and_its_late_reply_is_dropped(tmp_path):
    marker = tmp_path / "go"
    weights = {"path": np.frombuffer(str(marker).encode(), np.uint8).copy()}
    with ProcessPool(MockPool(["slow", "fast"], slow)._parties, workers=2) as pool:
        first = dict(pool.dispatch(dict.fromkeys(["slow", "fast"], TrainTask(1, weights, None)), 3))
        marker.touch()  # the slow party's round-1 reply comes now, after its deadline
        second = dict(pool.dispatch({"slow": TrainTask(2, weights, None)}))
    assert isinstance(first["slow"], TaskError) and "deadline" in first["slow"].message
    assert isinstance(first["fast"], Update)
    assert second["slow"].weights["w"][0] == 2  # not the stale round-1 reply


def test_secure_aggregation_runs_with_parties_in_workers(one_thread):
    settings = {"rounds": 2, "num_parties": 4, "secagg": True, "dropout_rate": 0.0, **QUIET}
    local = simulate(**settings)
    spread = simulate(**settings, backend="processes", workers=2)
    assert [r["participants"] for r in spread.history] == [r["participants"] for r in local.history]
    assert spread.history[-1]["secure"]["dropped"] == {}
    assert same_weights(local.weights, spread.weights)  # the masks cancel exactly in Z_2^32


def test_evaluation_runs_in_the_workers():
    with ProcessPool(MockPool(["a", "b"], echo)._parties, workers=2) as pool:
        replies = dict(pool.dispatch(dict.fromkeys(["a", "b"], EvaluateTask(1, {}, "test"))))
    assert {r.metrics["loss"] for r in replies.values()} != {float(os.getpid())}


def test_backend_settings_are_checked_and_named():
    assert FederationSpec.from_flat({"backend": "processes", "workers": 2}).backend == Backend(
        "processes", workers=2
    )
    for flat, message in [
        ({"backend": "gpu"}, "backend.name must be one of"),
        ({"workers": 2}, "workers are for backend 'processes' or 'ray'"),
        ({"backend": "processes", "ray_address": "auto"}, "only the ray backend"),
        ({"cohort_size": 8}, "only the cohort backend"),
        ({"backend": "processes", "workers": -1}, "backend.workers"),
        ({"backend": "processes", "use": "personalize"}, "use 'personalize' trains in this"),
    ]:
        with pytest.raises(SettingsError, match=message):
            FederationSpec.from_flat(flat).validate()


def test_the_service_refuses_a_simulation_backend():
    spec = FederationSpec.from_flat({"backend": "processes"})
    with pytest.raises(SpecError, match="backend 'processes' is for simulations"):
        check_spec(spec)


def test_make_pool_builds_the_named_pool(tmp_path):
    from fedfuse.data import federate
    from fedfuse.models import TorchAdapter, build_model
    from helpers import blobs

    fed = federate(blobs(60), blobs(20, seed=1), 3, "iid", seed=0)
    adapter = TorchAdapter(build_model("logreg", (5,), 3))
    with make_pool(Backend(), fed, adapter) as pool:
        assert type(pool) is LocalPool and pool.party_ids() == fed.party_ids
    with make_pool(Backend("processes", workers=2), fed, adapter) as pool:
        assert isinstance(pool, ProcessPool) and pool.parallelism == 2


def test_the_service_answers_a_simulation_backend_with_400(tmp_path):
    from fastapi.testclient import TestClient

    from fedfuse.service import ServiceSettings, create_app

    client = TestClient(create_app(ServiceSettings(data_dir=tmp_path)))
    form = {"fusion_algorithm": "fedavg", "num_parties": 1, "model": "mlp", "input_shape": "4",
            "num_classes": 2, "backend": "processes"}  # fmt: skip
    answer = client.post("/start-aggregator", data=form)
    assert answer.status_code == 400 and "backend 'processes' is for simulations" in answer.text
    answer = client.post("/v1/federations", json={"backend": {"name": "ray"}})
    assert answer.status_code == 400 and "backend 'ray'" in answer.text
