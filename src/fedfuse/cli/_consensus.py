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

from fedfuse.consensus import (
    NODE_TOKEN_ENV,
    ConsensusConfig,
    ConsensusResult,
    LocalGraph,
    NodeOptions,
    node_main,
    read_graph,
    run_consensus,
)

__all__ = ["add_parsers"]

_TYPES = {"data_dir": str, "train_size": int, "test_size": int, "eta": float}
_CHOICES = {
    "algorithm": ("ecl", "ecl-isvr", "gossip", "dpsgd"),
    "exchange": ("admm", "pdmm"),
    "eta_scaling": ("none", "sqrt_fan_in"),
    "partition": ("classes", "dirichlet", "iid", "shards", "quantity"),
}
_HELP = {
    "topology": "ring, double_ring, torus, complete, random_regular, or an edge-list file",
    "degree": "degree of random_regular",
    "classes_per_node": "classes per node for --partition classes",
    "eta": "ECL constraint strength (default: ECL-ISVR's 1/(s |E_i| (K-1)))",
    "local_steps": "minibatch steps between exchanges (K)",
    "exchange_prob": "chance that an edge exchanges at the end of a local round",
    "speed_spread": "node rates are U[1-x, 1+x] (simulated asynchrony)",
    "train_size": "keep a seeded random subset of the training set",
    "test_size": "test subset for the per-epoch curves (final numbers use all of it)",
    "max_message_ratio": "refuse a neighbour's message this many times larger than the node's "
    "own on that edge (0: no bound)",
}


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    for f in dataclasses.fields(ConsensusConfig):
        flag = "--" + f.name.replace("_", "-")
        help_text = f"{_HELP[f.name]}; " if f.name in _HELP else ""
        if isinstance(f.default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None)
        else:
            parser.add_argument(
                flag,
                type=_TYPES.get(f.name, type(f.default)),
                choices=_CHOICES.get(f.name),
                default=None,
                help=f"{help_text}default: {f.default}",
            )


def _config_from_args(args: argparse.Namespace) -> ConsensusConfig:
    base = ConsensusConfig.from_toml(args.config) if args.config else ConsensusConfig()
    given = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(ConsensusConfig)
        if getattr(args, f.name) is not None
    }
    return base.replace(**given)


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
    for i, counts in result.label_counts.items():
        neighbours = ",".join(map(str, result.topology.neighbours(i)))
        table.add_row(str(i), neighbours, *(str(c) if c else "." for c in counts))
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
    config = _config_from_args(args)
    console = Console()
    console.print(
        f"[bold]fedfuse consensus[/]: {config.label} on a {config.topology} of "
        f"{config.num_nodes} nodes, {config.dataset} ({config.partition} partition), "
        f"model {config.model}, {config.epochs} epochs"
        + (", as node processes" if args.processes else ", simulated asynchronous clock")
    )
    if args.processes:
        graph = LocalGraph(config, args.out, step_delay=args.step_delay, linger=args.linger)
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

    result = run_consensus(config, out_dir=args.out, on_epoch=on_epoch)
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
        config, addresses, topology = read_graph(args.graph)
        config = config.replace(
            **{
                f.name: getattr(args, f.name)
                for f in dataclasses.fields(ConsensusConfig)
                if getattr(args, f.name) is not None
            }
        )
        neighbours = {j for i, j in topology["edges"] if i == args.id} | {
            i for i, j in topology["edges"] if j == args.id
        }
        peers = {j: addresses[j] for j in sorted(neighbours)}
        port = int(addresses[args.id].rsplit(":", 1)[1])
    else:
        config, peers, port = _config_from_args(args), _parse_peers(args.peer), args.port
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
    run = sub.add_parser(
        "consensus",
        help="decentralized training on a graph of nodes (ECL, gossip, D-PSGD), no aggregator",
    )
    run.add_argument("--config", help="TOML file of settings (flags override it)")
    run.add_argument("--out", default="fedfuse-consensus-output", help="output folder")
    run.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    run.add_argument(
        "--processes",
        action="store_true",
        help="run one `fedfuse node` process per node over HTTP on 127.0.0.1",
    )
    run.add_argument(
        "--step-delay",
        type=float,
        default=0.0,
        help="with --processes: seconds of sleep per step, scaled by node speed",
    )
    run.add_argument(
        "--linger",
        type=float,
        default=30.0,
        help="with --processes: how long a finished node waits for its neighbours",
    )
    run.add_argument(
        "--wait",
        type=float,
        default=3600.0,
        help="with --processes: give up on the node processes after this many s",
    )
    _add_config_flags(run)
    run.set_defaults(func=_cmd_consensus)

    node = sub.add_parser(
        "node", help="one decentralized node: train and exchange with neighbours over HTTP"
    )
    node.add_argument("--id", type=int, required=True, help="this node's integer id")
    node.add_argument("--graph", help="graph.json written by `fedfuse consensus --processes`")
    node.add_argument("--config", help="TOML file of consensus settings (flags override it)")
    node.add_argument("--peer", action="append", default=[], help="a neighbour as ID=URL (repeat)")
    node.add_argument("--host", default="127.0.0.1", help="address to listen on")
    node.add_argument("--port", type=int, default=0, help="port to listen on (0: any free port)")
    node.add_argument("--data", help="this node's .npz (x_train, y_train, x_test, y_test)")
    node.add_argument("--num-classes", type=int, help="number of classes (with --data)")
    node.add_argument(
        "--join", action="store_true", help="join late: start from a neighbour's model"
    )
    node.add_argument("--step-delay", type=float, default=0.0, help="seconds of sleep per step")
    node.add_argument(
        "--linger",
        type=float,
        default=30.0,
        help="seconds a finished node keeps answering its neighbours",
    )
    node.add_argument("--timeout", type=float, default=10.0, help="seconds per exchange")
    node.add_argument(
        "--token",
        help="shared secret that neighbours must present (visible to every user in `ps`: "
        f"prefer --token-file or ${NODE_TOKEN_ENV})",
    )
    node.add_argument("--token-file", help="read the shared secret from this file")
    node.add_argument(
        "--insecure",
        action="store_true",
        help="allow listening on a non-loopback --host without a token",
    )
    node.add_argument("--out", default=".", help="folder for node_<id>.json and .safetensors")
    node.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    _add_config_flags(node)
    node.set_defaults(func=_cmd_node)
