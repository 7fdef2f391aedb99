"""Decentralized training: nodes on a graph reach consensus with no aggregator.

Each node trains on its own data and exchanges variables (never data) with its neighbours at
its own pace. Edge-consensus Learning (``ECL``, PDMM or ADMM exchanges; ECL-ISVR) constrains
neighbouring models to agree and so reaches the model that pooled training would find, even
when every node holds different classes; gossip SGD and D-PSGD are the averaging baselines.

- In one process, on a simulated asynchronous clock: ``run_consensus(...)`` (or
  ``AsyncSimulator`` over your own ``ConsensusNode``s). Your own nodes and graph:
  ``run_consensus(data={id: (x, y), ...}, graph=[(id, id), ...])``, or
  ``data=load_node_data(folder)`` for one ``.npz`` per node (``as_topology`` checks a graph).
- As real processes talking HTTP: ``PeerNode`` (one node), ``node_main`` (what ``fedfuse node``
  runs) and ``LocalGraph`` (a whole graph of node processes on this machine).

See the module docstrings of ``_algorithms`` (the update rules and their derivation),
``_simulation`` (the asynchrony model) and ``_peer`` (the wire protocol).
"""

from fedfuse.consensus._algorithms import ALGORITHMS, DPSGD, ECL, Gossip, Learner, make_algorithm
from fedfuse.consensus._data import as_topology, load_node_data, node_files
from fedfuse.consensus._launch import (
    NODE_TOKEN_ENV,
    LocalGraph,
    NodeOptions,
    node_main,
    read_graph,
)
from fedfuse.consensus._models import CONSENSUS_MODELS, gn_cnn, make_model
from fedfuse.consensus._node import DEFAULT_MAX_MESSAGE_RATIO, ConsensusNode
from fedfuse.consensus._peer import HttpReply, PeerNode, Transport, urllib_transport
from fedfuse.consensus._report import consensus_distance, mean_weights, plot_runs, write_json
from fedfuse.consensus._run import (
    BUDGETS,
    CONSENSUS_PARTITIONS,
    FLAT_ALIASES,
    ConsensusConfig,
    ConsensusResult,
    evaluate_nodes,
    node_datasets,
    prepare_run,
    run_consensus,
    train_reference,
    validation_data,
)
from fedfuse.consensus._simulation import AsyncSimulator, ExchangeEvent
from fedfuse.consensus._topology import (
    TOPOLOGIES,
    Topology,
    complete,
    double_ring,
    from_edge_list,
    make_topology,
    random_regular,
    ring,
    torus,
)

__all__ = [
    "BUDGETS",
    "CONSENSUS_PARTITIONS",
    "FLAT_ALIASES",
    "node_files",
    "prepare_run",
    "ALGORITHMS",
    "CONSENSUS_MODELS",
    "DEFAULT_MAX_MESSAGE_RATIO",
    "DPSGD",
    "ECL",
    "NODE_TOKEN_ENV",
    "TOPOLOGIES",
    "AsyncSimulator",
    "ConsensusConfig",
    "ConsensusNode",
    "ConsensusResult",
    "ExchangeEvent",
    "Gossip",
    "HttpReply",
    "Learner",
    "LocalGraph",
    "NodeOptions",
    "PeerNode",
    "Topology",
    "Transport",
    "as_topology",
    "complete",
    "consensus_distance",
    "double_ring",
    "evaluate_nodes",
    "from_edge_list",
    "gn_cnn",
    "load_node_data",
    "make_algorithm",
    "make_model",
    "make_topology",
    "mean_weights",
    "node_datasets",
    "node_main",
    "plot_runs",
    "random_regular",
    "read_graph",
    "ring",
    "run_consensus",
    "torus",
    "train_reference",
    "urllib_transport",
    "validation_data",
    "write_json",
]
