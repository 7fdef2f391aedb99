"""``fedfuse consensus`` (a decentralized run: simulated, or as local node processes) and
``fedfuse node`` (one node process)."""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from fedfuse._settings import Options
from fedfuse.cli._commands import COMMANDS
from fedfuse.consensus import (
    CONSENSUS_PARTITIONS,
    FLAT_ALIASES,
    NODE_TOKEN_ENV,
    ConsensusConfig,
    ConsensusResult,
    LocalGraph,
    NodeOptions,
    node_files,
    node_main,
    prepare_run,
    read_graph,
    run_consensus,
)
from fedfuse.data import load_party_npz, partition_defaults

__all__ = ["add_parsers"]

_HELP = {
    "topology": "ring, double_ring, torus, complete, random_regular, or an edge-list file",
    "degree": "degree of random_regular",
    "eta": "ECL constraint strength (None: ECL-ISVR's 1/(s |E_i| (K-1)))",
    "local_steps": "minibatch steps between exchanges (K)",
    "exchange_prob": "chance that an edge exchanges at the end of a local round",
    "speed_spread": "node rates are U[1-x, 1+x] (simulated asynchrony)",
    "train_size": "keep a seeded random subset of the training set (None: all)",
    "test_size": "test subset for the per-epoch curves, final numbers use all of it (None: all)",
    "dual_init": "ECL's duals start at agreement (z = A w) or at zero (NTT's code)",
    "budget": "equal: all nodes together compute the reference's gradients per epoch; "
    "reference: every node does (NTT's budget)",
    "lr_decay_epochs": "step decay at these epochs, e.g. 10,15",
    "lr_decay": "factor of each step decay",
    "validation_size": "hold out this many training examples to choose settings on (None: none)",
    "compression": "compress exchanges (ECL: C-ECL, gossip: CHOCO-style)",
    "topk_fraction": "with --compression topk: fraction of each tensor kept",
    "compression_step": "C-ECL's theta / compressed gossip's gamma (None: default)",
    "max_message_ratio": "refuse a neighbour's message this many times larger than the node's "
    "own on that edge (0: no bound)",
}


def _epoch_list(text: str) -> list[float]:
    """``"10,15"`` -> ``[10.0, 15.0]`` (an empty string: no epochs)."""
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected epochs separated by commas, got {text!r}"
        ) from None


_TYPES = {"int": int, "float": float, "str": str, "list[float]": _epoch_list}


def _dest(name: str) -> str:
    return f"cfg__{name}"


def _convert(annotation: str) -> Any:
    return _TYPES.get(annotation.split(" | ")[0], str)


