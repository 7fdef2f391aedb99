"""Compressed exchanges: C-ECL and CHOCO-style gossip, driven learner by learner.

The driver below is the whole protocol a transport follows: ``message`` (pure), the receiver's
``receive``, then the sender's ``delivered``; a two-way exchange does the same for the reply,
which the receiver computes before it applies the message.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from fedfuse.consensus import ECL, Gossip, make_algorithm, ring
from fedfuse.consensus._compressed import CompressedECLLearner, CompressedGossipLearner
from fedfuse.weights import get_codec, num_bytes
from test_consensus import _Linear


def _least_squares(num_nodes: int, dim: int):
    """Per-node regression data (shifted inputs, its own true weights) and the pooled optimum."""
    rng = np.random.default_rng(0)
    data = []
    for _ in range(num_nodes):
        x = rng.normal(size=(2 * dim, dim)) + 0.5 * rng.normal(size=dim)
        y = x @ rng.normal(size=dim) + 0.1 * rng.normal(size=2 * dim)
        data.append((torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)))
    x_all = np.concatenate([x.numpy() for x, _ in data]).astype(np.float64)
    y_all = np.concatenate([y.numpy() for _, y in data]).astype(np.float64)
    return data, np.linalg.lstsq(x_all, y_all, rcond=None)[0]


class _Ring:
    """Learners on a ring, each with its own model; ``make(i, named, peers)`` builds one."""

    def __init__(self, make, num_nodes=6, dim=20, init=None, seed=1):
        self.modules = [_Linear(dim) for _ in range(num_nodes)]
        if init is not None:
            with torch.no_grad():
                for module, w in zip(self.modules, init, strict=True):
                    module.w.copy_(torch.as_tensor(w, dtype=torch.float32))
        graph = ring(num_nodes)
        self.learners = [
            make(i, list(m.named_parameters()), graph.neighbours(i))
            for i, m in enumerate(self.modules)
        ]
        self.rng = np.random.default_rng(seed)
        self.bytes_sent = 0
        self.messages = 0

    def weights(self) -> np.ndarray:
        return np.stack([m.w.detach().numpy().copy() for m in self.modules])

    def train(self, data, lr, local_steps=1):
        for module, learner, (x, y) in zip(self.modules, self.learners, data, strict=True):
            for _ in range(local_steps):
                loss = nn.functional.mse_loss(module(x), y)
                learner.step(torch.autograd.grad(loss, learner.params), lr)

    def send(self, i: int, j: int) -> None:
        sender, receiver = self.learners[i], self.learners[j]
        message = sender.message(j)
        self.bytes_sent += num_bytes(message)
        self.messages += 1
        reply = receiver.message(i) if sender.replies else None
        receiver.receive(i, message, len(sender.peers))
        sender.delivered(j, message)
        if reply is not None:
            sender.receive(j, reply, len(receiver.peers))
            receiver.delivered(i, reply)

    def exchange(self) -> None:
        for learner in self.learners:
            for j in learner.partners(self.rng, 1.0):
                self.send(learner.node_id, j)

    def run(self, data, rounds, lr, local_steps=1, exchange=True):
        for _ in range(rounds):
            self.train(data, lr, local_steps)
            if exchange:
                self.exchange()


def _algorithm(config, codec=None, local_steps=1):
    """``config``'s learner factory; ``codec`` forces the compressed learner with that codec."""

    def make(i, named, peers):
        if codec is None:
            return config.learner(i, named, peers, local_steps)
        if isinstance(config, ECL):
            return CompressedECLLearner(config, i, named, peers, local_steps, codec)
        return CompressedGossipLearner(config, i, named, peers, codec)

    return make


# --- C-ECL -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("eta", "local_steps"), [(1.0, 1), (None, 2)], ids=["eta1", "isvr-K2"])
def test_cecl_with_an_exact_codec_is_admm_ecl(eta, local_steps):
    """theta = 1/2 and no compression: the same trajectory as ECL's ADMM exchange (from a shared,
    non-zero initial model, so the mirrors' starting point is exercised too)."""
    data, _ = _least_squares(6, 8)
    init = [np.linspace(-1, 1, 8)] * 6
    config = ECL(exchange="admm", eta=eta)
    plain = _Ring(_algorithm(config, local_steps=local_steps), dim=8, init=init)
    exact = _Ring(
        _algorithm(config, codec=get_codec("none"), local_steps=local_steps), dim=8, init=init
    )
    assert exact.learners[0].theta == 0.5
    for _ in range(60):
        plain.run(data, 1, lr=0.05, local_steps=local_steps)
        exact.run(data, 1, lr=0.05, local_steps=local_steps)
        np.testing.assert_allclose(exact.weights(), plain.weights(), rtol=1e-4, atol=1e-5)
    assert np.abs(plain.weights() - init[0]).max() > 0.1  # it did move


