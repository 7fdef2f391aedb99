"""Your own nodes: their data (arrays, ``PartyData`` or a folder of ``.npz``) and their graph.

``run_consensus(data=..., graph=...)`` and ``fedfuse consensus --node-data DIR --graph FILE``
go through here. Node ids are the user's own (the folder's file names, the mapping's keys):
integers or strings, matched between data and graph by their text (a JSON object's keys are
always text, so node ``3`` and ``"3"`` are one node) and put in natural order (``node_2`` before
``node_10``), which numbers them ``0 .. n-1`` inside the run. Everything is checked before any
training: shapes, labels, the graph's ids, self-loops, connectivity; errors name the node.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np

from fedfuse._natural import natural_key
from fedfuse.consensus._topology import Topology
from fedfuse.data import ArrayDataset, FederatedDataset, PartyData, load_party_npz

__all__ = ["as_topology", "load_node_data", "node_files"]

#: At most this many nodes in one run (a folder of more ``.npz`` files is refused unread).
MAX_NODES = 10_000
#: Labels must be below this (the model gets one output per class).
MAX_CLASSES = 100_000
# A graph file is a small JSON document.
_MAX_GRAPH_BYTES = 16 << 20

#: What one node's data may be: ``(x, y)``, an ``ArrayDataset`` or a ``PartyData``.
NodeData = Union[tuple[Any, Any], ArrayDataset, PartyData]  # noqa: UP007 - a runtime alias
#: A graph: a ``Topology``, an adjacency mapping ``{id: [neighbour ids]}``, an edge list
#: ``[(id, id), ...]``, or the path of a JSON file holding either.
GraphLike = Union[Topology, Mapping[Any, Iterable[Any]], Iterable[Sequence[Any]], str, os.PathLike]  # noqa: UP007


def _check_id(node_id: Any, where: str) -> None:
    if isinstance(node_id, bool) or not isinstance(node_id, int | str):
        raise ValueError(f"{where}: node ids are integers or strings, got {node_id!r}")
    if isinstance(node_id, str) and not (0 < len(node_id) <= 200 and node_id.isprintable()):
        raise ValueError(f"{where}: a node id is 1 to 200 printable characters, got {node_id!r}")


def order_ids(ids: Iterable[Any], where: str) -> list[Any]:
    """The ids in natural order, refusing bad ones and ids equal as text."""
    ids = list(ids)
    if len(ids) > MAX_NODES:
        raise ValueError(f"{where}: {len(ids)} nodes; at most {MAX_NODES} are supported")
    seen: dict[str, Any] = {}
    for node_id in ids:
        _check_id(node_id, where)
        if str(node_id) in seen:
            raise ValueError(f"{where}: nodes {seen[str(node_id)]!r} and {node_id!r} are one id")
        seen[str(node_id)] = node_id
    return sorted(ids, key=natural_key)


def as_dataset(value: Any, what: str) -> ArrayDataset:
    """``value`` as an ``ArrayDataset`` after checking it (``what`` names it in errors)."""
    if isinstance(value, ArrayDataset):
        x, y = value.x, value.y
    elif isinstance(value, tuple | list) and len(value) == 2:
        x, y = np.asarray(value[0]), np.asarray(value[1])
    else:
        raise ValueError(f"{what} must be (x, y), an ArrayDataset or a PartyData")
    if x.dtype.kind not in "biuf" or x.ndim < 2:
        raise ValueError(
            f"{what}: x must be a numeric array of rows (examples x features), got "
            f"dtype {x.dtype} shape {x.shape}"
        )
    if y.ndim != 1 or len(y) != len(x):
        raise ValueError(f"{what}: y must hold one label per row of x, got shape {y.shape}")
    if len(x) == 0:
        raise ValueError(f"{what} has no examples")
    if y.dtype.kind not in "iu":
        raise ValueError(f"{what}: labels must be integers (class ids), got dtype {y.dtype}")
    if y.min() < 0 or y.max() >= MAX_CLASSES:
        raise ValueError(
            f"{what}: labels must be in 0..{MAX_CLASSES - 1}, got {y.min()}..{y.max()}"
        )
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        raise ValueError(f"{what}: x holds NaN or infinite values")
    return ArrayDataset(x, y)


@dataclass(frozen=True)
class NodeSet:
    """The nodes of a run, in order: ids, training data, the test set, the number of classes."""

    ids: list[Any]
    train: list[ArrayDataset]
    test: ArrayDataset
    num_classes: int


def node_set(data: Mapping[Any, NodeData] | FederatedDataset, test: Any = None) -> NodeSet:
    """Check the caller's node data and put it in order (see the module docstring).

    The test set is ``test``, else a ``FederatedDataset``'s own, else the nodes' own test
    splits pooled (``PartyData.test``); with none of these it is an error.
    """
    if not isinstance(data, Mapping) or not data:
        raise ValueError("data must be a non-empty mapping of node id -> (x, y) / PartyData")
    ids = order_ids(data, "data")
    if len(ids) < 2:
        raise ValueError("decentralized training needs at least two nodes; data has one")
    train, local_tests = [], []
    for node_id in ids:
        value = data[node_id]
        part = value if isinstance(value, PartyData) else PartyData(value)
        train.append(as_dataset(part.train, f"node {node_id!r}: training data"))
        if part.test is not None:
            local_tests.append(as_dataset(part.test, f"node {node_id!r}: test data"))
    if test is None and isinstance(data, FederatedDataset):
        test = data.test
    if test is not None:
        test = as_dataset(test, "test")
    elif local_tests:
        test = ArrayDataset(
            np.concatenate([t.x for t in local_tests]), np.concatenate([t.y for t in local_tests])
        )
    else:
        raise ValueError(
            "no test set: give test=(x, y), or nodes with their own test splits "
            "(PartyData(train, test), or x_test/y_test in each .npz)"
        )
    shape = train[0].x.shape[1:]
    for node_id, part in zip(ids, train, strict=True):
        if part.x.shape[1:] != shape:
            raise ValueError(
                f"node {node_id!r}: examples of shape {part.x.shape[1:]}, node {ids[0]!r} has "
                f"{shape}; every node needs the same features"
            )
    if test.x.shape[1:] != shape:
        raise ValueError(f"test: examples of shape {test.x.shape[1:]}, the nodes have {shape}")
    num_classes = int(max(max(int(d.y.max()) for d in train), int(test.y.max()))) + 1
    return NodeSet(ids, train, test, num_classes)


def node_files(folder: str | os.PathLike) -> dict[str, Path]:
    """``<id>.npz`` files of ``folder`` by id (the file name without ``.npz``), natural order."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(
            f"no node data folder at {root}: make one with one <node id>.npz per node "
            "(keys x_train, y_train, x_test, y_test)"
        )
    files = {}
    for path in root.iterdir():
        if path.suffix == ".npz" and path.is_file():
            files[path.stem] = path
            if len(files) > MAX_NODES:
                raise ValueError(f"{root}: more than {MAX_NODES} .npz files")
    if not files:
        raise FileNotFoundError(
            f"{root} holds no .npz files: put one <node id>.npz per node there "
            "(keys x_train, y_train, x_test, y_test)"
        )
    return {node_id: files[node_id] for node_id in order_ids(files, str(root))}


