"""Decentralized training in one process: topologies, the ECL update rule, the async clock."""

from __future__ import annotations

import argparse
import copy
import json

import numpy as np
import pytest
import torch
from torch import nn

from fedfuse.cli import main
from fedfuse.consensus import (
    DPSGD,
    ECL,
    NODE_TOKEN_ENV,
    AsyncSimulator,
    ConsensusConfig,
    ConsensusNode,
    Gossip,
    complete,
    consensus_distance,
    double_ring,
    from_edge_list,
    make_algorithm,
    make_topology,
    random_regular,
    ring,
    run_consensus,
    torus,
)
from fedfuse.data import ArrayDataset
from fedfuse.weights import WeightsMismatchError

# --- topologies ---------------------------------------------------------------------------------


def test_topology_builders():
    assert ring(8).edges == ((0, 1), (0, 7), (1, 2), (2, 3), (3, 4), (4, 5), (5, 6), (6, 7))
    assert {double_ring(8).degree(i) for i in range(8)} == {4}
    assert {torus(3, 4).degree(i) for i in range(12)} == {4}
    assert len(complete(5).edges) == 10
    graph = random_regular(8, 3, seed=1)
    assert {graph.degree(i) for i in range(8)} == {3} and graph.is_connected()
    assert random_regular(8, 3, seed=1) == graph
    assert random_regular(8, 3, seed=2) != graph
    assert make_topology("torus", 9).neighbours(4) == (1, 3, 5, 7)


def test_edge_list_file(tmp_path):
    path = tmp_path / "graph.txt"
    path.write_text("# a triangle and a tail\n0 1\n1 2\n2,0\n2 3  # tail\n")
    graph = make_topology(str(path), 4)
    assert graph.edges == ((0, 1), (0, 2), (1, 2), (2, 3)) and graph.is_connected()
    with pytest.raises(ValueError, match="line 1"):
        from_edge_list(["0 1 2"])
    with pytest.raises(ValueError, match="self-loop"):
        from_edge_list(["3 3"])
    with pytest.raises(ValueError, match="even"):
        random_regular(7, 3)
    with pytest.raises(ValueError, match="unknown topology"):
        make_topology("star", 4)


# --- the update rule on a problem whose answer is known ----------------------------------------