@pytest.mark.parametrize(
    ("compression", "dense_over_compressed"), [("int8", 80 / 24), ("topk", 80 / 16)], ids=str
)
def test_cecl_reaches_the_pooled_optimum_with_compressed_messages(
    compression, dense_over_compressed
):
    """Six heterogeneous nodes on a ring, 20 weights: int8 and top-k 10% C-ECL end at the pooled
    least-squares optimum, where training alone stays far off, for a fraction of the bytes."""
    data, optimum = _least_squares(6, 20)
    alone = _Ring(_algorithm(ECL(eta=1.0)))
    alone.run(data, 300, lr=0.1, exchange=False)
    assert np.abs(alone.weights() - optimum).max() > 1.0

    plain = _Ring(_algorithm(ECL(eta=1.0)))
    plain.run(data, 300, lr=0.1)
    config = ECL(eta=1.0, compression=compression, topk_fraction=0.1)
    compressed = _Ring(_algorithm(config))
    compressed.run(data, 300, lr=0.1)
    assert np.abs(compressed.weights() - optimum).max() < 1e-2
    assert compressed.messages == plain.messages
    assert plain.bytes_sent / compressed.bytes_sent == pytest.approx(dense_over_compressed)


def test_cecl_isvr_converges_with_top_k():
    data, optimum = _least_squares(6, 20)
    nodes = _Ring(_algorithm(ECL(compression="topk", topk_fraction=0.1), local_steps=4))
    nodes.run(data, 300, lr=0.1, local_steps=4)
    assert np.abs(nodes.weights() - optimum).max() < 1e-3


@pytest.mark.parametrize("dual_init", ["agreement", "zero"])
def test_cecl_mirrors_stay_bit_identical_to_the_receivers_duals(dual_init):
    """Also from zero duals (NTT's code starts there): the sender's copy starts there too."""
    data, _ = _least_squares(6, 20)
    config = ECL(eta=1.0, compression="topk", topk_fraction=0.1, dual_init=dual_init)
    nodes = _Ring(_algorithm(config))
    nodes.run(data, 40, lr=0.1)
    for learner in nodes.learners:
        for j in learner.peers:
            for mirror, dual in zip(
                learner.mirror[j], nodes.learners[j].z[learner.node_id], strict=True
            ):
                assert torch.equal(mirror, dual)


def test_a_lost_message_moves_neither_end():
    """``message`` is pure and the mirror moves on ``delivered`` only: a message that never
    arrived (no ``receive``, no ``delivered``) leaves the two ends in step."""
    data, _ = _least_squares(2, 4)
    nodes = _Ring(_algorithm(ECL(eta=1.0, compression="int8")), num_nodes=2, dim=4)
    nodes.train(data, lr=0.1)
    sender, receiver = nodes.learners
    nodes_start_z = [z.clone() for z in receiver.z[0]]
    first = sender.message(1)
    again = sender.message(1)
    assert first.keys() == again.keys()
    assert all(np.array_equal(first[k], again[k]) for k in first)
    assert all(torch.equal(m, z) for m, z in zip(sender.mirror[1], receiver.z[0], strict=True))
    nodes.send(0, 1)
    assert not all(torch.equal(m, z) for m, z in zip(sender.mirror[1], nodes_start_z, strict=True))
    assert all(torch.equal(m, z) for m, z in zip(sender.mirror[1], receiver.z[0], strict=True))
    late = sender.message(1)
    sender.remove_peer(1)
    sender.delivered(1, late)  # news of an edge already dropped changes nothing
    assert 1 not in sender.mirror and sender.peers == []


# --- compressed gossip -------------------------------------------------------------------------


def _spread(num_nodes=6, dim=20):
    return np.random.default_rng(5).normal(size=(num_nodes, dim))


