"""Node processes: one ``fedfuse node`` per node, and a launcher for a whole local graph.

``node_main`` is what ``fedfuse node`` runs: read this node's ``.npz`` (``--data``) or build its
share of the config's dataset, build its model (the same seeded initialisation every node
computes), serve, wait for the neighbours, train, write ``node_<id>.json`` and
``node_<id>.safetensors``, say goodbye.

``LocalGraph`` starts one such process per node of a topology on 127.0.0.1 (free ports), can
kill or inspect them, waits for them and merges their results: the way to try a decentralized
run as real processes on one machine (``fedfuse consensus --processes``), on the config's data
and topology or on your own (``node_data``: one ``.npz`` per node, handed to its process;
``graph``). Its nodes share a secret drawn for the run, handed to each child in its environment
(``NODE_TOKEN_ENV``), never on a command line (which every user of the machine can read in
``ps``) or in ``graph.json``.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedfuse.consensus._data import GraphLike, as_dataset
from fedfuse.consensus._peer import PeerNode
from fedfuse.consensus._report import consensus_distance, mean_weights, plot_runs, write_json
from fedfuse.consensus._run import (
    ConsensusConfig,
    _seeded_model,
    _test_subset,
    node_datasets,
    prepare_run,
    train_reference,
)
from fedfuse.data import ArrayDataset, load_party_npz
from fedfuse.models import TorchAdapter
from fedfuse.weights import load_weights, save_weights

__all__ = ["NODE_TOKEN_ENV", "LocalGraph", "NodeOptions", "node_main", "read_graph"]

NODE_TOKEN_ENV = "FEDFUSE_NODE_TOKEN"
"""The environment variable a ``fedfuse node`` reads its token from."""


@dataclass(frozen=True)
class NodeOptions:
    """How one node process runs (its share of a ``ConsensusConfig`` plus its network).

    ``data`` is a party ``.npz`` file (``x_train, y_train, x_test, y_test``; the node reports
    its accuracy on its own test split); without it the node computes its own share of
    ``config``'s dataset and partition (the same for every node, by seed). With ``.npz`` data
    give ``num_classes`` (every node must build the same model) unless every node holds the top
    class.
    ``insecure`` lets a node without a ``token`` listen on a non-loopback ``host``.
    ``epoch_steps`` is how many steps make one of the run's epochs (``ConsensusConfig.budget``;
    ``LocalGraph`` works it out from every node's data); None: from ``config``'s own dataset
    split, or with ``data``, one pass over the node's own data.
    """

    node_id: int
    peers: Mapping[int, str]
    config: ConsensusConfig
    port: int = 0
    host: str = "127.0.0.1"
    data: str | None = None
    num_classes: int | None = None
    join: bool = False
    step_delay: float = 0.0
    linger: float = 30.0
    startup_timeout: float = 60.0
    timeout: float = 10.0
    token: str | None = field(default=None, repr=False)
    insecure: bool = False
    out_dir: str = "."
    epoch_steps: float | None = None


def _node_data(options: NodeOptions) -> tuple[ArrayDataset, ArrayDataset, int, float | None]:
    """The node's ``(train, test, num_classes, epoch_steps)``."""
    config = options.config
    if options.data is not None:
        party = load_party_npz(options.data)
        if party.test is None:
            raise ValueError(f"{options.data}: a node needs x_test/y_test to report its accuracy")
        train = as_dataset(party.train, f"{options.data}: training data")
        test = as_dataset(party.test, f"{options.data}: test data")
        top = int(max(train.y.max(), test.y.max())) + 1
        if options.num_classes is not None and top > options.num_classes:
            raise ValueError(
                f"{options.data}: label {top - 1} is not below num_classes={options.num_classes}"
            )
        return train, test, options.num_classes or top, options.epoch_steps
    datasets, test, num_classes = node_datasets(config)
    if not 0 <= options.node_id < len(datasets):
        raise ValueError(f"node id {options.node_id} is not in 0..{len(datasets) - 1}")
    epoch_steps = options.epoch_steps or config.epoch_steps([len(d) for d in datasets])
    return datasets[options.node_id], test, num_classes, epoch_steps


