"""Your own nodes and graph: run_consensus(data=..., graph=...), fedfuse consensus --node-data."""

from __future__ import annotations

import argparse
import json
import re

import numpy as np
import pytest

from fedfuse.cli import main
from fedfuse.cli._main import build_parser
from fedfuse.consensus import (
    ConsensusConfig,
    LocalGraph,
    as_topology,
    load_node_data,
    node_datasets,
    ring,
    run_consensus,
)
from fedfuse.data import ArrayDataset, PartyData

TINY = {"model": "logreg", "epochs": 2, "centralized": False, "batch_size": 16}
CONFIG = ConsensusConfig(num_nodes=4, partition_params={"classes_per_party": 5}, **TINY)


def _shares(config: ConsensusConfig = CONFIG):
    datasets, test, _ = node_datasets(config)
    return datasets, test


def _write_npz(path, train: ArrayDataset, test: ArrayDataset) -> None:
    np.savez(path, x_train=train.x, y_train=train.y, x_test=test.x, y_test=test.y)


# --- the settings: the partitioner's own parameters -------------------------------------------


def test_partition_params_are_the_partitioners_own_names():
    config = ConsensusConfig(partition_params={"classes_per_party": 5})
    assert ConsensusConfig.from_dict({"classes_per_party": 5}) == config
    assert ConsensusConfig.from_dict({"classes_per_node": 5}) == config  # the one alias
    assert ConsensusConfig().replace(classes_per_node=5) == config
    assert config.replace(partition="dirichlet", alpha=0.3).partition_params == {"alpha": 0.3}
    assert config.replace(partition="iid").partition_params == {}  # not carried to a new scheme
    assert config.to_dict()["partition_params"] == {"classes_per_party": 5}
    with pytest.raises(ValueError, match=r"parameters of partition 'classes': classes_per_party"):
        ConsensusConfig.from_dict({"alpha": 0.3})
    with pytest.raises(ValueError, match="not both"):
        ConsensusConfig.from_dict({"classes_per_node": 5, "classes_per_party": 5})
    with pytest.raises(ValueError, match=r"partition 'iid' takes \(none\); not \['alpha'\]"):
        ConsensusConfig(partition="iid", partition_params={"alpha": 1.0}).check()
    with pytest.raises(ValueError, match="epochs must be an integer >= 1, got 0"):
        ConsensusConfig(epochs=0).check()
    with pytest.raises(ValueError, match="speed_spread must be a number >= 0 and < 1, got 1"):
        ConsensusConfig(speed_spread=1).check()
    # The same split as the data layer's partitioner under that name.
    five = node_datasets(CONFIG)[0]
    assert all((d.label_counts(10) > 0).sum() == 5 for d in five)


def test_every_consensus_flag_shows_its_default():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    consensus = sub.choices["consensus"]
    flags = [a for a in consensus._actions if a.option_strings and a.dest != "help"]
    assert len(flags) > 30
    missing = [a.option_strings[0] for a in flags if "default" not in (a.help or "")]
    assert missing == []
    texts = {a.option_strings[0]: a.help for a in flags}
    assert "classes (default: 2)" in texts["--classes-per-party"]
    assert "--classes-per-node" in next(
        a.option_strings for a in flags if a.option_strings[0] == "--classes-per-party"
    )
    assert "default: 20" in texts["--epochs"]


# --- your own data in Python ------------------------------------------------------------------


def test_own_data_is_the_same_program_as_the_built_in_split():
    """The nodes' arrays given as a mapping train exactly like the built-in split of them."""
    datasets, test = _shares(CONFIG.replace(seed=1))
    built_in = run_consensus(CONFIG, seed=1)
    own = run_consensus(
        CONFIG, data={i: (d.x, d.y) for i, d in enumerate(datasets)}, test=test, seed=1
    )
    assert own.own_data and not built_in.own_data
    assert own.final["exchange_order"] == built_in.final["exchange_order"]
    for i, weights in built_in.node_weights.items():
        for name, arr in weights.items():
            np.testing.assert_array_equal(own.node_weights[i][name], arr)
    wall = "wall_s"  # the seconds differ; everything measured is the same
    assert [{k: v for k, v in r.items() if k != wall} for r in own.history] == [
        {k: v for k, v in r.items() if k != wall} for r in built_in.history
    ]