@pytest.mark.parametrize(
    ("compression", "fraction"), [("int8", 0.01), ("topk", 0.1), ("fp16", 0.01)], ids=str
)
def test_compressed_gossip_reaches_the_mean_and_keeps_it(compression, fraction):
    """Exchanges only (no training): every node ends at the mean of the initial models, which no
    exchange moves, with public copies identical at both ends of every edge."""
    init = _spread()
    config = Gossip(compression=compression, topk_fraction=fraction)
    nodes = _Ring(_algorithm(config), init=init)
    for _ in range(300):
        nodes.exchange()
    models = nodes.weights()
    np.testing.assert_allclose(models.mean(axis=0), init.mean(axis=0), atol=1e-5)
    assert np.abs(models - init.mean(axis=0)).max() < 1e-4
    for learner in nodes.learners:
        for j in learner.peers:
            other = nodes.learners[j]
            for own, seen in zip(
                learner.public_own[j], other.public_peer[learner.node_id], strict=True
            ):
                assert torch.equal(own, seen)


def test_compressed_gossip_with_an_exact_codec_and_gamma_one_is_gossip():
    data, _ = _least_squares(6, 8)
    init = _spread(dim=8)
    plain = _Ring(_algorithm(Gossip()), dim=8, init=init)
    exact = _Ring(
        _algorithm(Gossip(compression_step=1.0), codec=get_codec("none")), dim=8, init=init
    )
    for _ in range(50):
        plain.run(data, 1, lr=0.05)
        exact.run(data, 1, lr=0.05)
        np.testing.assert_allclose(exact.weights(), plain.weights(), rtol=1e-4, atol=1e-5)


def test_compressed_gossip_trains_like_gossip():
    """With gradient steps too: int8 gossip ends where gossip does (constant-step gossip is
    biased on heterogeneous data, so the reference is gossip, not the optimum)."""
    data, optimum = _least_squares(6, 20)
    plain = _Ring(_algorithm(Gossip()))
    plain.run(data, 300, lr=0.1)
    compressed = _Ring(_algorithm(Gossip(compression="int8")))
    compressed.run(data, 300, lr=0.1)
    assert np.abs(compressed.weights() - plain.weights()).max() < 0.05
    alone = _Ring(_algorithm(Gossip()))
    alone.run(data, 300, lr=0.1, exchange=False)
    assert (
        np.abs(compressed.weights() - optimum).max() < 0.6 * np.abs(alone.weights() - optimum).max()
    )


def test_gossip_mixes_once_both_halves_arrived_in_either_order():
    """A reply that is lost leaves both ends waiting; the next exchange completes both."""
    nodes = _Ring(_algorithm(Gossip(compression="int8")), num_nodes=2, dim=4, init=_spread(2, 4))
    a, b = nodes.learners
    before = nodes.weights()
    message = a.message(1)
    b.receive(0, message, 1)
    a.delivered(1, message)  # b's reply is lost on its way to a
    np.testing.assert_array_equal(nodes.weights(), before)  # nobody mixed on half an exchange
    nodes.send(1, 0)  # b initiates next: b's message and a's reply
    after = nodes.weights()
    assert not np.array_equal(after, before)
    np.testing.assert_allclose(after.mean(axis=0), before.mean(axis=0), atol=1e-6)
    for own, seen in [(a.public_own[1], b.public_peer[0]), (b.public_own[0], a.public_peer[1])]:
        assert all(torch.equal(x, y) for x, y in zip(own, seen, strict=True))


# --- hostile messages ----------------------------------------------------------------------------


def _two_node_learners(config):
    """Two neighbours with one shared initial ``Linear(50, 4)``, one step taken by each."""
    rng = np.random.default_rng(3)
    start = {"weight": rng.normal(size=(4, 50)), "bias": rng.normal(size=4)}
    modules = [nn.Linear(50, 4), nn.Linear(50, 4)]
    for m in modules:
        m.load_state_dict({k: torch.tensor(v, dtype=torch.float32) for k, v in start.items()})
    learners = [
        config.learner(i, list(m.named_parameters()), [1 - i], 2) for i, m in enumerate(modules)
    ]
    x = torch.tensor(rng.normal(size=(8, 50)), dtype=torch.float32)
    for m, learner in zip(modules, learners, strict=True):
        loss = m(x).square().mean()
        learner.step(torch.autograd.grad(loss, learner.params), 0.1)
    return learners


def _state(learner):
    tensors = [p.detach().clone() for p in learner.params]
    for table in ("z", "mirror", "public_own", "public_peer"):
        for copies in getattr(learner, table, {}).values():
            tensors += [t.clone() for t in copies]
    tensors += [t.clone() for t in getattr(learner, "sum_az", [])]
    return tensors


