"""What a decentralized run's epoch is (budget), step decay, the validation split and the
reference, in the simulator, in node processes and on the command line."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from fedfuse._settings import SettingsError
from fedfuse.cli import main
from fedfuse.consensus import (
    ConsensusConfig,
    ConsensusNode,
    Gossip,
    LocalGraph,
    node_datasets,
    run_consensus,
    train_reference,
    validation_data,
)
from fedfuse.data import ArrayDataset

TINY = {
    "num_nodes": 4,
    "model": "logreg",
    "epochs": 2,
    "batch_size": 16,
    "learning_rate": 0.2,
    "local_steps": 2,
    "speed_spread": 0.0,
    "test_size": 100,
}


def _lone_node(lr_decay_epochs=(), epoch_steps=None) -> ConsensusNode:
    x = np.random.default_rng(0).normal(size=(64, 3)).astype(np.float32)
    data = ArrayDataset(x, (x[:, 0] > 0).astype(np.int64))
    return ConsensusNode(
        0, (), nn.Linear(3, 2), data, Gossip(), learning_rate=0.4, batch_size=16,
        epoch_steps=epoch_steps, lr_decay_epochs=lr_decay_epochs, lr_decay=0.5,
    )  # fmt: skip


def test_step_decay_multiplies_the_step_at_each_listed_epoch():
    node = _lone_node(lr_decay_epochs=(1, 2.5), epoch_steps=4)
    seen = []
    for _ in range(12):
        seen.append(node.current_lr)
        node.step()
    # Steps 0-3 at 0.4, 4-9 at 0.2 (epoch 1 = 4 steps), from step 10 (epoch 2.5) at 0.1.
    assert seen == [0.4] * 4 + [0.2] * 6 + [0.1] * 2
    assert node.epochs_done == 3.0


def test_a_decay_too_far_to_reach_never_happens():
    node = _lone_node(lr_decay_epochs=(1e300,), epoch_steps=4)
    node.step()
    assert node.current_lr == 0.4


def test_the_decayed_step_is_the_step_taken():
    """Two nodes from the same start and batches: one decays after its first step; its second
    step moves the weights half as far as the other's would from the same point."""
    decayed, constant = _lone_node(lr_decay_epochs=(1,), epoch_steps=1), _lone_node()
    constant.adapter.module.load_state_dict(decayed.adapter.module.state_dict())
    decayed.step()
    constant.step()
    before = [p.detach().clone() for p in decayed.learner.params]
    twin = copy.deepcopy(constant)
    decayed.step()
    twin.step()
    moved = [p.detach() - b for p, b in zip(decayed.learner.params, before, strict=True)]
    full = [p.detach() - b for p, b in zip(twin.learner.params, before, strict=True)]
    for m, f in zip(moved, full, strict=True):
        torch.testing.assert_close(m, 0.5 * f)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"epoch_steps": 0}, "epoch_steps must be > 0"),
        ({"lr_decay_epochs": (0,)}, "lr_decay_epochs must be epochs > 0"),
        ({"lr_decay_epochs": (math.nan,)}, "lr_decay_epochs must be epochs > 0"),
        ({"lr_decay": 1.5}, r"lr_decay must be in \(0, 1\]"),
    ],
)
def test_bad_schedules_are_refused_by_the_node(kwargs, message):
    x = np.zeros((8, 2), np.float32)
    with pytest.raises(ValueError, match=message):
        ConsensusNode(
            0, (), nn.Linear(2, 2), ArrayDataset(x, np.zeros(8, np.int64)), Gossip(),
            learning_rate=0.1, **kwargs,
        )  # fmt: skip


@pytest.mark.parametrize(
    "change, message",
    [
        ({"budget": "double"}, "budget must be one of 'equal', 'reference'"),
        ({"lr_decay_epochs": [3, -1]}, "lr_decay_epochs must be a list of epochs > 0"),
        ({"lr_decay_epochs": "10,15"}, "lr_decay_epochs must be a list of epochs > 0"),
        ({"lr_decay": 0}, "lr_decay must be a number > 0 and <= 1"),
        ({"validation_size": 0}, "validation_size must be"),
    ],
)
def test_bad_settings_are_named(change, message):
    with pytest.raises(SettingsError, match=message):
        ConsensusConfig().replace(**change).check()