def _partition_flags() -> dict[str, tuple[Any, list[str]]]:
    """Partition parameter -> (its type, ``"<scheme> (default: <value>)"`` per scheme)."""
    flags: dict[str, tuple[Any, list[str]]] = {}
    for scheme in CONSENSUS_PARTITIONS:
        for name, default in partition_defaults(scheme).items():
            # An int default takes ints; a float or None default (``shift``) takes any number.
            kind = int if isinstance(default, int) and not isinstance(default, bool) else float
            flags.setdefault(name, (kind, []))[1].append(f"{scheme} (default: {default})")
    return flags


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per ``ConsensusConfig`` field and per partition parameter, default shown."""
    defaults = ConsensusConfig()
    for f in dataclasses.fields(ConsensusConfig):
        if f.name == "partition_params":
            continue
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        help_text = f"{_HELP[f.name]}; " if f.name in _HELP else ""
        options = ConsensusConfig.constraints[f.name][0]
        choices = options.values if isinstance(options, Options) else None
        if isinstance(default, bool):
            parser.add_argument(
                flag, dest=_dest(f.name), action=argparse.BooleanOptionalAction, default=None,
                help=f"{help_text}default: {default}",
            )  # fmt: skip
            continue
        parser.add_argument(
            flag, dest=_dest(f.name), type=_convert(str(f.type)), choices=choices, default=None,
            metavar=None if choices else f.name.upper(),
            help=f"{help_text}default: {default}",
        )  # fmt: skip
    for name, (kind, owners) in sorted(_partition_flags().items()):
        flags = ["--" + name.replace("_", "-")]
        alias = [a for a, target in FLAT_ALIASES.items() if target == name]
        flags += ["--" + a.replace("_", "-") for a in alias]
        parser.add_argument(
            *flags, dest=_dest(name), type=kind, default=None, metavar=name.upper(),
            help=f"parameter of partition {', '.join(owners)}",
        )  # fmt: skip


def _given(args: argparse.Namespace) -> dict[str, Any]:
    """The settings whose flags were given, by their flat names."""
    return {
        key[len("cfg__") :]: value
        for key, value in vars(args).items()
        if key.startswith("cfg__") and value is not None
    }


def _config_from_args(args: argparse.Namespace) -> ConsensusConfig:
    base = ConsensusConfig.from_file(args.config) if args.config else ConsensusConfig()
    config = base.replace(**_given(args))
    config.check()
    return config


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def _epoch_table(history: list[dict[str, Any]], title: str) -> Table:
    table = Table(title=title)
    for col in ("epoch", "mean acc", "worst", "best", "consensus dist", "avg model", "exchanges"):
        table.add_column(col, justify="right")
    for r in history:
        table.add_row(
            str(r["epoch"]),
            _pct(r["mean_accuracy"]),
            _pct(r["min_accuracy"]),
            _pct(r["max_accuracy"]),
            f"{r['consensus_distance']:.4f}" if "consensus_distance" in r else "-",
            _pct(r.get("average_model", {}).get("accuracy")),
            str(r.get("exchanges", "-")),
        )
    return table


def _label_table(result: ConsensusResult) -> Table:
    num_classes = len(next(iter(result.label_counts.values())))
    table = Table(title="training examples per node and class")
    for col in ("node", "neighbours", *map(str, range(num_classes))):
        table.add_column(col, justify="right")
    topology = result.topology
    for i in range(topology.num_nodes):
        counts = result.label_counts[topology.node_id(i)]
        neighbours = ",".join(str(topology.node_id(j)) for j in topology.neighbours(i))
        table.add_row(str(topology.node_id(i)), neighbours, *(str(c) if c else "." for c in counts))
    return table


def _print_final(console: Console, final: dict[str, Any], centralized: dict | None) -> None:
    console.print(
        f"decentralized: mean node accuracy {_pct(final['mean_accuracy'])}% "
        f"(worst {_pct(final['min_accuracy'])}%, best {_pct(final['max_accuracy'])}%), "
        f"consensus distance {final['consensus_distance']:.4f}"
    )
    if "average_model" in final:
        console.print(f"average of the node models: {_pct(final['average_model']['accuracy'])}%")
    if centralized is not None:
        console.print(f"centralized, same epochs: {_pct(centralized['accuracy'])}%")


def _cmd_consensus(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    base = ConsensusConfig.from_file(args.config) if args.config else ConsensusConfig()
    files = node_files(args.node_data) if args.node_data else None
    data = {node_id: load_party_npz(path) for node_id, path in files.items()} if files else None
    config, topology, _ = prepare_run(base, _given(args), data=data, graph=args.graph)
    console = Console()
    where = (
        f"your data from {args.node_data}"
        if files
        else f"{config.dataset} ({config.partition} partition)"
    )
    graph_name = f"graph from {args.graph}" if args.graph else config.topology
    console.print(
        f"[bold]fedfuse consensus[/]: {config.label} on a {graph_name} of "
        f"{topology.num_nodes} nodes, {where}, model {config.model}, {config.epochs} epochs"
        + (", as node processes" if args.processes else ", simulated asynchronous clock")
    )
    if args.processes:
        graph = LocalGraph(
            config,
            args.out,
            step_delay=args.step_delay,
            linger=args.linger,
            node_data=files,
            graph=topology if args.graph else None,
        )
        with graph:
            codes = graph.wait(timeout=args.wait)
            doc = graph.collect()
        console.print(_epoch_table(doc["epochs"], "node processes, per epoch (accuracy in %)"))
        failed = {i: c for i, c in codes.items() if c != 0}
        if failed:
            console.print(f"node processes that failed (exit codes): {failed}")
        central = doc.get("centralized")
        _print_final(console, doc["final"], central[-1] if central else None)
        console.print(f"history: {graph.out / 'history.json'}\nplot: {graph.out / 'accuracy.png'}")
        return 0 if not failed else 1

    def on_epoch(record: dict[str, Any]) -> None:
        console.print(
            f"epoch {record['epoch']}: mean {_pct(record['mean_accuracy'])}%, "
            f"consensus distance {record['consensus_distance']:.4f}",
            highlight=False,
        )

    result = run_consensus(
        config, data=data, graph=topology if args.graph else None, out_dir=args.out,
        on_epoch=on_epoch,
    )  # fmt: skip
    console.print(_label_table(result))
    console.print(_epoch_table(result.history, "per epoch (accuracy in % on the evaluation set)"))
    _print_final(console, result.final, result.centralized_final)
    console.print(f"wall time {result.wall_time:.1f} s")
    for name, path in result.files.items():
        console.print(f"{name}: {path}")
    return 0


def _parse_peers(values: list[str]) -> dict[int, str]:
    peers = {}
    for value in values:
        node_id, sep, url = value.partition("=")
        if not sep or not node_id.strip().isdigit() or not url.startswith("http"):
            raise ValueError(f"--peer wants ID=URL (e.g. 3=http://127.0.0.1:8703), got {value!r}")
        peers[int(node_id)] = url
    return peers


def _node_token(args: argparse.Namespace) -> str | None:
    """The node's secret: ``--token``, else ``--token-file``, else ``$FEDFUSE_NODE_TOKEN``."""
    if args.token and args.token_file:
        raise ValueError("give --token or --token-file, not both")
    if args.token_file:
        token = Path(args.token_file).read_text().strip()
        if not token:
            raise ValueError(f"--token-file {args.token_file}: the file is empty")
        return token
    return args.token or os.environ.get(NODE_TOKEN_ENV) or None