def test_own_named_nodes_and_graph():
    """String ids in natural order, an adjacency mapping, node test splits pooled as the test
    set; every result is keyed by the ids."""
    datasets, test = _shares()
    names = ["site_10", "site_2", "site_1", "site_3"]  # natural order: 1, 2, 3, 10
    halves = np.array_split(np.arange(len(test)), 4)
    data = {
        name: PartyData(d, test.subset(part))
        for name, d, part in zip(names, datasets, halves, strict=True)
    }
    graph = {"site_1": ["site_2", "site_10"], "site_2": ["site_3"], "site_3": ["site_10"]}
    result = run_consensus(data=data, graph=graph, fail_at={"site_3": 1.5}, max_failures=1, **TINY)
    order = ["site_1", "site_2", "site_3", "site_10"]
    assert list(result.label_counts) == order
    for name in order:
        assert result.label_counts[name] == data[name].train.label_counts(10).tolist()
    assert result.topology.node_ids == tuple(order)
    assert [result.topology.node_id(j) for j in result.topology.neighbours(0)] == [
        "site_2",
        "site_10",
    ]
    assert result.config.num_nodes == 4
    assert set(result.history[0]["nodes"]) == set(order)
    assert result.final["running"] == ["site_1", "site_2", "site_10"]
    assert result.final["dropped_edges"] == {"site_2": ["site_3"], "site_10": ["site_3"]}
    assert {e[1] for e in result.final["exchange_order"]} <= set(order)
    doc = result.to_dict()
    assert doc["own_data"] is True and doc["topology"]["node_ids"] == order
    assert result.final["mean_accuracy"] > 0.3  # chance is 0.1; on the pooled test splits


def test_a_topology_object_and_an_edge_list_over_the_data():
    datasets, test = _shares()
    data = {i: d for i, d in enumerate(datasets)}
    square = run_consensus(data=data, test=test, graph=ring(4), **TINY)
    assert square.topology.edges == ring(4).edges and square.topology.node_ids is None
    star = run_consensus(data=data, test=test, graph=[(0, 1), (0, 2), ("0", "3")], **TINY)
    assert star.topology.neighbours(0) == (1, 2, 3) and star.topology.degree(3) == 1


@pytest.mark.parametrize(
    ("graph", "message"),
    [
        ([(0, 1), (1, 1), (1, 2), (2, 3)], "self-loop at node 1"),
        ([(0, 1), (1, 2), (2, 7)], r"names node\(s\) \['7'\] that have no data"),
        ([(0, 1), (1, 2)], r"node\(s\) \['3'\] have data but no edge"),
        ({0: [1], 2: [3]}, r"not connected; node\(s\) \['2', '3'\] cannot reach node 0"),
        ([(0, 1, 2)], "edge 1 must be a pair"),
        ({0: "1"}, "node 0 must map to a list"),
        ([(0, 1.5)], "node ids are integers or strings"),
    ],
)
def test_a_graph_that_does_not_fit_the_data_is_refused(graph, message):
    with pytest.raises(ValueError, match=message):
        as_topology(graph, [0, 1, 2, 3])


def test_node_data_that_does_not_fit_is_refused_before_training():
    datasets, test = _shares()
    good = {i: (d.x, d.y) for i, d in enumerate(datasets)}
    cases = [
        ({**good, 2: (datasets[2].x[:, :10], datasets[2].y)}, "node 2: examples of shape"),
        ({**good, 1: (datasets[1].x, datasets[1].y.astype(float))}, "labels must be integers"),
        ({**good, 1: (datasets[1].x, -datasets[1].y - 1)}, "node 1: training data: labels"),
        ({**good, 3: (np.full_like(datasets[3].x, np.nan), datasets[3].y)}, "NaN or infinite"),
        ({**good, 0: (datasets[0].x[:0], datasets[0].y[:0])}, "node 0: training data has no"),
        ({**good, "0": good[0]}, "nodes 0 and '0' are one id"),
        ({0: good[0]}, "at least two nodes"),
    ]
    for data, message in cases:
        with pytest.raises(ValueError, match=message):
            run_consensus(data=data, test=test, **TINY)
    with pytest.raises(ValueError, match="no test set"):
        run_consensus(data=good, **TINY)
    with pytest.raises(ValueError, match="partition, classes_per_party choose or split a dataset"):
        run_consensus(data=good, test=test, partition="iid", classes_per_party=2, **TINY)
    with pytest.raises(ValueError, match="num_nodes=8, but the data/graph you gave has 4"):
        run_consensus(data=good, test=test, num_nodes=8, **TINY)
    with pytest.raises(ValueError, match="give topology or your own graph"):
        run_consensus(data=good, test=test, graph=ring(4), topology="complete", **TINY)
    with pytest.raises(ValueError, match="fail_at: no node 9"):
        run_consensus(data=good, test=test, fail_at={9: 1.0}, **TINY)


# --- your own data on the command line --------------------------------------------------------