def test_reference_budget_gives_every_node_the_references_steps():
    """``budget="reference"``: each node (all at the same speed here) takes as many steps per
    epoch as the reference takes for one pass over the pooled data; ``"equal"``: its own pass,
    so the nodes together take the reference's steps."""
    equal = run_consensus(centralized=True, **TINY)
    reference = run_consensus(budget="reference", centralized=True, **TINY)
    sizes = [sum(c) for c in equal.label_counts.values()]
    pooled_steps = sum(sizes) // TINY["batch_size"]
    own_steps = float(np.mean([n // TINY["batch_size"] for n in sizes]))
    # Each step lasts U[0.5, 1.5] time units (jitter), so counts vary a little around these.
    for steps in reference.history[-1]["steps"].values():
        assert steps == pytest.approx(TINY["epochs"] * pooled_steps, rel=0.15)
    for steps in equal.history[-1]["steps"].values():
        assert steps == pytest.approx(TINY["epochs"] * own_steps, rel=0.15)
    # The reference is the same in both: epochs passes over the pooled data.
    assert reference.centralized[-1]["steps"] == TINY["epochs"] * pooled_steps
    assert equal.centralized == [
        {**r, "wall_s": e["wall_s"]}
        for r, e in zip(reference.centralized, equal.centralized, strict=True)
    ]
    # Four times the gradients per node: the nodes train further (lower loss).
    assert reference.final["mean_loss"] < equal.final["mean_loss"]


def test_the_validation_split_is_held_out_of_every_node():
    config = ConsensusConfig().replace(
        validation_size=200, num_nodes=4, train_size=1000, partition="iid"
    )
    held = validation_data(config)
    datasets, _, _ = node_datasets(config)
    assert len(held) == 200 and sum(len(d) for d in datasets) == 800
    rows = {r.tobytes() for d in datasets for r in d.x}
    assert not any(r.tobytes() in rows for r in held.x)
    assert validation_data(ConsensusConfig()) is None


def test_runs_report_validation_accuracy_for_nodes_and_reference():
    result = run_consensus(validation_size=150, centralized=True, **TINY)
    for record in result.history:
        assert 0 <= record["validation"]["min_accuracy"] <= record["validation"]["mean_accuracy"]
        assert record["bytes_sent"] > 0 and record["wall_s"] >= 0
    assert 0 < result.final["validation"]["mean_accuracy"] <= 1
    assert 0 < result.centralized_final["validation_accuracy"] <= 1
    assert all("validation_accuracy" in c for c in result.centralized)


def test_a_validation_split_larger_than_the_training_set_is_refused():
    with pytest.raises(ValueError, match="validation_size=5000 leaves no training data"):
        run_consensus(validation_size=5000, train_size=1000, **TINY)


def test_the_reference_follows_the_schedule():
    config = ConsensusConfig().replace(
        model="logreg", epochs=3, batch_size=16, learning_rate=0.4, lr_decay_epochs=[1, 2]
    )
    datasets, test, _ = node_datasets(config)
    pooled = ArrayDataset(
        np.concatenate([d.x for d in datasets]), np.concatenate([d.y for d in datasets])
    )
    curve, node = train_reference(
        config, pooled, nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), test
    )
    assert [c["epoch"] for c in curve] == [1, 2, 3]
    assert node.steps == 3 * (len(pooled) // 16)
    assert node.current_lr == pytest.approx(0.4 * 0.1**2)


def test_cli_takes_the_budget_and_schedule(tmp_path, capsys):
    code = main(
        [
            "consensus", "--model", "logreg", "--epochs", "2", "--num-nodes", "4",
            "--budget", "reference", "--lr-decay-epochs", "1,1.5", "--lr-decay", "0.5",
            "--validation-size", "100", "--test-size", "100", "--no-centralized",
            "--partition", "class_window", "--classes-per-party", "5", "--shift", "1.25",
            "--out", str(tmp_path),
        ]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    doc = json.loads((tmp_path / "history.json").read_text())
    assert doc["config"]["budget"] == "reference"
    assert doc["config"]["lr_decay_epochs"] == [1.0, 1.5]
    assert "validation" in doc["final"]
    assert doc["config"]["partition_params"] == {"classes_per_party": 5, "shift": 1.25}
    with pytest.raises(SystemExit):
        main(["consensus", "--lr-decay-epochs", "ten"])
    assert "expected epochs separated by commas" in capsys.readouterr().err


def test_node_processes_count_epochs_in_the_runs_budget(tmp_path):
    """With ``budget="reference"`` a node process takes the pooled data's steps per epoch (the
    launcher works them out and hands them over in graph.json), as in the simulator."""
    config = ConsensusConfig().replace(
        **{**TINY, "num_nodes": 2, "epochs": 1}, topology="ring", budget="reference",
        centralized=False,
    )  # fmt: skip
    sizes = [len(d) for d in node_datasets(config)[0]]
    graph = LocalGraph(config, tmp_path / "run")
    assert json.loads(graph.graph_file.read_text())["epoch_steps"] == sum(sizes) // 16
    with graph:
        assert graph.wait(timeout=300) == {0: 0, 1: 0}
    for i in range(2):
        report = json.loads((tmp_path / "run" / f"node_{i}.json").read_text())
        assert report["steps"] == sum(sizes) // 16
        assert [r["epoch"] for r in report["history"]] == [1]


def test_refused_messages_cost_the_exchange_not_the_run():
    """A neighbour's message the receiver refuses (here: every one, by a bound far below any
    honest message) changes nothing and is counted; the simulation runs to the end."""
    result = run_consensus(max_message_ratio=0.01, centralized=False, **TINY)
    assert result.final["exchanges"] == 0
    assert result.final["refused_messages"] > 0
    assert len(result.history) == TINY["epochs"]
    honest = run_consensus(centralized=False, **TINY)
    assert honest.final["refused_messages"] == 0 and honest.final["exchanges"] > 0


@pytest.mark.parametrize("bad", ["300", -1, 0, True, 1e400])
def test_a_graph_file_with_a_bad_epoch_length_is_refused(tmp_path, bad):
    from fedfuse.consensus import read_graph

    graph = LocalGraph(ConsensusConfig().replace(**{**TINY, "num_nodes": 2}), tmp_path / "run")
    doc = json.loads(graph.graph_file.read_text())
    doc["epoch_steps"] = bad
    graph.graph_file.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="epoch_steps must be a number > 0"):
        read_graph(graph.graph_file)
