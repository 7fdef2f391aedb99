"""``run_consensus()``: a whole decentralized run in one call, from plain configuration."""

from __future__ import annotations

import copy
import dataclasses
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from fedfuse._settings import Settings
from fedfuse.consensus._algorithms import DPSGD, ECL, Gossip, make_algorithm
from fedfuse.consensus._models import make_model
from fedfuse.consensus._node import DEFAULT_MAX_MESSAGE_RATIO, ConsensusNode
from fedfuse.consensus._report import consensus_distance, mean_weights, plot_runs, write_json
from fedfuse.consensus._simulation import AsyncSimulator
from fedfuse.consensus._topology import Topology, make_topology
from fedfuse.data import ArrayDataset, load_dataset, partition_indices
from fedfuse.models import TorchAdapter, TrainConfig

__all__ = [
    "ConsensusConfig",
    "ConsensusResult",
    "evaluate_nodes",
    "node_datasets",
    "run_consensus",
    "train_centralized",
]

_PARTITION_PARAMS = {
    "iid": {},
    "dirichlet": {"alpha": "alpha"},
    "classes": {"k": "classes_per_node"},
    "shards": {},
    "quantity": {"alpha": "alpha"},
}


@dataclass(frozen=True)
class ConsensusConfig(Settings):
    """Everything ``run_consensus`` needs, as plain data (what a TOML file holds).

    Graph: ``topology`` is ``ring``, ``double_ring``, ``torus``, ``complete``,
    ``random_regular`` (uses ``degree``) or a path to an edge-list file.
    Data: ``partition`` is ``classes`` (``classes_per_node`` classes each), ``dirichlet``
    (``alpha``), ``iid``, ``shards`` or ``quantity``; ``train_size`` keeps a seeded random
    subset of the training set, ``test_size`` a subset of the test set for the per-epoch curves
    (the final numbers always use the whole test set).
    Algorithm: ``algorithm`` is ``ecl`` (``exchange`` ``pdmm``/``admm``, ``eta``, ``rho``,
    ``eta_scaling``), ``ecl-isvr``, ``gossip`` or ``dpsgd``; SGD step ``learning_rate``.
    Schedule: a node exchanges after every ``local_steps`` minibatch steps, on each edge with
    probability ``exchange_prob``; node rates spread by ``speed_spread`` (see
    ``AsyncSimulator``); an edge is dropped after ``max_failures`` failed exchanges.
    Trust: a node refuses a neighbour's message whose norm exceeds ``max_message_ratio`` times
    its own model's (see ``ConsensusNode``; 0 turns the bound off).
    ``epochs`` is measured on the simulated clock: one epoch is the time an average-speed node
    takes for one pass over its data, so all nodes together compute as many gradients as the
    centralized baseline does in the same number of epochs.
    """

    kind: ClassVar[str] = "consensus"

    topology: str = "ring"
    num_nodes: int = 8
    degree: int = 3
    dataset: str = "digits"
    data_dir: str | None = None
    train_size: int | None = None
    test_size: int | None = None
    model: str = "mlp"
    partition: str = "classes"
    classes_per_node: int = 5
    alpha: float = 0.5
    algorithm: str = "ecl"
    exchange: str = "admm"
    eta: float | None = None
    rho: float = 0.0
    eta_scaling: str = "none"
    epochs: int = 20
    batch_size: int = 16
    learning_rate: float = 0.1
    local_steps: int = 4
    exchange_prob: float = 1.0
    speed_spread: float = 0.5
    max_failures: int = 3
    max_message_ratio: float = DEFAULT_MAX_MESSAGE_RATIO
    centralized: bool = True
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def make_topology(self) -> Topology:
        graph = make_topology(self.topology, self.num_nodes, degree=self.degree, seed=self.seed)
        if graph.num_nodes != self.num_nodes:
            raise ValueError(
                f"topology {self.topology!r} has {graph.num_nodes} nodes "
                f"but num_nodes={self.num_nodes}"
            )
        return graph

    def make_algorithm(self) -> ECL | Gossip | DPSGD:
        algorithm = make_algorithm(
            self.algorithm,
            exchange=self.exchange,
            eta=self.eta,
            rho=self.rho,
            eta_scaling=self.eta_scaling,
        )
        if isinstance(algorithm, ECL):
            algorithm.validate(self.local_steps)
        return algorithm

    def partition_params(self) -> dict[str, Any]:
        try:
            names = _PARTITION_PARAMS[self.partition]
        except KeyError:
            raise ValueError(
                f"unknown partition {self.partition!r}; "
                f"choose one of: {', '.join(_PARTITION_PARAMS)}"
            ) from None
        return {param: getattr(self, attr) for param, attr in names.items()}

    @property
    def label(self) -> str:
        """A short name for plots: algorithm (and exchange rule for ECL)."""
        return (
            f"{self.algorithm} ({self.exchange})"
            if self.algorithm.startswith("ecl")
            else self.algorithm
        )