def _tampered(message, name, value):
    out = dict(message)
    if value is None:
        del out[name]
    else:
        out[name] = value
    return out


def _hostile(compression, message):
    """(description, message, error pattern) for a well-formed ``message`` of ``compression``."""
    cases = [
        ("missing", _tampered(message, sorted(message)[0], None), "missing"),
        ("extra", {**message, "bias/extra": np.zeros(1, np.float32)}, "unexpected"),
    ]
    if compression == "int8":
        q, scale = message["weight/q"], message["weight/scale"]
        cases += [
            ("dtype", _tampered(message, "weight/q", q.astype(np.int16)), "dtype"),
            ("size", _tampered(message, "weight/q", q.ravel()[:-1]), "shape"),
            ("nan scale", _tampered(message, "weight/scale", scale * np.nan), "non-finite"),
            ("inf scale", _tampered(message, "weight/scale", scale + np.inf), "non-finite"),
            ("zero scale", _tampered(message, "weight/scale", scale * 0), "scale <= 0"),
            ("huge scale", _tampered(message, "weight/scale", scale * 0 + 3e38), "non-finite"),
        ]
    elif compression == "topk":
        idx, val = message["weight/idx"], message["weight/val"]
        repeated, unsorted = idx.copy(), idx[::-1].copy()
        repeated[1] = repeated[0]
        out_of_range, negative = idx.copy(), idx.copy()
        out_of_range[-1] = 200
        negative[0] = -1
        cases += [
            ("dtype", _tampered(message, "weight/idx", idx.astype(np.int64)), "dtype"),
            ("size", _tampered(message, "weight/val", val[:-1]), "shape"),
            ("repeated", _tampered(message, "weight/idx", repeated), "strictly increasing"),
            ("unsorted", _tampered(message, "weight/idx", unsorted), "strictly increasing"),
            ("out of range", _tampered(message, "weight/idx", out_of_range), r"in \[0, 200\)"),
            ("negative", _tampered(message, "weight/idx", negative), r"in \[0, 200\)"),
            ("nan", _tampered(message, "weight/val", val * np.nan), "non-finite"),
        ]
    else:
        weight = message["weight"]
        cases += [
            ("dtype", _tampered(message, "weight", weight.astype(np.float32)), "dtype"),
            ("inf", _tampered(message, "weight", weight + np.float16(np.inf)), "non-finite"),
        ]
    return cases


@pytest.mark.parametrize("kind", ["ecl", "gossip"])
@pytest.mark.parametrize("compression", ["int8", "topk", "fp16"])
def test_hostile_compressed_messages_are_refused_and_change_nothing(kind, compression):
    config = (ECL if kind == "ecl" else Gossip)(compression=compression, topk_fraction=0.1)
    sender, receiver = _two_node_learners(config)
    message = sender.message(1)
    for what, bad, pattern in _hostile(compression, message):
        before = _state(receiver)
        with pytest.raises(ValueError, match=pattern):
            receiver.check(bad)
        with pytest.raises(ValueError, match=pattern):
            receiver.receive(0, bad, 1)
        with pytest.raises(ValueError, match=pattern):
            receiver.magnitude(bad)
        after = _state(receiver)
        assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True)), what
    receiver.receive(0, message, 1)  # the honest one is taken
    assert not all(torch.equal(a, b) for a, b in zip(before, _state(receiver), strict=True))


# --- sizes, templates, magnitudes ------------------------------------------------------------


@pytest.mark.parametrize(
    ("compression", "expected"),
    [
        ("int8", 200 + 4 + 4 + 4),  # n + 4 bytes per tensor
        ("topk", 8 * (20 + 1)),  # 8k bytes, k = ceil(0.1 n): 20 of the weight, 1 of the bias
        ("fp16", 2 * 204),
    ],
)
@pytest.mark.parametrize("kind", ["ecl", "gossip"])
def test_bytes_per_message_and_the_template(kind, compression, expected):
    config = (ECL if kind == "ecl" else Gossip)(compression=compression, topk_fraction=0.1)
    sender, _ = _two_node_learners(config)
    dense, _ = _two_node_learners(ECL() if kind == "ecl" else Gossip())
    message = sender.message(1)
    assert num_bytes(dense.message(1)) == 4 * 204
    assert num_bytes(message) == expected
    template = sender.message_template()
    assert num_bytes(template) == expected
    assert {n: (a.shape, a.dtype) for n, a in template.items()} == {
        n: (a.shape, a.dtype) for n, a in message.items()
    }