def load_node_data(folder: str | os.PathLike) -> dict[str, PartyData]:
    """One node per ``.npz`` file of ``folder`` (``fedfuse.data.load_party_npz``: keys
    ``x_train, y_train, x_test, y_test``, sizes checked before reading, nothing unpickled).

    Node ids are the file names without ``.npz``, in natural order (``node_2`` before
    ``node_10``). Give the result to ``run_consensus(data=...)``.
    """
    return {node_id: load_party_npz(path) for node_id, path in node_files(folder).items()}


def _read_graph_file(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(
            f"no graph file at {path}: write a JSON edge list [[a, b], ...] or an adjacency "
            'mapping {"a": ["b", ...], ...} there'
        )
    if path.stat().st_size > _MAX_GRAPH_BYTES:
        raise ValueError(f"{path}: a graph file is at most {_MAX_GRAPH_BYTES >> 20} MiB")
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not a JSON edge list or adjacency mapping: {exc}") from None
    if not isinstance(doc, list | dict):
        raise ValueError(f"{path}: expected a JSON list of edges or an object of neighbours")
    return doc


def _edges_of(graph: Any, where: str) -> tuple[list[tuple[Any, Any]], list[Any]]:
    """(edges, every node named) of an adjacency mapping or an edge list."""
    if isinstance(graph, Mapping):
        nodes, edges = [], []
        for node, neighbours in graph.items():
            if isinstance(neighbours, str | bytes) or not isinstance(neighbours, Iterable):
                raise ValueError(f"{where}: node {node!r} must map to a list of neighbours")
            nodes.append(node)
            edges += [(node, other) for other in neighbours]
        return edges, nodes
    if isinstance(graph, str | bytes) or not isinstance(graph, Iterable):
        raise ValueError(f"{where}: expected an edge list or an adjacency mapping")
    edges = []
    for number, edge in enumerate(graph, 1):
        if isinstance(edge, str | bytes) or not isinstance(edge, Sequence) or len(edge) != 2:
            raise ValueError(f"{where}: edge {number} must be a pair of node ids, got {edge!r}")
        edges.append((edge[0], edge[1]))
    return edges, []


def as_topology(graph: GraphLike, node_ids: Sequence[Any] | None = None) -> Topology:
    """The caller's graph as a ``Topology`` over ``node_ids`` (the data's ids, in order).

    ``graph`` is a ``Topology``, an adjacency mapping ``{id: [neighbour ids]}``, an edge list
    ``[(id, id), ...]``, or the path of a JSON file holding one of the last two. Without
    ``node_ids`` the nodes are the graph's own, in natural order.

    Raises:
        ValueError: a self-loop, a node id the data lacks (or data no edge reaches), or a graph
            that is not connected; the message names the nodes.
        FileNotFoundError: no file at the path.
    """
    where = "graph"
    if isinstance(graph, str | os.PathLike):
        where = str(graph)
        graph = _read_graph_file(Path(graph))
    if isinstance(graph, Topology):
        own = list(graph.node_ids) if graph.node_ids is not None else list(range(graph.num_nodes))
        edges: list[tuple[Any, Any]] = [(own[i], own[j]) for i, j in graph.edges]
        named = own
        name = graph.name
    else:
        edges, named = _edges_of(graph, where)
        name = "custom"
    for a, b in edges:
        _check_id(a, where)
        _check_id(b, where)
        if str(a) == str(b):
            raise ValueError(f"{where}: self-loop at node {a!r} (a node is no neighbour of itself)")
    in_graph = {str(n): n for n in named} | {str(n): n for e in edges for n in e}
    if node_ids is None:
        node_ids = order_ids(in_graph.values(), where)
    index = {str(n): i for i, n in enumerate(node_ids)}
    unknown = [n for key, n in in_graph.items() if key not in index]
    if unknown:
        raise ValueError(
            f"{where}: names node(s) {sorted(map(str, unknown), key=natural_key)} that have no "
            f"data; the nodes are {', '.join(map(str, node_ids))}"
        )
    missing = [n for n in node_ids if str(n) not in in_graph]
    if missing:
        raise ValueError(f"{where}: node(s) {[str(n) for n in missing]} have data but no edge")
    topology = Topology(
        len(node_ids),
        tuple((index[str(a)], index[str(b)]) for a, b in edges),
        name,
        node_ids=tuple(node_ids) if list(node_ids) != list(range(len(node_ids))) else None,
    )
    if not topology.is_connected():
        apart = _unreachable(topology)
        raise ValueError(
            f"{where}: the graph is not connected; node(s) "
            f"{[str(node_ids[i]) for i in apart]} cannot reach node {node_ids[0]!s}"
        )
    return topology


def _unreachable(topology: Topology) -> list[int]:
    seen, stack = {0}, [0]
    while stack:
        for j in topology.neighbours(stack.pop()):
            if j not in seen:
                seen.add(j)
                stack.append(j)
    return [i for i in range(topology.num_nodes) if i not in seen]