@dataclass
class ConsensusResult:
    """What a decentralized run produced.

    ``history`` has one record per epoch (per-node and mean test accuracy on the evaluation
    subset, consensus distance, the averaged model's accuracy, exchanges so far); ``final`` the
    same measures on the whole test set at the end, plus dropped edges, late joins, bytes sent
    and the first 200 exchanges as ``[time, sender, receiver, ok]``; ``centralized`` the
    baseline's curve.
    """

    config: ConsensusConfig
    topology: Topology
    history: list[dict[str, Any]]
    final: dict[str, Any]
    centralized: list[dict[str, float]] = field(default_factory=list)
    centralized_final: dict[str, float] | None = None
    label_counts: dict[int, list[int]] = field(default_factory=dict)
    node_weights: dict[int, dict[str, np.ndarray]] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)
    wall_time: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(),
            "topology": self.topology.to_dict(),
            "label_counts": {str(k): v for k, v in self.label_counts.items()},
            "epochs": self.history,
            "final": self.final,
            "centralized": self.centralized,
            "centralized_final": self.centralized_final,
            "wall_time_s": self.wall_time,
        }


def node_datasets(
    config: ConsensusConfig,
) -> tuple[list[ArrayDataset], ArrayDataset, int]:
    """Load the dataset and split it among the nodes: ``(per-node train, test, num_classes)``.

    Deterministic in ``config.seed``, so a node process can compute its own share alone.
    """
    train, test = load_dataset(config.dataset, data_dir=config.data_dir, seed=config.seed)
    num_classes = int(max(train.y.max(), test.y.max())) + 1
    if config.train_size is not None and config.train_size < len(train):
        keep = np.random.default_rng([config.seed, 3]).permutation(len(train))[: config.train_size]
        train = train.subset(np.sort(keep))
    parts = partition_indices(
        train.y, config.num_nodes, config.partition, seed=config.seed, **config.partition_params()
    )
    return [train.subset(idx) for idx in parts], test, num_classes


