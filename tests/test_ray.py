"""The Ray backend: parties on Ray actors over a two-node cluster on 127.0.0.1 give the weights of
the in-process run bit for bit; a local Ray of the pool's own; failed parties and a killed actor.

One cluster (a head and a worker node, one CPU each, see ``ray_helpers``) serves the module; this
process connects to it as the driver. Tests that need the driver disconnected (a pool that
joins or starts a Ray itself) disconnect first; ``connected`` reconnects for the others.
"""

from __future__ import annotations

import sys
import time

import numpy as np
import pytest
import ray

import ray_helpers
from fedfuse import simulate
from fedfuse.party import EvaluateTask, Evaluation, TaskError
from ray_helpers import (
    START_SECONDS,
    LocalCluster,
    ScriptedParty,
    local_cluster,
    reset_auth,
    wait_for_nodes,
)

# the actors cannot import the tests: Ray sends them ray_helpers' classes by value
ray.cloudpickle.register_pickle_by_value(ray_helpers)

QUIET = {"centralized": False, "federated_eval": False}
RUN = {"rounds": 2, "num_parties": 4, "dataset": "digits", "seed": 3, **QUIET}


def _connect(cluster: LocalCluster) -> None:
    from fedfuse.runtime._ray import loopback

    deadline = time.monotonic() + START_SECONDS
    while True:
        try:
            with loopback():
                ray.init(address=cluster.address, log_to_driver=False)
            return
        except ConnectionError:  # the head's GCS is not up yet
            cluster.check_running()
            if time.monotonic() > deadline:
                raise
            time.sleep(1.0)


@pytest.fixture(scope="module")
def cluster():
    with local_cluster() as started, pytest.MonkeyPatch.context() as env:
        for name, value in started.auth_env().items():
            env.setenv(name, value)
        reset_auth()  # Ray read its token settings when imported: read the cluster's
        try:
            _connect(started)
            wait_for_nodes(started, 2)
        except Exception as exc:
            pytest.fail(f"the test Ray cluster did not start: {exc}\n{started.log_tail()}")
        try:
            yield started
        finally:
            ray.shutdown()
            env.undo()
            reset_auth()


@pytest.fixture
def connected(cluster: LocalCluster) -> LocalCluster:
    if not ray.is_initialized():
        _connect(cluster)
    return cluster


def _same_weights(a, b) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def _tasks(round_num: int, parties) -> dict[str, EvaluateTask]:
    weights = {"w": np.arange(4, dtype=np.float32)}
    return {pid: EvaluateTask(round_num, weights) for pid in parties}


@pytest.mark.slow
def test_a_ray_run_on_two_nodes_equals_the_in_process_run(cluster):
    ray.shutdown()  # the pool joins the cluster itself, and leaves it when done
    local = simulate(**RUN)
    on_ray = simulate(**RUN, backend="ray", ray_address=cluster.address, workers=2)
    assert not ray.is_initialized()
    assert _same_weights(local.weights, on_ray.weights)
    accuracy = [[r["central"]["accuracy"] for r in run.history] for run in (local, on_ray)]
    assert accuracy[0] == accuracy[1]
    assert [r["participants"] for r in on_ray.history] == [r["participants"] for r in local.history]


@pytest.mark.slow
def test_a_buffered_ray_run_equals_the_in_process_run(connected):
    buffered = {**RUN, "mode": "buffered", "buffer_size": 2, "rounds": 3}
    local = simulate(**buffered)
    on_ray = simulate(**buffered, backend="ray", ray_address=connected.address, workers=2)
    assert ray.is_initialized()  # a Ray this process was already connected to stays
    assert _same_weights(local.weights, on_ray.weights)
    assert [r["central"] for r in on_ray.history] == [r["central"] for r in local.history]


