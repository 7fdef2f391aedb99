"""Nodes as network services: HTTP exchanges on 127.0.0.1, what crosses the wire, failures."""

from __future__ import annotations

import copy
import json
import pickle
import threading
import urllib.request

import numpy as np
import pytest
import torch
from torch import nn

from fedfuse.consensus import (
    ECL,
    ConsensusConfig,
    ConsensusNode,
    Gossip,
    LocalGraph,
    PeerNode,
    consensus_distance,
    node_datasets,
    urllib_transport,
)
from fedfuse.weights import from_bytes, to_bytes

# Four nodes on a ring, 5 classes each: every class is split between two nodes, so all nodes
# hold the same number of examples and train the same number of steps.
CONFIG = ConsensusConfig(
    num_nodes=4,
    partition_params={"classes_per_party": 5},
    model="logreg",
    epochs=4,
    batch_size=16,
    learning_rate=0.5,
    local_steps=2,
    centralized=False,
)


def _nodes(config: ConsensusConfig, algorithm=None, seed_model: int = 0):
    datasets, test, num_classes = node_datasets(config)
    torch.manual_seed(seed_model)
    template = nn.Sequential(nn.Flatten(), nn.Linear(64, num_classes))
    graph = config.make_topology()
    nodes = [
        ConsensusNode(
            i,
            graph.neighbours(i),
            copy.deepcopy(template),
            datasets[i],
            algorithm or ECL(exchange="admm"),
            learning_rate=config.learning_rate,
            batch_size=config.batch_size,
            local_steps=config.local_steps,
        )
        for i in range(graph.num_nodes)
    ]
    return nodes, template, test, datasets


def _serve(nodes, transport=urllib_transport):
    """One started PeerNode per node, each told its neighbours' real addresses."""
    peers = [
        PeerNode(n, {j: "http://unset" for j in n.configured_peers}, transport=transport)
        for n in nodes
    ]
    addresses = {p.node.node_id: p.address for p in peers}
    for p in peers:
        p.peers = {j: addresses[j] for j in p.peers}
        p.start()
    return peers


def _train_all(peers, epochs, test=None, linger=None):
    def run(peer):
        peer.train(epochs, test=test)
        if linger is not None:
            peer.finish(linger)

    threads = [threading.Thread(target=run, args=(p,)) for p in peers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)


@pytest.mark.parametrize("algorithm", [ECL(exchange="admm"), Gossip()], ids=["ecl", "gossip"])
def test_only_parameter_shaped_safetensors_cross_the_wire(algorithm):
    """Record every request and reply between four nodes: each body is safetensors (no pickle)
    holding exactly the model's parameter names and shapes; no array is shaped like data.
    ECL's messages are one-way (204, empty reply); gossip's go both ways."""
    nodes, template, test, datasets = _nodes(CONFIG, algorithm)
    shapes = {n: tuple(p.shape) for n, p in template.named_parameters()}
    wire = []
    lock = threading.Lock()

    def recording(method, url, body, headers, timeout):
        reply = urllib_transport(method, url, body, headers, timeout)
        with lock:
            wire.append((method, url, body, dict(headers), reply))
        return reply

    peers = _serve(nodes, recording)
    try:
        _train_all(peers, CONFIG.epochs, test, linger=10)
    finally:
        for p in peers:
            p.stop()
    # (A few may meet a neighbour that has not started yet: 503, retried at the next round.)
    exchanges = [w for w in wire if w[1].endswith("/exchange") and w[4].status in (200, 204)]
    assert len(exchanges) >= 100
    assert {w[4].status for w in exchanges} == ({204} if isinstance(algorithm, ECL) else {200})
    data_rows = {len(d) for d in datasets} | {len(test)}
    for _, _, body, headers, reply in exchanges:
        for blob in (body, reply.body) if reply.status == 200 else (body,):
            assert not blob.startswith(b"\x80")  # not a pickle stream
            arrays = from_bytes(blob)
            assert {k: v.shape for k, v in arrays.items()} == shapes
            assert all(v.dtype == np.float32 for v in arrays.values())
            assert not any(v.shape[0] in data_rows for v in arrays.values())
        assert set(headers) <= {"X-Fedfuse-Node", "X-Fedfuse-Degree", "Content-Type"}
    assert {w[1].rsplit("/", 1)[1] for w in wire} <= {"status", "exchange", "bye"}
    # And the exchanges did their job: the three models agree closely and learned.
    models = [n.weights() for n in nodes]
    assert consensus_distance(models) < 0.5
    assert min(p.history[-1]["accuracy"] for p in peers) > 0.6


