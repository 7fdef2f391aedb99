"""``run_consensus()``: a whole decentralized run in one call, from plain configuration."""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from numbers import Integral, Real
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from fedfuse._events import logging_events
from fedfuse._settings import Interval, Options, Rule, Settings, SettingsError
from fedfuse.consensus._algorithms import _DUAL_INITS as DUAL_INITS
from fedfuse.consensus._algorithms import ALGORITHMS, DPSGD, ECL, Gossip, make_algorithm
from fedfuse.consensus._data import MAX_NODES, GraphLike, NodeData, NodeSet, as_topology, node_set
from fedfuse.consensus._models import CONSENSUS_MODELS, make_model
from fedfuse.consensus._node import DEFAULT_MAX_MESSAGE_RATIO, ConsensusNode
from fedfuse.consensus._report import consensus_distance, mean_weights, plot_runs, write_json
from fedfuse.consensus._simulation import AsyncSimulator
from fedfuse.consensus._topology import TOPOLOGIES, Topology, make_topology
from fedfuse.data import (
    DATASETS,
    PARTITIONS,
    ArrayDataset,
    FederatedDataset,
    load_dataset,
    partition_indices,
    partition_params,
)
from fedfuse.models import TorchAdapter
from fedfuse.weights import CODECS

__all__ = [
    "BUDGETS",
    "CONSENSUS_PARTITIONS",
    "FLAT_ALIASES",
    "ConsensusConfig",
    "ConsensusResult",
    "evaluate_nodes",
    "node_datasets",
    "prepare_run",
    "run_consensus",
    "train_reference",
    "validation_data",
]

#: Partition schemes a config can name (``group`` needs a key per example: bring the data).
CONSENSUS_PARTITIONS = tuple(p for p in PARTITIONS if p != "group")

#: The one flat alias: the consensus papers speak of classes per node.
FLAT_ALIASES = {"classes_per_node": "classes_per_party"}
# Settings that choose or split the dataset: meaningless when the caller brings the data.
_DATA_SETTINGS = (
    "dataset",
    "data_dir",
    "partition",
    "partition_params",
    "train_size",
    "validation_size",
)
#: ``budget``: what one epoch of a run is (see ``ConsensusConfig``).
BUDGETS = ("equal", "reference")
_GRAPH_SETTINGS = ("topology", "degree")


def _positive_real(closed: str = "neither") -> Interval:
    return Interval(Real, 0, None, closed=closed)


def _is_epoch_list(value: Any) -> bool:
    return isinstance(value, list | tuple) and all(
        isinstance(e, Real) and not isinstance(e, bool) and 0 < e < float("inf") for e in value
    )


def _is_topology(value: Any) -> bool:
    return isinstance(value, str) and (value in TOPOLOGIES or Path(value).is_file())