class _Linear(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.w


def _least_squares_nodes(algorithm, local_steps, num_nodes=6, dim=4, n=20):
    """Six nodes on a ring, each with its own (shifted, differently generated) regression data."""
    rng = np.random.default_rng(0)
    data = []
    for _ in range(num_nodes):
        x = rng.normal(size=(n, dim)) + rng.normal(size=dim)
        y = x @ rng.normal(size=dim) + 0.1 * rng.normal(size=n)
        data.append(ArrayDataset(x.astype(np.float32), y.astype(np.float32)))
    x_all = np.concatenate([d.x for d in data]).astype(np.float64)
    y_all = np.concatenate([d.y for d in data]).astype(np.float64)
    optimum = np.linalg.lstsq(x_all, y_all, rcond=None)[0]
    graph = ring(num_nodes)
    nodes = {
        i: ConsensusNode(
            i,
            graph.neighbours(i),
            _Linear(dim),
            data[i],
            algorithm,
            learning_rate=0.05,
            batch_size=n,
            local_steps=local_steps,
            loss=nn.MSELoss(),
        )
        for i in range(num_nodes)
    }
    return nodes, optimum


@pytest.mark.parametrize(
    ("algorithm", "local_steps"),
    [
        (ECL(exchange="pdmm", eta=1.0), 1),
        (ECL(exchange="admm", eta=1.0), 1),
        (ECL(), 4),
        (ECL(exchange="pdmm", eta=0.5, rho=0.5), 2),
        (ECL(dual_init="zero"), 4),
    ],
    ids=["pdmm", "admm", "isvr-K4", "rho", "isvr-K4-zero-duals"],
)
def test_ecl_reaches_the_centralized_least_squares_optimum(algorithm, local_steps):
    """Full-batch gradients, heterogeneous nodes, asynchronous exchanges: every node ends at the
    minimiser of the pooled least-squares problem (not just at some common point)."""
    nodes, optimum = _least_squares_nodes(algorithm, local_steps)
    AsyncSimulator(nodes, seed=3, speed_spread=0.5).run(300)
    models = [n.weights() for n in nodes.values()]
    assert consensus_distance(models) < 1e-3
    for model in models:
        np.testing.assert_allclose(model["w"], optimum, atol=1e-3)


def _threadlike_schedule(nodes, rounds):
    """K = 2 with the message order of threads and processes: every node ends its round, then
    each in turn sends to its neighbours and at once takes the first step of its next round
    (before the later senders' messages reach it)."""
    for node in nodes:
        node.step()
    for _ in range(rounds):
        for node in nodes:
            node.step()
        for node in nodes:
            for j in node.peers:
                nodes[j].answer(node.node_id, node.message(j), node.degree)
            node.step()


def test_admm_converges_where_pdmm_diverges():
    """Why ADMM is ECL's default exchange: PDMM's undamped reflection diverges under the
    message order that real concurrent nodes produce; ADMM's average still reaches the optimum."""
    nodes, optimum = _least_squares_nodes(ECL(exchange="admm"), local_steps=2)
    _threadlike_schedule([nodes[i] for i in sorted(nodes)], 150)
    for node in nodes.values():
        np.testing.assert_allclose(node.weights()["w"], optimum, atol=1e-2)
    nodes, _ = _least_squares_nodes(ECL(exchange="pdmm"), local_steps=2)
    _threadlike_schedule([nodes[i] for i in sorted(nodes)], 150)
    assert consensus_distance([n.weights() for n in nodes.values()]) > 1e3


@pytest.mark.parametrize("algorithm", [Gossip(), DPSGD()], ids=["gossip", "dpsgd"])
def test_averaging_with_local_steps_stays_biased(algorithm):
    """The reason for ECL: with local steps on heterogeneous data, averaging methods with a
    constant step size neither agree nor reach the optimum."""
    nodes, optimum = _least_squares_nodes(algorithm, local_steps=4)
    AsyncSimulator(nodes, seed=3).run(300)
    models = [n.weights() for n in nodes.values()]
    assert consensus_distance(models) > 0.05
    assert max(np.abs(m["w"] - optimum).max() for m in models) > 0.1


def test_ecl_signs_and_messages():
    """A_ij = +I for i < j, -I otherwise; y_ij = z_ij - 2 A_ij w_i; PDMM copies, ADMM averages."""
    torch.manual_seed(0)
    layer = nn.Linear(3, 2)
    named = list(layer.named_parameters())
    w = {n: p.detach().numpy().copy() for n, p in named}
    low = ECL(exchange="pdmm", eta=1.0).learner(1, named, [0, 2])
    for name in w:  # z starts at agreement, A_ij w_i, so y_ij = -A_ij w_i
        np.testing.assert_allclose(low.message(2)[name], -w[name])
        np.testing.assert_allclose(low.message(0)[name], w[name])
    incoming = {n: np.full_like(a, 0.5) for n, a in w.items()}
    low.receive(2, incoming, 2)
    np.testing.assert_allclose(low.message(2)["bias"], 0.5 - 2 * w["bias"])
    admm = ECL(exchange="admm", eta=1.0).learner(1, named, [2])
    admm.receive(2, incoming, 2)
    np.testing.assert_allclose(admm.message(2)["bias"], 0.5 * (w["bias"] + 0.5) - 2 * w["bias"])
    with pytest.raises(WeightsMismatchError, match="shape"):
        low.receive(2, {**incoming, "bias": np.zeros(5, np.float32)}, 2)
    with pytest.raises(WeightsMismatchError, match="non-finite"):
        low.receive(2, {**incoming, "bias": np.full(2, np.nan, np.float32)}, 2)


def test_isvr_step_is_a_convex_mix():
    """ECL-ISVR: w <- (K-1)/K (w - s g) + 1/K mean_j A_ij z_ij."""
    param = nn.Parameter(torch.tensor([1.0, 2.0]))
    learner = ECL(exchange="pdmm").learner(0, [("p", param)], [1, 2], local_steps=5)
    learner.receive(1, {"p": np.array([-3.0, -3.0], np.float32)}, 2)  # A_01 z_01 = +z_01 = -3
    learner.step([torch.tensor([10.0, 0.0])], lr=0.1)
    mean_target = (np.array([-3.0, -3.0]) + np.array([1.0, 2.0])) / 2  # z_02 = A_02 w = w
    expected = 0.8 * (np.array([1.0, 2.0]) - 0.1 * np.array([10.0, 0.0])) + 0.2 * mean_target
    np.testing.assert_allclose(param.detach().numpy(), expected, rtol=1e-6)


def test_algorithm_settings_are_checked_where_used():
    with pytest.raises(ValueError, match="local_steps K >= 2"):
        ECL().learner(0, [("p", nn.Parameter(torch.zeros(1)))], [1], local_steps=1)
    with pytest.raises(ValueError, match="exchange must be one of"):
        ECL(exchange="gossip", eta=1.0).validate(1)
    with pytest.raises(ValueError, match="fixes eta"):
        make_algorithm("ecl-isvr", eta=1.0)
    with pytest.raises(ValueError, match="unknown algorithm"):
        make_algorithm("fedavg")


# --- the asynchronous clock -------------------------------------------------------------------

TINY = {
    "num_nodes": 4,
    "classes_per_party": 5,
    "model": "logreg",
    "epochs": 2,
    "centralized": False,
    "batch_size": 16,
    "learning_rate": 0.1,
}


def test_asynchrony_is_seeded_and_reproducible():
    first = run_consensus(seed=1, **TINY)
    again = run_consensus(seed=1, **TINY)
    other = run_consensus(seed=2, **TINY)
    assert first.final["exchange_order"] == again.final["exchange_order"]

    def measured(history):  # everything but the wall-clock seconds
        return [{k: v for k, v in r.items() if k != "wall_s"} for r in history]

    assert measured(first.history) == measured(again.history)
    for i, weights in first.node_weights.items():
        for name, arr in weights.items():
            np.testing.assert_array_equal(arr, again.node_weights[i][name])
    order = [(i, j) for _, i, j, _ in first.final["exchange_order"]]
    assert order != [(i, j) for _, i, j, _ in other.final["exchange_order"]]
    # No barrier: nodes run at their own pace and end with different step counts.
    steps = first.history[-1]["steps"]
    assert len(set(steps.values())) > 1
    times = [t for t, *_ in first.final["exchange_order"]]
    assert times == sorted(times) and len(set(times)) > 1


def test_a_run_neither_reads_nor_moves_the_global_torch_seed():
    """Model builds seed a forked RNG: the caller's global state is untouched and does not
    change the run (two runs in one process, or one beside other work, never disturb each
    other)."""
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first = run_consensus(seed=1, **TINY)
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(456)
    again = run_consensus(seed=1, **TINY)
    for i, weights in first.node_weights.items():
        for name, arr in weights.items():
            np.testing.assert_array_equal(arr, again.node_weights[i][name])


def test_dead_node_is_dropped_and_the_rest_keep_training():
    result = run_consensus(fail_at={1: 0.5}, max_failures=2, **{**TINY, "epochs": 3})
    assert result.final["running"] == [0, 2, 3]
    assert result.final["dropped_edges"] == {"0": [1], "2": [1]}
    steps = [r["steps"] for r in result.history]
    assert all(steps[-1][i] > steps[0][i] for i in ("0", "2", "3"))
    assert "1" not in steps[-1]


def test_late_node_starts_from_a_neighbours_model():
    graph = ring(4)
    torch.manual_seed(0)
    template = nn.Linear(64, 10)
    rng = np.random.default_rng(0)
    data = ArrayDataset(rng.normal(size=(40, 64)).astype(np.float32), rng.integers(0, 10, 40))
    nodes = {
        i: ConsensusNode(
            i,
            graph.neighbours(i),
            copy.deepcopy(template),
            data,
            ECL(eta=1.0),
            learning_rate=0.1,
            batch_size=8,
            local_steps=2,
            seed=i,
        )
        for i in range(4)
    }
    simulator = AsyncSimulator(nodes, join_at={3: 10.0}, seed=0)
    simulator.run(10.0)
    assert simulator.joined_from == {3: 0}
    for name, arr in nodes[0].weights().items():
        np.testing.assert_array_equal(nodes[3].weights()[name], arr)
        assert not np.array_equal(arr, template.state_dict()[name].numpy())
    simulator.run(30.0)
    assert nodes[3].steps > 0 and nodes[3].exchanges > 0


# --- the one-call API and the CLI ---------------------------------------------------------------


def test_cli_consensus_writes_history_and_plot(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(
        [
            "consensus",
            "--num-nodes",
            "4",
            "--model",
            "logreg",
            "--epochs",
            "2",
            "--topology",
            "complete",
            "--algorithm",
            "dpsgd",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    text = capsys.readouterr().out
    assert "dpsgd on a complete of 4 nodes" in text and "centralized, same epochs" in text
    doc = json.loads((out / "history.json").read_text())
    assert [r["epoch"] for r in doc["epochs"]] == [1, 2]
    assert doc["config"]["algorithm"] == "dpsgd" and len(doc["topology"]["edges"]) == 6
    assert len(doc["centralized"]) == 2 and set(doc["epochs"][0]["nodes"]) == {"0", "1", "2", "3"}
    assert (out / "accuracy.png").stat().st_size > 10_000


def test_config_from_toml_and_errors(tmp_path, capsys):
    toml = tmp_path / "c.toml"
    toml.write_text('[consensus]\nalgorithm = "gossip"\nnum_nodes = 3\n')
    assert ConsensusConfig.from_file(toml).num_nodes == 3
    with pytest.raises(ValueError, match="unknown consensus setting"):
        ConsensusConfig.from_dict({"rounds": 3})
    assert (
        main(
            [
                "consensus",
                "--algorithm",
                "ecl-isvr",
                "--local-steps",
                "1",
                "--out",
                str(tmp_path / "x"),
            ]
        )
        == 2
    )
    assert "K >= 2" in capsys.readouterr().err
    assert main(["node", "--id", "0", "--peer", "1:http://x", "--out", str(tmp_path)]) == 2
    assert "--peer wants ID=URL" in capsys.readouterr().err


def test_node_token_comes_from_a_file_or_the_environment_not_only_argv(
    tmp_path, capsys, monkeypatch
):
    from fedfuse.cli._consensus import _node_token

    def args(**given):
        return argparse.Namespace(**{"token": None, "token_file": None, **given})

    secret = tmp_path / "token"
    secret.write_text("from-the-file\n")
    monkeypatch.setenv(NODE_TOKEN_ENV, "from-the-environment")
    assert _node_token(args(token_file=str(secret))) == "from-the-file"
    assert _node_token(args()) == "from-the-environment"
    assert _node_token(args(token="from-argv")) == "from-argv"
    monkeypatch.delenv(NODE_TOKEN_ENV)
    assert _node_token(args()) is None
    base = ["node", "--id", "0", "--peer", "1=http://127.0.0.1:9", "--out", str(tmp_path)]
    (tmp_path / "empty").write_text("\n")
    assert main([*base, "--token-file", str(tmp_path / "empty")]) == 2
    assert "the file is empty" in capsys.readouterr().err
    assert main([*base, "--token", "a", "--token-file", str(secret)]) == 2
    assert "not both" in capsys.readouterr().err
    assert main([*base, "--token-file", str(tmp_path / "missing")]) == 2
    assert "missing" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["node", "--help"])
    assert "visible to every user in `ps`" in " ".join(capsys.readouterr().out.split())


def test_dual_init_is_checked():
    with pytest.raises(ValueError, match="dual_init must be one of agreement, zero"):
        ECL(dual_init="random").validate(4)