@pytest.mark.slow
def test_actors_spread_over_both_nodes_all_on_127_0_0_1(connected, monkeypatch):
    from fedfuse.runtime._ray import RayPool

    nodes = {n["NodeID"]: n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]}
    assert set(nodes.values()) == {"127.0.0.1"}
    put = ray.put
    puts = []
    monkeypatch.setattr(ray, "put", lambda value: puts.append(value) or put(value))
    with RayPool({f"p{i}": ScriptedParty(i) for i in range(5)}, address=connected.address) as pool:
        assert pool.parallelism == 2  # workers=0: one actor per CPU of the cluster
        assert set(pool.nodes().values()) == set(nodes)
        tasks = _tasks(1, pool.party_ids())
        replies = dict(pool.dispatch(tasks))
    assert replies == {f"p{i}": Evaluation(i, {"sum": 6.0}) for i in range(5)}
    assert len(puts) == 1 and puts[0] is tasks["p0"].weights  # the model, once for all
    with pytest.raises(ValueError, match="workers=3, but the Ray cluster has 2 CPUs"):
        RayPool({"a": ScriptedParty(0)}, workers=3)


@pytest.mark.slow
def test_a_failing_party_and_a_killed_actor_cost_only_their_own_tasks(connected):
    from fedfuse.runtime._ray import RayPool

    # p0, p2 on actor 0; p1, p3 on actor 1. Round 1: p1 stalls and its actor is killed.
    # Round 2: a fresh actor 1 answers, p2 raises. Round 3: everyone answers.
    parties = {
        "p0": ScriptedParty(0),
        "p1": ScriptedParty(1, stall=1),
        "p2": ScriptedParty(2, fail=2),
        "p3": ScriptedParty(3),
    }
    with RayPool(parties, workers=2) as pool:
        first = pool.dispatch(_tasks(1, parties))
        assert next(first) == ("p0", Evaluation(0, {"sum": 6.0}))
        killed = pool.actors[1]
        ray.kill(killed)
        rest = dict(first)
        assert rest["p2"] == Evaluation(2, {"sum": 6.0})
        for pid in ("p1", "p3"):
            assert isinstance(rest[pid], TaskError)
            assert rest[pid].message.startswith("Ray actor 1 died before it answered")
        second = dict(pool.dispatch(_tasks(2, parties)))
        assert pool.actors[1] is not killed
        assert second["p2"] == TaskError("RuntimeError: party 2 breaks")
        assert {pid: r for pid, r in second.items() if pid != "p2"} == {
            pid: Evaluation(int(pid[1]), {"sum": 6.0}) for pid in ("p0", "p1", "p3")
        }
        third = dict(pool.dispatch(_tasks(3, parties)))
        assert third == {pid: Evaluation(int(pid[1]), {"sum": 6.0}) for pid in parties}


@pytest.mark.slow
def test_a_pool_without_an_address_starts_and_stops_its_own_ray_on_127_0_0_1(cluster):
    from fedfuse.runtime._ray import RayPool

    ray.shutdown()
    with RayPool({"a": ScriptedParty(0), "b": ScriptedParty(1)}, workers=1) as pool:
        [node] = [n for n in ray.nodes() if n["Alive"]]
        assert node["NodeManagerAddress"] == "127.0.0.1"
        assert ray.cluster_resources()["CPU"] == 1  # its own Ray: one CPU per worker
        assert set(pool.nodes().values()) == {node["NodeID"]}
        assert dict(pool.dispatch(_tasks(1, ["a", "b"]))) == {
            "a": Evaluation(0, {"sum": 6.0}),
            "b": Evaluation(1, {"sum": 6.0}),
        }
    assert not ray.is_initialized()


def test_without_ray_the_backend_says_how_to_install_it(monkeypatch):
    from fedfuse.runtime._ray import RayPool

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ImportError, match=r"pip install 'fedfuse\[ray\]'"):
        RayPool({"a": ScriptedParty(0)})


def test_bad_settings_are_refused_before_ray_starts():
    from fedfuse.runtime._ray import RayPool

    with pytest.raises(ValueError, match="need workers >= 0 and threads >= 1, got -1, 1"):
        RayPool({"a": ScriptedParty(0)}, workers=-1)
    with pytest.raises(ValueError, match="got 0, 0"):
        RayPool({"a": ScriptedParty(0)}, threads=0)