@dataclass(frozen=True)
class ConsensusConfig(Settings):
    """Everything ``run_consensus`` needs, as plain data (what a TOML file holds).

    Graph: ``topology`` is ``ring``, ``double_ring``, ``torus``, ``complete``,
    ``random_regular`` (uses ``degree``) or a path to an edge-list file (or bring your own graph:
    ``run_consensus(graph=...)``).
    Data: ``partition`` is ``classes``, ``dirichlet``, ``iid``, ``shards`` or ``quantity``, with
    the partitioner's own parameters in ``partition_params`` (``{"classes_per_party": 5}``,
    ``{"alpha": 0.3}``; see ``fedfuse.data.partition_params``), the same as ``DataSpec``'s; the
    partitioner's defaults fill in what is not given. ``train_size`` keeps a seeded random
    subset of the training set, ``test_size`` a subset of the test set for the per-epoch curves
    (the final numbers always use the whole test set). Or bring your own node data:
    ``run_consensus(data=...)``.
    Algorithm: ``algorithm`` is ``ecl`` (``exchange`` ``pdmm``/``admm``, ``eta``, ``rho``,
    ``eta_scaling``, ``dual_init``), ``ecl-isvr``, ``gossip`` or ``dpsgd``; SGD step
    ``learning_rate``.
    Compression (``ecl``/``ecl-isvr``: C-ECL; ``gossip``: CHOCO-style): ``compression`` is
    ``none``, ``fp16``, ``int8`` or ``topk`` (keeping ``topk_fraction`` of each tensor), with
    step ``compression_step`` (None: the algorithm's default).
    Schedule: a node exchanges after every ``local_steps`` minibatch steps, on each edge with
    probability ``exchange_prob``; node rates spread by ``speed_spread`` (see
    ``AsyncSimulator``); an edge is dropped after ``max_failures`` failed exchanges. Step decay:
    the step size is multiplied by ``lr_decay`` at each epoch of ``lr_decay_epochs`` (every node
    counting its own steps, and the centralized reference its own epochs).
    Trust: a node refuses a neighbour's message whose norm exceeds ``max_message_ratio`` times
    its own model's (see ``ConsensusNode``; 0 turns the bound off).
    Budget: ``epochs`` is measured on the simulated clock, and ``budget`` says how long an epoch
    is. ``"equal"``: the time an average-speed node takes for one pass over its own data, so all
    nodes together compute as many gradients as the centralized reference does in the same
    number of epochs (equal total compute). ``"reference"``: the time an average-speed node takes
    for as many steps as the reference takes for one pass over the pooled data, so every node
    computes as many gradients as the reference (the budget of NTT's experiments; 8 nodes
    compute 8x the reference's gradients). The reference is always ``epochs`` passes over the
    pooled training data with the same batch size and step-decay schedule, taken by a node
    with no neighbours (the same step code as the nodes').
    Validation: ``validation_size`` holds a seeded subset of the training set out before it is
    split (no node trains on it); every epoch's record and the final one then report the nodes'
    and the reference's accuracy on it (``"validation"``), for choosing a step size without
    looking at the test set.

    Flat names: ``from_dict`` and ``replace`` (and so ``run_consensus(**overrides)``, a TOML
    file, the command line) also take the chosen partition's parameters by their own names
    (``alpha=0.3``, ``classes_per_party=5``), and ``classes_per_node`` as an alias of
    ``classes_per_party``. ``replace(partition=...)`` of another scheme starts its
    ``partition_params`` afresh (the old scheme's do not carry over).
    """

    kind: ClassVar[str] = "consensus"
    constraints: ClassVar[dict[str, list[Any]]] = {
        "topology": [
            Rule(_is_topology, f"one of {', '.join(map(repr, TOPOLOGIES))} or an edge-list file")
        ],
        "num_nodes": [Interval(Integral, 2, MAX_NODES)],
        "degree": [Interval(Integral, 1)],
        "dataset": [Options(DATASETS)],
        "data_dir": [None, str],
        "train_size": [None, Interval(Integral, 1)],
        "validation_size": [None, Interval(Integral, 1)],
        "test_size": [None, Interval(Integral, 1)],
        "model": [Options(CONSENSUS_MODELS)],
        "partition": [Options(CONSENSUS_PARTITIONS)],
        "partition_params": [dict],
        "algorithm": [Options(ALGORITHMS)],
        "exchange": [Options(("admm", "pdmm"))],
        "eta": [None, _positive_real()],
        "rho": [_positive_real("left")],
        "eta_scaling": [Options(("none", "sqrt_fan_in"))],
        "dual_init": [Options(DUAL_INITS)],
        "compression": [Options(CODECS)],
        "topk_fraction": [Interval(Real, 0, 1, closed="right")],
        "compression_step": [None, Interval(Real, 0, 1, closed="right")],
        "budget": [Options(BUDGETS)],
        "epochs": [Interval(Integral, 1)],
        "batch_size": [Interval(Integral, 1)],
        "learning_rate": [_positive_real()],
        "lr_decay_epochs": [Rule(_is_epoch_list, "a list of epochs > 0")],
        "lr_decay": [Interval(Real, 0, 1, closed="right")],
        "local_steps": [Interval(Integral, 1)],
        "exchange_prob": [Interval(Real, 0, 1)],
        "speed_spread": [Interval(Real, 0, 1, closed="left")],
        "max_failures": [Interval(Integral, 1)],
        "max_message_ratio": [_positive_real("left")],
        "centralized": [bool],
        "seed": [Interval(Integral, 0)],
    }

    topology: str = "ring"
    num_nodes: int = 8
    degree: int = 3
    dataset: str = "digits"
    data_dir: str | None = None
    train_size: int | None = None
    validation_size: int | None = None
    test_size: int | None = None
    model: str = "mlp"
    partition: str = "classes"
    partition_params: dict[str, Any] = field(default_factory=dict)
    algorithm: str = "ecl"
    exchange: str = "admm"
    eta: float | None = None
    rho: float = 0.0
    eta_scaling: str = "none"
    dual_init: str = "agreement"
    compression: str = "none"
    topk_fraction: float = 0.01
    compression_step: float | None = None
    budget: str = "equal"
    epochs: int = 20
    batch_size: int = 16
    learning_rate: float = 0.1
    lr_decay_epochs: list[float] = field(default_factory=list)
    lr_decay: float = 0.1
    local_steps: int = 4
    exchange_prob: float = 1.0
    speed_spread: float = 0.5
    max_failures: int = 3
    max_message_ratio: float = DEFAULT_MAX_MESSAGE_RATIO
    centralized: bool = True
    seed: int = 0

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], *, path: str = "") -> ConsensusConfig:
        """Build from a mapping of fields and flat names (see the class docstring)."""
        if not isinstance(values, Mapping):
            return super().from_dict(values, path=path)
        names = [f.name for f in dataclasses.fields(cls)]
        fields = {k: v for k, v in values.items() if k in names}
        flat = {k: v for k, v in values.items() if k not in names}
        if not flat:
            return super().from_dict(fields, path=path)
        partition = fields.get("partition", cls.partition)
        takes = partition_params(partition) if partition in CONSENSUS_PARTITIONS else ()
        unknown = sorted((k for k in flat if FLAT_ALIASES.get(k, k) not in takes), key=str)
        if unknown:
            raise SettingsError(
                f"unknown {path or cls.kind} setting(s) {unknown}; known: {', '.join(names)}, "
                f"and the parameters of partition {partition!r}: {', '.join(takes) or '(none)'}"
                + (" (classes_per_node is an alias of classes_per_party)" if takes else "")
            )
        both = [a for a, name in FLAT_ALIASES.items() if a in flat and name in flat]
        if both:
            raise SettingsError(f"give {both[0]} or {FLAT_ALIASES[both[0]]}, not both")
        params = dict(fields.get("partition_params") or {})
        params.update({FLAT_ALIASES.get(k, k): v for k, v in flat.items()})
        return super().from_dict({**fields, "partition_params": params}, path=path)

    def replace(self, **changes: Any) -> ConsensusConfig:
        """A copy with ``changes`` (fields or flat names; see the class docstring)."""
        new_scheme = changes.get("partition", self.partition) != self.partition
        if new_scheme and "partition_params" not in changes:
            changes = {"partition_params": {}, **changes}
        return super().replace(**changes)

    def check_together(self) -> list[str]:
        takes = partition_params(self.partition)
        unknown = sorted(set(self.partition_params) - set(takes))
        if unknown:
            return [
                f"partition_params: partition {self.partition!r} takes "
                f"{', '.join(takes) or '(none)'}; not {unknown}"
            ]
        try:
            self.make_algorithm()
        except ValueError as exc:
            return [f"algorithm: {exc}"]
        return []

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
            dual_init=self.dual_init,
            compression=self.compression,
            topk_fraction=self.topk_fraction,
            compression_step=self.compression_step,
        )
        if isinstance(algorithm, ECL):
            algorithm.validate(self.local_steps)
        return algorithm

    def make_node(
        self,
        node_id: int,
        peers: Sequence[int],
        module: torch.nn.Module,
        data: ArrayDataset,
        *,
        epoch_steps: float | None = None,
        algorithm: ECL | Gossip | DPSGD | None = None,
    ) -> ConsensusNode:
        """A node trained by these settings (step size, schedule, batches, exchanges, trust).

        ``epoch_steps``: the node's steps per epoch of the run (see ``epoch_steps``).
        """
        return ConsensusNode(
            node_id,
            peers,
            module,
            data,
            algorithm or self.make_algorithm(),
            learning_rate=self.learning_rate,
            batch_size=self.batch_size,
            local_steps=self.local_steps,
            exchange_prob=self.exchange_prob,
            max_failures=self.max_failures,
            seed=self.seed,
            max_message_ratio=self.max_message_ratio,
            epoch_steps=epoch_steps,
            lr_decay_epochs=tuple(self.lr_decay_epochs),
            lr_decay=self.lr_decay,
        )

    def epoch_steps(self, sizes: Sequence[int]) -> float:
        """Steps an average-speed node takes per epoch, given every node's number of examples
        (see ``budget``): the mean of the nodes' full batches per pass, or the pooled data's."""
        if self.budget == "reference":
            return float(max(sum(sizes) // self.batch_size, 1))
        return float(np.mean([max(n // self.batch_size, 1) for n in sizes]))

    @property
    def label(self) -> str:
        """A short name for plots: algorithm (and exchange rule for ECL)."""
        return (
            f"{self.algorithm} ({self.exchange})"
            if self.algorithm.startswith("ecl")
            else self.algorithm
        )


def settle(
    config: ConsensusConfig | None,
    overrides: Mapping[str, Any],
    *,
    own_data: bool = False,
    num_nodes: int | None = None,
    own_graph: bool = False,
) -> ConsensusConfig:
    """``config`` with ``overrides``, checked once, for a run whose nodes may be the caller's.

    With ``own_data`` the settings that choose the dataset are refused in ``overrides`` (they
    would be ignored); with ``own_graph`` those of the built-in graphs; ``num_nodes`` (the
    caller's count of nodes) replaces the config's, and a different one in ``overrides`` is
    an error.
    """
    fields = {f.name for f in dataclasses.fields(ConsensusConfig)}
    if own_data:
        refused = [k for k in overrides if k in _DATA_SETTINGS or k not in fields]
        if refused:
            raise ValueError(
                f"{', '.join(refused)} choose or split a dataset; they do not apply to node "
                "data you bring (data=, --node-data)"
            )
    if own_graph:
        refused = [k for k in overrides if k in _GRAPH_SETTINGS]
        if refused:
            raise ValueError(f"give {', '.join(refused)} or your own graph (graph=), not both")
    if num_nodes is not None:
        asked = overrides.get("num_nodes", num_nodes)
        if asked != num_nodes:
            raise ValueError(f"num_nodes={asked}, but the data/graph you gave has {num_nodes}")
        overrides = {**overrides, "num_nodes": num_nodes}
    config = (config or ConsensusConfig()).replace(**overrides)
    config.check()
    return config


@dataclass
class ConsensusResult:
    """What a decentralized run produced.

    ``history`` has one record per epoch (per-node and mean test accuracy on the evaluation
    subset, consensus distance, the averaged model's accuracy, exchanges so far); ``final`` the
    same measures on the whole test set at the end, plus dropped edges, late joins, bytes sent
    and the first 200 exchanges as ``[time, sender, receiver, ok]``; ``centralized`` the
    baseline's curve. Nodes are named by their ids (``topology.node_id(i)``); ``own_data``
    says that the caller brought them (``config``'s dataset settings were not used).
    """

    config: ConsensusConfig
    topology: Topology
    history: list[dict[str, Any]]
    final: dict[str, Any]
    centralized: list[dict[str, float]] = field(default_factory=list)
    centralized_final: dict[str, float] | None = None
    label_counts: dict[Any, list[int]] = field(default_factory=dict)
    node_weights: dict[Any, dict[str, np.ndarray]] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)
    wall_time: float = 0.0
    own_data: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(),
            "own_data": self.own_data,
            "topology": self.topology.to_dict(),
            "label_counts": {str(k): v for k, v in self.label_counts.items()},
            "epochs": self.history,
            "final": self.final,
            "centralized": self.centralized,
            "centralized_final": self.centralized_final,
            "wall_time_s": self.wall_time,
        }


def _split_dataset(
    config: ConsensusConfig,
) -> tuple[ArrayDataset, ArrayDataset | None, ArrayDataset]:
    """``config``'s dataset as ``(train, validation or None, test)``, seeded."""
    train, test = load_dataset(config.dataset, data_dir=config.data_dir, seed=config.seed)
    if config.train_size is not None and config.train_size < len(train):
        keep = np.random.default_rng([config.seed, 3]).permutation(len(train))[: config.train_size]
        train = train.subset(np.sort(keep))
    validation = None
    if config.validation_size is not None:
        if config.validation_size >= len(train):
            raise ValueError(
                f"validation_size={config.validation_size} leaves no training data "
                f"(the training set has {len(train)} examples)"
            )
        order = np.random.default_rng([config.seed, 13]).permutation(len(train))
        validation = train.subset(np.sort(order[: config.validation_size]))
        train = train.subset(np.sort(order[config.validation_size :]))
    return train, validation, test


def node_datasets(
    config: ConsensusConfig,
) -> tuple[list[ArrayDataset], ArrayDataset, int]:
    """Load the dataset and split it among the nodes: ``(per-node train, test, num_classes)``.

    Deterministic in ``config.seed``, so a node process can compute its own share alone. The
    ``validation_size`` examples held out (``validation_data``) are in no node's share.
    """
    datasets, _, test, num_classes = _node_split(config)
    return datasets, test, num_classes


def _node_split(
    config: ConsensusConfig,
) -> tuple[list[ArrayDataset], ArrayDataset | None, ArrayDataset, int]:
    """``(per-node train, validation or None, test, num_classes)`` from one read of the data."""
    train, validation, test = _split_dataset(config)
    num_classes = int(max(train.y.max(), test.y.max())) + 1
    parts = partition_indices(
        train.y, config.num_nodes, config.partition, seed=config.seed, **config.partition_params
    )
    return [train.subset(idx) for idx in parts], validation, test, num_classes


def validation_data(config: ConsensusConfig) -> ArrayDataset | None:
    """The examples ``validation_size`` holds out of the training set (None without it)."""
    return _split_dataset(config)[1] if config.validation_size is not None else None


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

    ``adapter`` is a scratch model of the same architecture used for evaluation. Nodes are
    reported (by ``str(node_id)``) in the order of ``models``.
    """
    per_node = {}
    for node_id, weights in models.items():
        adapter.set_weights(weights)
        per_node[str(node_id)] = adapter.evaluate(test)
    accuracies = [m["accuracy"] for m in per_node.values()]
    ordered = list(models.values())
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


def prepare_run(
    config: ConsensusConfig | None,
    overrides: Mapping[str, Any],
    *,
    data: Mapping[Any, NodeData] | FederatedDataset | None = None,
    test: Any = None,
    graph: GraphLike | None = None,
) -> tuple[ConsensusConfig, Topology, NodeSet | None]:
    """The checked config, the graph (nodes named by the caller's ids) and the caller's nodes
    (``None``: ``config``'s dataset and partition give them)."""
    if test is not None and data is None:
        raise ValueError("test= is the test set of the node data you bring; give data= too")
    nodes = node_set(data, test) if data is not None else None
    topology = as_topology(graph, nodes.ids if nodes else None) if graph is not None else None
    count = len(nodes.ids) if nodes else topology.num_nodes if topology else None
    config = settle(
        config,
        overrides,
        own_data=nodes is not None,
        num_nodes=count,
        own_graph=topology is not None,
    )
    if topology is None:
        topology = config.make_topology()
        if nodes is not None and nodes.ids != list(range(len(nodes.ids))):
            topology = dataclasses.replace(topology, node_ids=tuple(nodes.ids))
    return config, topology, nodes


def _accuracies(
    models: Mapping[Any, Mapping[str, np.ndarray]], data: ArrayDataset, adapter: TorchAdapter
) -> dict[str, float]:
    """The nodes' mean and worst accuracy on ``data`` (the validation split)."""
    accuracies = []
    for weights in models.values():
        adapter.set_weights(weights)
        accuracies.append(adapter.evaluate(data)["accuracy"])
    return {"mean_accuracy": float(np.mean(accuracies)), "min_accuracy": float(np.min(accuracies))}


def train_reference(
    config: ConsensusConfig,
    pooled: ArrayDataset,
    module: torch.nn.Module,
    test: ArrayDataset,
    validation: ArrayDataset | None = None,
) -> tuple[list[dict[str, float]], ConsensusNode]:
    """The centralized reference: ``module`` trained ``config.epochs`` passes over ``pooled``
    by a node with no neighbours (the nodes' own step code: same batches, step size and decay
    schedule); returns its curve on ``test`` (and ``validation``) after each epoch, and the node.
    """
    node = config.make_node(0, (), module, pooled, algorithm=Gossip())
    curve: list[dict[str, float]] = []
    started = time.perf_counter()
    for epoch in range(1, config.epochs + 1):
        while node.steps < math.ceil(epoch * node.epoch_steps):
            node.step()
        record = {"epoch": epoch, "steps": node.steps, **node.evaluate(test)}
        if validation is not None:
            record["validation_accuracy"] = node.evaluate(validation)["accuracy"]
        record["wall_s"] = time.perf_counter() - started
        curve.append(record)
    return curve, node


def _index_of(topology: Topology, times: Mapping[Any, float] | None, what: str) -> dict[int, float]:
    index = {str(topology.node_id(i)): i for i in range(topology.num_nodes)}
    out = {}
    for node_id, epoch in (times or {}).items():
        if str(node_id) not in index:
            raise ValueError(f"{what}: no node {node_id!r} in the graph")
        out[index[str(node_id)]] = epoch
    return out


def run_consensus(
    config: ConsensusConfig | None = None,
    *,
    data: Mapping[Any, NodeData] | FederatedDataset | None = None,
    test: Any = None,
    graph: GraphLike | None = None,
    out_dir: str | os.PathLike | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    join_at: Mapping[Any, float] | None = None,
    fail_at: Mapping[Any, float] | None = None,
    **overrides: Any,
) -> ConsensusResult:
    """Simulate decentralized training on a graph with asynchronous exchanges, end to end.

    ``run_consensus(algorithm="ecl", topology="ring", num_nodes=8, epochs=10)`` uses
    ``ConsensusConfig``'s defaults for everything not given (flat partition parameters such as
    ``classes_per_party=5`` or ``alpha=0.3`` included).

    Bring your own nodes and graph instead of a named dataset and topology:

    - ``data``: node id -> ``(x, y)``, ``ArrayDataset`` or ``PartyData`` (or a
      ``FederatedDataset``, or ``load_node_data(folder)``); ids are integers or strings.
      ``test`` is the test set every node is measured on (``(x, y)`` or ``ArrayDataset``);
      without it, the ``FederatedDataset``'s own or the nodes' test splits pooled.
    - ``graph``: a ``Topology``, an adjacency mapping ``{id: [neighbour ids]}``, an edge list
      ``[(id, id), ...]`` or a JSON file of either, over the data's ids (see ``as_topology``).

    Results are keyed by the node ids. ``join_at``/``fail_at`` map node ids to the epoch at
    which a node joins late or dies. With ``out_dir``, ``history.json`` and ``accuracy.png``
    are written there at the end, and ``events.jsonl`` gets each epoch's record as it ends
    (for ``fedfuse dashboard``). ``on_epoch`` gets each epoch's record.

    Raises:
        SettingsError: a setting out of range (named), or one that does not apply (a dataset
            setting with ``data``, a topology with ``graph``).
        ValueError: data or graph that does not fit (the node is named).
    """
    started = time.perf_counter()
    config, graph_, own = prepare_run(config, overrides, data=data, test=test, graph=graph)
    on_epoch = logging_events(out_dir, on_epoch)
    algorithm = config.make_algorithm()
    if own is not None:
        datasets, test_set, num_classes = own.train, own.test, own.num_classes
        validation = None
    else:
        datasets, validation, test_set, num_classes = _node_split(config)
    name = graph_.node_id
    eval_set = _test_subset(test_set, config.test_size, config.seed)
    input_shape = datasets[0].x.shape[1:]
    starts = _index_of(graph_, join_at, "join_at")
    deaths = _index_of(graph_, fail_at, "fail_at")

    template = _seeded_model(config, input_shape, num_classes)
    # One epoch of the clock: what an average-speed node computes in one epoch (``budget``).
    epoch_time = config.epoch_steps([len(d) for d in datasets])
    nodes = {
        i: config.make_node(
            i,
            graph_.neighbours(i),
            copy.deepcopy(template),
            datasets[i],
            epoch_steps=epoch_time,
            algorithm=algorithm,
        )
        for i in range(graph_.num_nodes)
    }
    simulator = AsyncSimulator(
        nodes,
        seed=config.seed,
        speed_spread=config.speed_spread,
        join_at={i: e * epoch_time for i, e in starts.items()},
        fail_at={i: e * epoch_time for i, e in deaths.items()},
    )
    scratch = TorchAdapter(copy.deepcopy(template))
    history: list[dict[str, Any]] = []

    def models(running: list[int]) -> dict[Any, dict[str, np.ndarray]]:
        return {name(i): nodes[i].weights() for i in running}

    def checkpoint(now: float) -> None:
        running = sorted(simulator.running)
        record = {
            "epoch": len(history) + 1,
            "time": now,
            "wall_s": time.perf_counter() - sim_started,
            **evaluate_nodes(models(running), eval_set, scratch),
            "steps": {str(name(i)): nodes[i].steps for i in running},
            "exchanges": sum(e.ok for e in simulator.log),
            "failed_exchanges": sum(not e.ok for e in simulator.log),
            "bytes_sent": sum(n.bytes_sent for n in nodes.values()),
        }
        if validation is not None:
            record["validation"] = _accuracies(models(running), validation, scratch)
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
        **evaluate_nodes(models(running), test_set, scratch),
        **(
            {"validation": _accuracies(models(running), validation, scratch)}
            if validation is not None
            else {}
        ),
        "running": [name(i) for i in running],
        "dropped_edges": {
            str(name(i)): [name(j) for j in sorted(n.dropped)]
            for i, n in nodes.items()
            if n.dropped
        },
        "joined_from": {str(name(i)): name(j) for i, j in simulator.joined_from.items()},
        "epochs_done": {str(name(i)): n.epochs_done for i, n in nodes.items()},
        "bytes_sent": sum(n.bytes_sent for n in nodes.values()),
        "refused_messages": sum(n.refused for n in nodes.values()),
        "exchanges": sum(e.ok for e in simulator.log),
        "exchange_order": [
            [e.time, name(e.initiator), name(e.peer), e.ok] for e in simulator.log[:200]
        ],
        "simulation_wall_time_s": simulation_s,
    }
    centralized: list[dict[str, float]] = []
    centralized_final = None
    if config.centralized:
        baseline_started = time.perf_counter()
        pooled = ArrayDataset(
            np.concatenate([d.x for d in datasets]), np.concatenate([d.y for d in datasets])
        )
        centralized, reference = train_reference(
            config, pooled, copy.deepcopy(template), eval_set, validation
        )
        centralized_final = reference.evaluate(test_set)
        if validation is not None:
            centralized_final["validation_accuracy"] = reference.evaluate(validation)["accuracy"]
        centralized_final["wall_time_s"] = time.perf_counter() - baseline_started
    result = ConsensusResult(
        config=config,
        topology=graph_,
        history=history,
        final=final,
        centralized=centralized,
        centralized_final=centralized_final,
        label_counts={
            name(i): d.label_counts(num_classes).tolist() for i, d in enumerate(datasets)
        },
        node_weights=models(running),
        own_data=own is not None,
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
            title=f"{graph_.name}, {graph_.num_nodes} nodes, "
            + ("own data" if own is not None else config.dataset),
        )
    return result