def _cmd_node(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    token = _node_token(args)
    if args.graph:
        config, addresses, topology, epoch_steps = read_graph(args.graph)
        config = config.replace(**_given(args))
        neighbours = {j for i, j in topology["edges"] if i == args.id} | {
            i for i, j in topology["edges"] if j == args.id
        }
        peers = {j: addresses[j] for j in sorted(neighbours)}
        port = int(addresses[args.id].rsplit(":", 1)[1])
    else:
        config, peers, port = _config_from_args(args), _parse_peers(args.peer), args.port
        epoch_steps = None
    report = node_main(
        NodeOptions(
            node_id=args.id,
            peers=peers,
            config=config,
            port=port,
            host=args.host,
            data=args.data,
            num_classes=args.num_classes,
            join=args.join,
            step_delay=args.step_delay,
            linger=args.linger,
            timeout=args.timeout,
            token=token,
            insecure=args.insecure,
            out_dir=args.out,
            epoch_steps=epoch_steps,
        )
    )
    print(
        f"node {args.id}: {report['steps']} steps, test accuracy "
        f"{_pct(report['final']['accuracy'])}%, {report['exchanges']} exchanges, "
        f"dropped {report['dropped'] or 'no'} edges"
        + (
            f", joined from node {report['joined_from']}"
            if report["joined_from"] is not None
            else ""
        )
    )
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    run = sub.add_parser("consensus", help=COMMANDS["consensus"].help)
    run.add_argument(
        "--config",
        help="TOML or JSON file of settings, a [consensus] table or top-level names; flags "
        "override it (default: none)",
    )
    run.add_argument(
        "--node-data",
        metavar="DIR",
        help="your own nodes: one <node id>.npz per node (x_train, y_train, x_test, y_test), "
        "ids from the file names in natural order; the nodes' test splits pooled are the test "
        "set (default: none, split --dataset by --partition)",
    )
    run.add_argument(
        "--graph",
        metavar="FILE",
        help='your own graph: a JSON edge list [["a", "b"], ...] or adjacency mapping '
        '{"a": ["b", ...]} over the node ids (default: none, use --topology)',
    )
    run.add_argument(
        "--out",
        default="fedfuse-consensus-output",
        help="output folder (default: fedfuse-consensus-output)",
    )
    run.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    run.add_argument(
        "--processes",
        action="store_true",
        help="run one `fedfuse node` process per node over HTTP on 127.0.0.1 (default: off, "
        "simulate in this process)",
    )
    run.add_argument(
        "--step-delay",
        type=float,
        default=0.0,
        help="with --processes: seconds of sleep per step, scaled by node speed (default: 0)",
    )
    run.add_argument(
        "--linger",
        type=float,
        default=30.0,
        help="with --processes: how long a finished node waits for its neighbours (default: 30 s)",
    )
    run.add_argument(
        "--wait",
        type=float,
        default=3600.0,
        help="with --processes: give up on the node processes after this many s (default: 3600)",
    )
    _add_config_flags(run)
    run.set_defaults(func=_cmd_consensus)

    node = sub.add_parser("node", help=COMMANDS["node"].help)
    node.add_argument("--id", type=int, required=True, help="this node's integer id")
    node.add_argument(
        "--graph", help="graph.json written by `fedfuse consensus --processes` (default: none)"
    )
    node.add_argument(
        "--config",
        help="TOML or JSON file of consensus settings, flags override it (default: none)",
    )
    node.add_argument(
        "--peer", action="append", default=[], help="a neighbour as ID=URL (repeat; default: none)"
    )
    node.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)"
    )
    node.add_argument(
        "--port", type=int, default=0, help="port to listen on, 0: any free port (default: 0)"
    )
    node.add_argument(
        "--data",
        help="this node's .npz (x_train, y_train, x_test, y_test) (default: none, compute "
        "this node's share of --dataset)",
    )
    node.add_argument(
        "--num-classes",
        type=int,
        help="number of classes (with --data; default: the file's largest label + 1)",
    )
    node.add_argument(
        "--join",
        action="store_true",
        help="join late: start from a neighbour's model (default: off)",
    )
    node.add_argument(
        "--step-delay", type=float, default=0.0, help="seconds of sleep per step (default: 0)"
    )
    node.add_argument(
        "--linger",
        type=float,
        default=30.0,
        help="seconds a finished node keeps answering its neighbours (default: 30)",
    )
    node.add_argument(
        "--timeout", type=float, default=10.0, help="seconds per exchange (default: 10)"
    )
    node.add_argument(
        "--token",
        help="shared secret that neighbours must present (visible to every user in `ps`: "
        f"prefer --token-file or ${NODE_TOKEN_ENV}; default: none)",
    )
    node.add_argument("--token-file", help="read the shared secret from this file (default: none)")
    node.add_argument(
        "--insecure",
        action="store_true",
        help="allow listening on a non-loopback --host without a token (default: off)",
    )
    node.add_argument(
        "--out", default=".", help="folder for node_<id>.json and .safetensors (default: .)"
    )
    node.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    _add_config_flags(node)
    node.set_defaults(func=_cmd_node)