def _seeded_model(config: ConsensusConfig, input_shape: tuple[int, ...], num_classes: int):
    """``config.model`` initialised from ``config.seed``, the process's global RNG untouched (so
    two runs in one process, or a caller's own seeding, never disturb each other)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return make_model(config.model, input_shape, num_classes)


def _test_subset(test: ArrayDataset, size: int | None, seed: int) -> ArrayDataset:
    if size is None or size >= len(test):
        return test
    return test.subset(np.sort(np.random.default_rng([seed, 5]).permutation(len(test))[:size]))


def evaluate_nodes(
    models: Mapping[int, Mapping[str, np.ndarray]],
    test: ArrayDataset,
    adapter: TorchAdapter,
) -> dict[str, Any]:
    """Test metrics of each node's model and of their average, plus the consensus distance.

    ``adapter`` is a scratch model of the same architecture used for evaluation.
    """
    per_node = {}
    for node_id, weights in sorted(models.items()):
        adapter.set_weights(weights)
        per_node[str(node_id)] = adapter.evaluate(test)
    accuracies = [m["accuracy"] for m in per_node.values()]
    ordered = [models[i] for i in sorted(models)]
    adapter.set_weights(mean_weights(ordered))
    return {
        "nodes": per_node,
        "mean_accuracy": float(np.mean(accuracies)),
        "min_accuracy": float(np.min(accuracies)),
        "max_accuracy": float(np.max(accuracies)),
        "mean_loss": float(np.mean([m["loss"] for m in per_node.values()])),
        "consensus_distance": consensus_distance(ordered),
        "average_model": adapter.evaluate(test),
    }


def train_centralized(
    model: nn.Module,
    train: ArrayDataset,
    test: ArrayDataset,
    *,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    seed: int = 0,
) -> list[dict[str, float]]:
    """The baseline: ``model`` trained with plain SGD on the pooled data; test metrics per epoch."""
    adapter = TorchAdapter(model)
    curve = []
    for epoch in range(1, epochs + 1):
        adapter.fit(train, TrainConfig(1, batch_size, "sgd", learning_rate, seed=seed + epoch))
        curve.append({"epoch": epoch, **adapter.evaluate(test)})
    return curve


def run_consensus(
    config: ConsensusConfig | None = None,
    *,
    out_dir: str | os.PathLike | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    join_at: Mapping[int, float] | None = None,
    fail_at: Mapping[int, float] | None = None,
    **overrides: Any,
) -> ConsensusResult:
    """Simulate decentralized training on a graph with asynchronous exchanges, end to end.

    ``run_consensus(algorithm="ecl", topology="ring", num_nodes=8, epochs=10)`` uses
    ``ConsensusConfig``'s defaults for everything not given. ``join_at``/``fail_at`` map node
    ids to the epoch at which a node joins late or dies. With ``out_dir``, ``history.json`` and
    ``accuracy.png`` are written there. ``on_epoch`` gets each epoch's record.
    """
    started = time.perf_counter()
    config = (config or ConsensusConfig()).replace(**overrides)
    graph = config.make_topology()
    algorithm = config.make_algorithm()
    datasets, test, num_classes = node_datasets(config)
    eval_set = _test_subset(test, config.test_size, config.seed)
    input_shape = datasets[0].x.shape[1:]

    template = _seeded_model(config, input_shape, num_classes)
    nodes = {
        i: ConsensusNode(
            i,
            graph.neighbours(i),
            copy.deepcopy(template),
            datasets[i],
            algorithm,
            learning_rate=config.learning_rate,
            batch_size=config.batch_size,
            local_steps=config.local_steps,
            exchange_prob=config.exchange_prob,
            max_failures=config.max_failures,
            seed=config.seed,
            max_message_ratio=config.max_message_ratio,
        )
        for i in range(graph.num_nodes)
    }
    # One epoch of the clock: an average-speed node's pass over its local data.
    epoch_time = float(np.mean([n.steps_per_epoch for n in nodes.values()]))
    simulator = AsyncSimulator(
        nodes,
        seed=config.seed,
        speed_spread=config.speed_spread,
        join_at={i: e * epoch_time for i, e in (join_at or {}).items()},
        fail_at={i: e * epoch_time for i, e in (fail_at or {}).items()},
    )
    scratch = TorchAdapter(copy.deepcopy(template))
    history: list[dict[str, Any]] = []

    def checkpoint(now: float) -> None:
        running = sorted(simulator.running)
        record = {
            "epoch": len(history) + 1,
            "time": now,
            **evaluate_nodes({i: nodes[i].weights() for i in running}, eval_set, scratch),
            "steps": {str(i): nodes[i].steps for i in running},
            "exchanges": sum(e.ok for e in simulator.log),
            "failed_exchanges": sum(not e.ok for e in simulator.log),
        }
        history.append(record)
        if on_epoch is not None:
            on_epoch(record)

    sim_started = time.perf_counter()
    simulator.run(
        config.epochs * epoch_time,
        checkpoints=[e * epoch_time for e in range(1, config.epochs + 1)],
        on_checkpoint=checkpoint,
    )
    simulation_s = time.perf_counter() - sim_started
    running = sorted(simulator.running)
    final = {
        **evaluate_nodes({i: nodes[i].weights() for i in running}, test, scratch),
        "running": running,
        "dropped_edges": {str(i): sorted(nodes[i].dropped) for i in nodes if nodes[i].dropped},
        "joined_from": {str(i): j for i, j in simulator.joined_from.items()},
        "epochs_done": {str(i): nodes[i].epochs_done for i in nodes},
        "bytes_sent": sum(n.bytes_sent for n in nodes.values()),
        "exchanges": sum(e.ok for e in simulator.log),
        "exchange_order": [[e.time, e.initiator, e.peer, e.ok] for e in simulator.log[:200]],
        "simulation_wall_time_s": simulation_s,
    }
    centralized: list[dict[str, float]] = []
    centralized_final = None
    if config.centralized:
        baseline_started = time.perf_counter()
        pooled = ArrayDataset(
            np.concatenate([d.x for d in datasets]), np.concatenate([d.y for d in datasets])
        )
        baseline = copy.deepcopy(template)
        centralized = train_centralized(
            baseline,
            pooled,
            eval_set,
            epochs=config.epochs,
            batch_size=config.batch_size,
            learning_rate=config.learning_rate,
            seed=config.seed,
        )
        centralized_final = TorchAdapter(baseline).evaluate(test)
        centralized_final["wall_time_s"] = time.perf_counter() - baseline_started
    result = ConsensusResult(
        config=config,
        topology=graph,
        history=history,
        final=final,
        centralized=centralized,
        centralized_final=centralized_final,
        label_counts={i: d.label_counts(num_classes).tolist() for i, d in enumerate(datasets)},
        node_weights={i: nodes[i].weights() for i in running},
    )
    result.wall_time = time.perf_counter() - started
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        result.files["history"] = write_json(out / "history.json", result.to_dict())
        result.files["plot"] = plot_runs(
            out / "accuracy.png",
            {config.label: history},
            centralized,
            title=f"{graph.name}, {graph.num_nodes} nodes, {config.dataset}",
        )
    return result