def _node_folder(tmp_path, names=("n1", "n2", "n3", "n10")):
    datasets, test = _shares(CONFIG.replace(num_nodes=len(names)))
    folder = tmp_path / "nodes"
    folder.mkdir()
    halves = np.array_split(np.arange(len(test)), len(names))
    for name, d, part in zip(names, datasets, halves, strict=True):
        _write_npz(folder / f"{name}.npz", d, test.subset(part))
    return folder, dict(zip(names, datasets, strict=True))


def test_cli_runs_a_folder_of_npz_nodes_on_a_json_graph(tmp_path, capsys):
    folder, datasets = _node_folder(tmp_path)
    assert list(load_node_data(folder)) == ["n1", "n2", "n3", "n10"]
    graph = tmp_path / "graph.json"
    graph.write_text(json.dumps([["n1", "n2"], ["n2", "n3"], ["n3", "n10"], ["n10", "n1"]]))
    out = tmp_path / "run"
    argv = ["consensus", "--node-data", str(folder), "--graph", str(graph), "--out", str(out)]
    tiny = ["--model", "logreg", "--epochs", "2", "--no-centralized"]
    assert main([*argv, *tiny]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert f"on a graph from {graph} of 4 nodes, your data from {folder}" in text
    doc = json.loads((out / "history.json").read_text())
    assert doc["own_data"] is True and doc["config"]["num_nodes"] == 4
    assert doc["topology"]["node_ids"] == ["n1", "n2", "n3", "n10"]
    assert doc["topology"]["edges"] == [[0, 1], [0, 3], [1, 2], [2, 3]]
    for name, d in datasets.items():
        assert doc["label_counts"][name] == d.label_counts(10).tolist()
    assert set(doc["epochs"][-1]["nodes"]) == set(datasets)
    # Without --graph, the ring of --topology over the files' nodes.
    assert main([*argv[:3], "--out", str(tmp_path / "ring"), *tiny]) == 0
    ring_doc = json.loads((tmp_path / "ring" / "history.json").read_text())
    assert ring_doc["topology"]["name"] == "ring"
    assert ring_doc["topology"]["node_ids"] == ["n1", "n2", "n3", "n10"]


def test_cli_errors_name_the_problem(tmp_path, capsys):
    folder, _ = _node_folder(tmp_path)
    base = ["consensus", "--model", "logreg", "--epochs", "1", "--out", str(tmp_path / "o")]
    cases = [
        (["--node-data", str(tmp_path / "absent")], "no node data folder at"),
        (["--node-data", str(tmp_path)], "holds no .npz files: put one <node id>.npz"),
        (["--node-data", str(folder), "--graph", str(tmp_path / "g.json")], "no graph file at"),
        (["--node-data", str(folder), "--partition", "iid"], "do not apply to node data"),
        (["--node-data", str(folder), "--dataset", "iris"], "do not apply to node data"),
    ]
    bad = tmp_path / "bad.json"
    bad.write_text('{"n1": ["n2"], "n2": ["n3"], "n3": ["n1"]}')
    cases.append((["--node-data", str(folder), "--graph", str(bad)], r"\['n10'\] have data"))
    broken = tmp_path / "broken.json"
    broken.write_text("[[")
    cases.append((["--node-data", str(folder), "--graph", str(broken)], "not a JSON edge list"))
    for flags, message in cases:
        assert main([*base, *flags]) == 2
        err = capsys.readouterr().err
        assert re.search(message, " ".join(err.split())), (flags, err)
    (folder / "n3.npz").write_bytes(b"not a zip")
    assert main([*base, "--node-data", str(folder)]) == 2
    assert "n3.npz" in capsys.readouterr().err


def test_node_processes_get_their_own_npz(tmp_path):
    """`--processes` with your data: each process is handed its file (and the class count),
    trains on exactly its rows and reports on its own test split."""
    folder, datasets = _node_folder(tmp_path, names=("a", "b", "c"))
    files = {name: folder / f"{name}.npz" for name in datasets}
    config = CONFIG.replace(num_nodes=3, partition="iid", epochs=2, local_steps=2)
    graph = LocalGraph(config, tmp_path / "run", node_data=files, graph=[("a", "b"), ("b", "c")])
    assert graph.topology.node_ids == ("a", "b", "c") and graph.config.num_nodes == 3
    command = graph.command(1)
    assert command[command.index("--data") + 1] == str(files["b"])
    assert command[command.index("--num-classes") + 1] == "10"
    with graph:
        codes = graph.wait(timeout=300)
        doc = graph.collect(centralized=False)
    assert codes == {0: 0, 1: 0, 2: 0}
    assert doc["topology"]["node_ids"] == ["a", "b", "c"]
    for i, name in enumerate(("a", "b", "c")):
        report = json.loads((tmp_path / "run" / f"node_{i}.json").read_text())
        assert report["num_examples"] == len(datasets[name])
        assert sorted(int(p) for p in report["peers"]) == list(graph.topology.neighbours(i))