def test_server_refuses_anything_but_a_neighbours_variables():
    nodes, template, _, _ = _nodes(CONFIG)
    peer = PeerNode(nodes[0], {1: "http://127.0.0.1:9", 3: "http://127.0.0.1:9"}).start()
    good = to_bytes({n: p.detach().numpy() for n, p in template.named_parameters()})

    def post(body, sender="1", path="/exchange"):
        headers = {"X-Fedfuse-Node": sender, "X-Fedfuse-Degree": "2"}
        return urllib_transport("POST", peer.address + path, body, headers, 5.0)

    try:
        assert post(good).status == 503  # not training yet
        peer.ready.set()
        before = nodes[0].weights()
        assert post(pickle.dumps({"x": 1})).status == 400
        assert post(b"garbage").status == 400
        wrong = to_bytes({"0.weight": np.zeros((3, 3), np.float32)})
        assert post(wrong).status == 400
        assert post(good, sender="7").status == 403
        assert post(b"x" * (peer._max_body + 1)).status == 413
        assert urllib_transport("GET", peer.address + "/model", None, {}, 5.0).status == 403
        for name, arr in nodes[0].weights().items():
            np.testing.assert_array_equal(arr, before[name])  # nothing bad was applied
        reply = post(good)
        assert reply.status == 204 and reply.body == b""  # ECL: one-way messages
        assert from_bytes(good).keys() == before.keys()
        assert json.loads(urllib.request.urlopen(peer.address + "/status").read())["node"] == 0
    finally:
        peer.stop()


def test_late_joiner_starts_from_a_neighbours_model():
    nodes, template, _, _ = _nodes(CONFIG, Gossip())
    peers = _serve(nodes)
    late = peers[3]
    try:
        _train_all(peers[:3], 1)
        served = {n: a.copy() for n, a in nodes[0].weights().items()}
        assert late.join() == 0  # its neighbours are 0 and 2; it asks the lowest id first
        for name, arr in nodes[3].weights().items():
            np.testing.assert_array_equal(arr, served[name])
            assert not np.array_equal(arr, template.state_dict()[name].numpy())
        late.train(1)
        assert nodes[3].exchanges > 0 and nodes[3].dropped == set()
    finally:
        for p in peers:
            p.stop()


def test_killed_node_process_is_dropped_and_the_others_finish(tmp_path):
    """Three `fedfuse node` processes, all linked; node 1 is killed mid-training (SIGKILL)."""
    # IID data here, so that the two survivors can still learn all classes without node 1.
    config = CONFIG.replace(num_nodes=3, partition="iid", epochs=6, max_failures=2)
    # A dead node is found by "connection refused", whatever the timeout; a long one keeps a
    # live but slow neighbour (a loaded machine) from being dropped too.
    graph = LocalGraph(config, tmp_path, step_delay=0.004, linger=30, timeout=60)
    with graph:
        graph.wait_until(1, steps=4, timeout=120)
        graph.kill(1)
        codes = graph.wait(timeout=120)
        doc = graph.collect()
    assert codes[0] == codes[2] == 0 and codes[1] != 0
    final = doc["final"]
    assert final["finished"] == [0, 2] and final["missing"] == [1]
    assert final["dropped_edges"] == {"0": [1], "2": [1]}
    assert final["mean_accuracy"] > 0.7
    reports = {i: json.loads((tmp_path / f"node_{i}.json").read_text()) for i in (0, 2)}
    for r in reports.values():  # every survivor trained all its epochs
        assert r["steps"] == config.epochs * (r["num_examples"] // config.batch_size)
    assert any(e["event"] == "exchange_failed" for e in reports[0]["events"])
    assert (tmp_path / "accuracy.png").exists()
