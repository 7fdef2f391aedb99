"""Graphs of nodes: who may exchange variables with whom.

A ``Topology`` is plain data: a number of nodes ``0 .. n-1`` and a sorted tuple of undirected
edges ``(i, j)`` with ``i < j``; ``node_ids`` names the nodes when they have names of their own
(a graph the user brought, ``as_topology``). Builders cover the graphs of the Edge-consensus
Learning papers and the usual decentralized-SGD test beds; ``make_topology(name, ...)`` picks one
by name.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = [
    "TOPOLOGIES",
    "Topology",
    "complete",
    "double_ring",
    "from_edge_list",
    "make_topology",
    "random_regular",
    "ring",
    "torus",
]

#: Names accepted by ``make_topology`` (a path to an edge-list file is accepted too).
TOPOLOGIES = ("ring", "double_ring", "torus", "complete", "random_regular")

# How many pairings ``random_regular`` tries before giving up.
_MAX_PAIRING_TRIES = 1000


@dataclass(frozen=True)
class Topology:
    """An undirected graph on nodes ``0 .. num_nodes - 1`` (named ``node_ids[i]`` if given)."""

    num_nodes: int
    edges: tuple[tuple[int, int], ...]
    name: str = "custom"
    node_ids: tuple[int | str, ...] | None = None
    _adjacency: dict[int, tuple[int, ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.num_nodes < 1:
            raise ValueError(f"a topology needs at least one node, got num_nodes={self.num_nodes}")
        clean = set()
        for a, b in self.edges:
            i, j = int(a), int(b)
            if i == j:
                raise ValueError(f"self-loop ({i}, {j}) is not an edge")
            if not (0 <= i < self.num_nodes and 0 <= j < self.num_nodes):
                raise ValueError(f"edge ({i}, {j}) names a node outside 0..{self.num_nodes - 1}")
            clean.add((min(i, j), max(i, j)))
        object.__setattr__(self, "edges", tuple(sorted(clean)))
        if self.node_ids is not None and len(self.node_ids) != self.num_nodes:
            raise ValueError(
                f"{len(self.node_ids)} node_ids for a topology of {self.num_nodes} nodes"
            )
        adjacency: dict[int, list[int]] = {i: [] for i in range(self.num_nodes)}
        for i, j in self.edges:
            adjacency[i].append(j)
            adjacency[j].append(i)
        object.__setattr__(self, "_adjacency", {i: tuple(sorted(n)) for i, n in adjacency.items()})

    def neighbours(self, node: int) -> tuple[int, ...]:
        """The nodes sharing an edge with ``node``, ascending."""
        return self._adjacency[node]

    def degree(self, node: int) -> int:
        return len(self._adjacency[node])

    def is_connected(self) -> bool:
        seen, stack = {0}, [0]
        while stack:
            for j in self._adjacency[stack.pop()]:
                if j not in seen:
                    seen.add(j)
                    stack.append(j)
        return len(seen) == self.num_nodes

    def node_id(self, node: int) -> int | str:
        """The name of node ``node`` (its index when the nodes have no names)."""
        return node if self.node_ids is None else self.node_ids[node]

    def to_dict(self) -> dict[str, object]:
        doc: dict[str, object] = {
            "name": self.name,
            "num_nodes": self.num_nodes,
            "edges": [list(e) for e in self.edges],
        }
        if self.node_ids is not None:
            doc["node_ids"] = list(self.node_ids)
        return doc

    @classmethod
    def from_dict(cls, doc: dict[str, object]) -> Topology:
        edges = tuple((int(i), int(j)) for i, j in doc["edges"])  # type: ignore[union-attr]
        ids = doc.get("node_ids")
        return cls(
            int(doc["num_nodes"]),  # type: ignore[arg-type]
            edges,
            str(doc.get("name", "custom")),
            tuple(ids) if ids is not None else None,  # type: ignore[arg-type]
        )


def ring(num_nodes: int) -> Topology:
    """Each node linked to the next, the last to the first (a path for two nodes)."""
    return Topology(num_nodes, tuple((i, (i + 1) % num_nodes) for i in range(num_nodes)), "ring")


def double_ring(num_nodes: int) -> Topology:
    """A ring whose nodes also link to the node two steps away (degree 4 for 5+ nodes)."""
    edges = [(i, (i + s) % num_nodes) for i in range(num_nodes) for s in (1, 2)]
    return Topology(num_nodes, tuple(edges), "double_ring")


def torus(rows: int, cols: int) -> Topology:
    """A ``rows x cols`` grid that wraps around both ways; node ``r * cols + c``."""
    edges = []
    for r in range(rows):
        for c in range(cols):
            here = r * cols + c
            edges += [(here, r * cols + (c + 1) % cols), (here, ((r + 1) % rows) * cols + c)]
    return Topology(rows * cols, tuple(e for e in edges if e[0] != e[1]), "torus")


def complete(num_nodes: int) -> Topology:
    """Every pair of nodes linked."""
    edges = [(i, j) for i in range(num_nodes) for j in range(i + 1, num_nodes)]
    return Topology(num_nodes, tuple(edges), "complete")


def random_regular(num_nodes: int, degree: int, *, seed: int = 0) -> Topology:
    """A connected random ``degree``-regular graph (seeded), by rejection-sampled pairings.

    ``num_nodes * degree`` must be even and ``degree < num_nodes``.
    """
    if not 0 < degree < num_nodes:
        raise ValueError(f"degree must be between 1 and num_nodes-1={num_nodes - 1}, got {degree}")
    if num_nodes * degree % 2:
        raise ValueError(f"num_nodes * degree must be even, got {num_nodes} * {degree}")
    rng = np.random.default_rng(seed)
    stubs = np.repeat(np.arange(num_nodes), degree)
    for _ in range(_MAX_PAIRING_TRIES):
        pairs = rng.permutation(stubs).reshape(-1, 2)
        edges = {(int(min(a, b)), int(max(a, b))) for a, b in pairs}
        if len(edges) == len(pairs) and all(a != b for a, b in edges):
            graph = Topology(num_nodes, tuple(edges), f"random_regular_{degree}")
            if graph.is_connected():
                return graph
    raise ValueError(
        f"could not draw a connected simple {degree}-regular graph on {num_nodes} nodes"
    )


def from_edge_list(
    source: str | os.PathLike | Iterable[str], num_nodes: int | None = None
) -> Topology:
    """Read ``i j`` pairs, one per line (``#`` starts a comment), from a file or lines.

    Nodes are integers from 0; ``num_nodes`` defaults to the largest id plus one.
    """
    lines = (
        Path(source).read_text().splitlines() if isinstance(source, str | os.PathLike) else source
    )
    edges = []
    for number, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].replace(",", " ").split()
        if not text:
            continue
        if len(text) != 2 or not all(t.lstrip("-").isdigit() for t in text):
            raise ValueError(f"edge list line {number}: expected two node ids, got {line!r}")
        edges.append((int(text[0]), int(text[1])))
    if not edges:
        raise ValueError("the edge list holds no edges")
    size = num_nodes if num_nodes is not None else max(max(e) for e in edges) + 1
    return Topology(size, tuple(edges), "edge_list")


def make_topology(
    name: str, num_nodes: int, *, degree: int = 3, seed: int = 0, rows: int | None = None
) -> Topology:
    """A topology by name (``TOPOLOGIES``) or, for any other string, an edge-list file path.

    ``degree`` is for ``random_regular``; ``rows`` for ``torus`` (default: the most square
    factorisation of ``num_nodes``).
    """
    if name == "ring":
        return ring(num_nodes)
    if name == "double_ring":
        return double_ring(num_nodes)
    if name == "complete":
        return complete(num_nodes)
    if name == "random_regular":
        return random_regular(num_nodes, degree, seed=seed)
    if name == "torus":
        if rows is None:
            rows = max(r for r in range(1, int(num_nodes**0.5) + 1) if num_nodes % r == 0)
        if num_nodes % rows:
            raise ValueError(f"torus: rows={rows} does not divide num_nodes={num_nodes}")
        return torus(rows, num_nodes // rows)
    if Path(name).is_file():
        return from_edge_list(name, num_nodes)
    raise ValueError(
        f"unknown topology {name!r}; choose one of: {', '.join(TOPOLOGIES)}, or an edge-list file"
    )