def test_magnitude_is_the_norm_of_the_decoded_values():
    sender, receiver = _two_node_learners(ECL(compression="topk", topk_fraction=0.1))
    message = sender.message(1)
    values = np.concatenate([message["bias/val"], message["weight/val"]]).astype(np.float64)
    assert receiver.magnitude(message) == pytest.approx(math.sqrt(values @ values))
    plain, _ = _two_node_learners(ECL())
    dense = plain.message(1)
    flat = np.concatenate([a.ravel() for a in dense.values()]).astype(np.float64)
    assert plain.magnitude(dense) == pytest.approx(math.sqrt(flat @ flat))
    quantized, _ = _two_node_learners(ECL(compression="int8"))
    int8 = quantized.message(1)
    decoded = [
        int8[f"{n}/q"].astype(np.float64) * int8[f"{n}/scale"][0] for n in ("bias", "weight")
    ]
    assert quantized.magnitude(int8) == pytest.approx(
        math.sqrt(sum(float(np.square(d).sum()) for d in decoded)), rel=1e-6
    )


# --- configuration -------------------------------------------------------------------------------


def test_compression_settings_are_checked_and_passed_on():
    param = [("p", nn.Parameter(torch.zeros(3)))]
    with pytest.raises(ValueError, match="needs rho = 0"):
        ECL(eta=1.0, rho=0.5, compression="int8").learner(0, param, [1])
    with pytest.raises(ValueError, match="compression must be one of"):
        ECL(eta=1.0, compression="zip").learner(0, param, [1])
    with pytest.raises(ValueError, match="topk_fraction"):
        Gossip(compression="topk", topk_fraction=0.0).learner(0, param, [1])
    with pytest.raises(ValueError, match="compression_step"):
        Gossip(compression="int8", compression_step=1.5).learner(0, param, [1])
    with pytest.raises(ValueError, match="dpsgd sends full models"):
        make_algorithm("dpsgd", compression="int8")
    assert ECL(compression="int8").theta == 0.5
    assert ECL(exchange="pdmm", compression="int8").theta == 1.0
    assert ECL(compression="int8", compression_step=0.3).theta == 0.3
    assert Gossip(compression="int8").gamma == 1.0
    assert Gossip(compression="topk", topk_fraction=0.01).gamma == pytest.approx(0.02)
    assert make_algorithm("ecl-isvr", compression="topk", topk_fraction=0.05) == ECL(
        compression="topk", topk_fraction=0.05
    )
    assert make_algorithm("gossip", compression="int8", compression_step=0.5) == Gossip(
        compression="int8", compression_step=0.5
    )
    assert make_algorithm("gossip") == Gossip()
    assert type(Gossip().learner(0, param, [1])).__name__ == "_AveragingLearner"


# --- whole runs: the simulator carries compressed messages; node processes refuse them ---------

_RUN = {
    "num_nodes": 4,
    "model": "logreg",
    "epochs": 3,
    "batch_size": 16,
    "learning_rate": 0.2,
    "local_steps": 2,
    "test_size": 100,
    "centralized": False,
}


@pytest.mark.parametrize("algorithm", ["ecl-isvr", "gossip"])
def test_a_compressed_run_learns_with_fewer_bytes_and_nothing_refused(algorithm):
    from fedfuse.consensus import run_consensus

    dense = run_consensus(algorithm=algorithm, **_RUN)
    small = run_consensus(algorithm=algorithm, compression="int8", **_RUN)
    # int8: a quarter of the bytes per message, plus a scale per tensor.
    assert small.final["bytes_sent"] < 0.3 * dense.final["bytes_sent"]
    assert small.final["exchanges"] == dense.final["exchanges"]
    assert small.final["refused_messages"] == 0
    assert small.final["mean_accuracy"] > 0.6  # 10 digit classes: chance is 0.1
    assert abs(small.final["mean_accuracy"] - dense.final["mean_accuracy"]) < 0.1


def test_node_processes_refuse_compression(tmp_path):
    from fedfuse.consensus import ConsensusConfig, LocalGraph

    config = ConsensusConfig().replace(compression="topk", **_RUN)
    with pytest.raises(ValueError, match="runs in the simulator only"):
        LocalGraph(config, tmp_path / "run")