def _refuse_compression(config: ConsensusConfig) -> None:
    if config.compression != "none":
        raise ValueError(
            f"compression={config.compression!r} runs in the simulator only: both ends of an "
            "edge keep a copy of what the other holds, and over HTTP a lost reply would leave "
            "the two copies apart for good"
        )


def node_main(options: NodeOptions) -> dict[str, Any]:
    """Run one node process to the end; returns (and writes) its report."""
    config = options.config
    config.check()
    _refuse_compression(config)
    started = time.time()
    train, test, num_classes, epoch_steps = _node_data(options)
    module = _seeded_model(config, train.x.shape[1:], num_classes)
    node = config.make_node(
        options.node_id, sorted(options.peers), module, train, epoch_steps=epoch_steps
    )
    out = Path(options.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    peer = PeerNode(
        node,
        options.peers,
        host=options.host,
        port=options.port,
        timeout=options.timeout,
        token=options.token,
        insecure=options.insecure,
    ).start()
    try:
        if options.join:
            peer.join()
        else:
            peer.wait_for_peers(options.startup_timeout)
        history = peer.train(
            config.epochs,
            test=_test_subset(test, config.test_size, config.seed),
            step_delay=options.step_delay,
        )
        final = node.evaluate(test)
        save_weights(out / f"node_{options.node_id}.safetensors", node.weights())
        report = {
            "node": options.node_id,
            "address": peer.address,
            "peers": {str(k): v for k, v in options.peers.items()},
            "history": history,
            "final": final,
            "steps": node.steps,
            "num_examples": node.num_examples,
            "dropped": sorted(node.dropped),
            "joined_from": peer.joined_from,
            "exchanges": node.exchanges,
            "bytes_sent": node.bytes_sent,
            "refused": node.refused,
            "events": peer.events,
            "wall_time_s": time.time() - started,
        }
        write_json(out / f"node_{options.node_id}.json", report)
        peer.finish(options.linger)
    finally:
        with contextlib.suppress(OSError):
            peer.stop()
    return report


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _src_path() -> str:
    """The folder holding the ``fedfuse`` package, so children import this very copy."""
    return str(Path(__file__).resolve().parents[2])


@dataclass
class LocalGraph:
    """One ``fedfuse node`` process per node of ``config``'s topology, on this machine.

    Args:
        config: the run (topology, data, model, algorithm, epochs...).
        out_dir: where ``graph.json``, node reports, weights and logs go.
        step_delay: seconds of sleep per step, divided by each node's seeded rate (drawn like
            the simulator's, ``U[1 - speed_spread, 1 + speed_spread]``): emulated slow machines.
        late: node ids started only when ``start_late(i)`` is called (they join from a
            neighbour's model).
        node_data: your own nodes, node id -> the path of its ``.npz`` (``x_train, y_train,
            x_test, y_test``), instead of ``config``'s dataset: each process is given its file
            (and the number of classes, so every node builds the same model).
        graph: your own graph (see ``as_topology``) instead of ``config.topology``.

    Processes are numbered ``0 .. n-1`` in the nodes' natural order (``topology.node_id(i)``
    names node ``i``; ``graph.json`` lists the names). ``token`` is the run's secret
    (``secrets.token_urlsafe(32)``, drawn per graph).
    """

    config: ConsensusConfig
    out_dir: str | os.PathLike
    step_delay: float = 0.0
    late: Sequence[int] = ()
    host: str = "127.0.0.1"
    linger: float = 30.0
    timeout: float = 10.0
    python: str = sys.executable
    node_data: Mapping[Any, str | os.PathLike] | None = None
    graph: GraphLike | None = None
    processes: dict[int, subprocess.Popen] = field(default_factory=dict, init=False)
    token: str = field(default_factory=lambda: secrets.token_urlsafe(32), init=False, repr=False)

    def __post_init__(self) -> None:
        self.out = Path(self.out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        files = {k: Path(v) for k, v in (self.node_data or {}).items()}
        data = {k: load_party_npz(path) for k, path in files.items()} if files else None
        # Checked here, once, rather than in every process.
        self.config, self.topology, self.nodes = prepare_run(
            self.config, {}, data=data, graph=self.graph
        )
        _refuse_compression(self.config)
        self.data_files = [files[i] for i in self.nodes.ids] if self.nodes else None
        self.addresses = {
            i: f"http://{self.host}:{_free_port(self.host)}" for i in range(self.topology.num_nodes)
        }
        rates = np.random.default_rng([self.config.seed, 11]).uniform(
            1 - self.config.speed_spread, 1 + self.config.speed_spread, self.topology.num_nodes
        )
        self.step_delays = {i: self.step_delay / float(r) for i, r in enumerate(rates)}
        shares = self.nodes.train if self.nodes else node_datasets(self.config)[0]
        sizes = [len(d) for d in shares]
        self.epoch_steps = self.config.epoch_steps(sizes)
        self.graph_file = self.out / "graph.json"
        write_json(
            self.graph_file,
            {
                "config": self.config.to_dict(),
                "topology": self.topology.to_dict(),
                "addresses": {str(i): a for i, a in self.addresses.items()},
                "epoch_steps": self.epoch_steps,
            },
        )

    def command(self, node_id: int) -> list[str]:
        own = []
        if self.data_files is not None and self.nodes is not None:
            own = ["--data", str(self.data_files[node_id])]
            own += ["--num-classes", str(self.nodes.num_classes)]
        return [
            self.python,
            "-m",
            "fedfuse",
            "node",
            "--graph",
            str(self.graph_file),
            "--id",
            str(node_id),
            "--out",
            str(self.out),
            "--step-delay",
            f"{self.step_delays[node_id]:.6f}",
            "--linger",
            str(self.linger),
            "--timeout",
            str(self.timeout),
            *(["--join"] if node_id in self.late else []),
            *own,
        ]

    def _spawn(self, node_id: int) -> None:
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(
                p for p in (_src_path(), os.environ.get("PYTHONPATH")) if p
            ),
            NODE_TOKEN_ENV: self.token,
        }
        log = open(self.out / f"node_{node_id}.log", "wb")  # noqa: SIM115 - closed by the child
        self.processes[node_id] = subprocess.Popen(
            self.command(node_id), stdout=log, stderr=subprocess.STDOUT, env=env
        )
        log.close()

    def start(self) -> LocalGraph:
        """Start every node that is not in ``late``."""
        for i in range(self.topology.num_nodes):
            if i not in self.late:
                self._spawn(i)
        return self

    def start_late(self, node_id: int) -> None:
        self._spawn(node_id)

    def status(self, node_id: int, timeout: float = 2.0) -> dict[str, Any] | None:
        """The node's ``/status`` JSON, or None if it does not answer."""
        try:
            with urllib.request.urlopen(self.addresses[node_id] + "/status", timeout=timeout) as r:
                return json.loads(r.read())
        except OSError:
            return None

    def wait_until(self, node_id: int, steps: int, timeout: float = 120.0) -> dict[str, Any]:
        """Block until node ``node_id`` has done at least ``steps`` steps; returns its status."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.status(node_id)
            if status is not None and status["steps"] >= steps:
                return status
            if self.processes[node_id].poll() is not None:
                raise RuntimeError(
                    f"node {node_id} exited early; see {self.out}/node_{node_id}.log"
                )
            time.sleep(0.1)
        raise TimeoutError(f"node {node_id} did not reach {steps} steps in {timeout} s")

    def kill(self, node_id: int) -> None:
        """Kill a node process abruptly (SIGKILL), as a crash would."""
        self.processes[node_id].kill()
        self.processes[node_id].wait()

    def wait(self, timeout: float = 600.0) -> dict[int, int]:
        """Wait for every started process; returns node id -> exit code."""
        deadline = time.monotonic() + timeout
        codes = {}
        for i, proc in sorted(self.processes.items()):
            codes[i] = proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
        return codes

    def stop(self) -> None:
        """Terminate whatever still runs."""
        for proc in self.processes.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.processes.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def __enter__(self) -> LocalGraph:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def collect(self, *, centralized: bool | None = None) -> dict[str, Any]:
        """Merge the node reports that exist into one run report, written as ``history.json``.

        Per epoch: mean, worst and best node accuracy over the nodes that reached it (each
        node counts its own epochs); at the end: every finished node's accuracy on the whole
        test set, their mean, and the consensus distance of their final models.
        """
        reports = {}
        for i in range(self.topology.num_nodes):
            path = self.out / f"node_{i}.json"
            if path.exists():
                reports[i] = json.loads(path.read_text())
        if not reports:
            raise RuntimeError(f"no node finished; see the logs in {self.out}")
        models = {i: load_weights(self.out / f"node_{i}.safetensors") for i in reports}
        epochs = []
        for e in range(1, self.config.epochs + 1):
            accs = [
                r["accuracy"] for rep in reports.values() for r in rep["history"] if r["epoch"] == e
            ]
            if accs:
                epochs.append(
                    {
                        "epoch": e,
                        "mean_accuracy": float(np.mean(accs)),
                        "min_accuracy": float(np.min(accs)),
                        "max_accuracy": float(np.max(accs)),
                        "nodes_reporting": len(accs),
                    }
                )
        ordered = [models[i] for i in sorted(models)]
        finals = [rep["final"]["accuracy"] for rep in reports.values()]
        doc: dict[str, Any] = {
            "config": self.config.to_dict(),
            "topology": self.topology.to_dict(),
            "epochs": epochs,
            "final": {
                "nodes": {str(i): rep["final"] for i, rep in reports.items()},
                "finished": sorted(reports),
                "missing": sorted(set(range(self.topology.num_nodes)) - set(reports)),
                "mean_accuracy": float(np.mean(finals)),
                "min_accuracy": float(np.min(finals)),
                "max_accuracy": float(np.max(finals)),
                "consensus_distance": consensus_distance(ordered),
                "dropped_edges": {
                    str(i): rep["dropped"] for i, rep in reports.items() if rep["dropped"]
                },
                "joined_from": {
                    str(i): rep["joined_from"]
                    for i, rep in reports.items()
                    if rep["joined_from"] is not None
                },
            },
        }
        if centralized if centralized is not None else self.config.centralized:
            if self.nodes is not None:
                datasets, test = self.nodes.train, self.nodes.test
                num_classes = self.nodes.num_classes
            else:
                datasets, test, num_classes = node_datasets(self.config)
            model = _seeded_model(self.config, datasets[0].x.shape[1:], num_classes)
            pooled = ArrayDataset(
                np.concatenate([d.x for d in datasets]), np.concatenate([d.y for d in datasets])
            )
            doc["centralized"], reference = train_reference(
                self.config, pooled, copy.deepcopy(model), test
            )
            doc["centralized_final"] = reference.evaluate(test)
            adapter = TorchAdapter(model)
            adapter.set_weights(mean_weights(ordered))
            doc["final"]["average_model"] = adapter.evaluate(test)
        write_json(self.out / "history.json", doc)
        plot_runs(
            self.out / "accuracy.png",
            {f"{self.config.label}, processes": epochs},
            doc.get("centralized", ()),
            title=f"{self.topology.name}, node processes",
        )
        return doc


def read_graph(
    path: str | os.PathLike,
) -> tuple[ConsensusConfig, dict[int, str], Any, float | None]:
    """Read a ``LocalGraph``'s ``graph.json``: ``(config, addresses, topology, epoch_steps)``."""
    doc = json.loads(Path(path).read_text())
    epoch_steps = doc.get("epoch_steps")
    if epoch_steps is not None and not (
        isinstance(epoch_steps, int | float)
        and not isinstance(epoch_steps, bool)
        and 0 < epoch_steps < float("inf")
    ):
        raise ValueError(f"{path}: epoch_steps must be a number > 0, got {epoch_steps!r}")
    return (
        ConsensusConfig.from_dict(doc["config"]),
        {int(k): v for k, v in doc["addresses"].items()},
        doc["topology"],
        epoch_steps,
    )
