"""``fedfuse demo``, ``fedfuse simulate`` and ``fedfuse partition``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fedfuse.cli._commands import COMMANDS
from fedfuse.cli._spec_flags import add_spec_flags, spec_from_args, spec_value
from fedfuse.data import format_label_stats
from fedfuse.recipes import (
    SIMULATION_DEFAULTS,
    FederationSpec,
    SimulationResult,
    build_federated_dataset,
    flat_names,
    format_use_report,
    simulate,
)

__all__ = ["add_parsers"]

DEMO_SPEC = FederationSpec.from_flat(
    {
        "model": "mlp",
        "dataset": "digits",
        "partition": "dirichlet",
        "alpha": 0.5,
        "num_parties": 10,
        "rounds": 25,
        "epochs": 2,
        "batch_size": 16,
        "optimizer": "sgd",
        "learning_rate": 0.1,
    }
)
DEMO_OUT = "fedfuse-demo-output"


def _pct(metrics: dict[str, Any] | None, key: str = "accuracy") -> str:
    return f"{100 * metrics[key]:.2f}" if metrics and key in metrics else "-"


def _num(metrics: dict[str, Any] | None, key: str = "loss") -> str:
    return f"{metrics[key]:.4f}" if metrics and key in metrics else "-"


def _round_table(result: SimulationResult) -> Table:
    table = Table(title=f"{result.spec.fusion.name} per round (accuracy in %)")
    private = any("epsilon" in r for r in result.history)
    columns = ["round", "parties", "train loss", "train acc", "central loss", "central acc",
               "federated loss", "federated acc"]  # fmt: skip
    if private:
        columns += ["epsilon", "delta", "sigma"]
    for col in columns:
        table.add_column(col, justify="right")
    for r in result.history:
        row = [
            str(r["round"]),
            f"{len(r['participants'])}/{len(r['sampled'])}",
            _num(r["train"]),
            _pct(r["train"]),
            _num(r.get("central")),
            _pct(r.get("central")),
            _num(r.get("federated")),
            _pct(r.get("federated")),
        ]
        if private:
            row += [f"{r['epsilon']:.3f}", f"{r['delta']:g}", f"{r['sigma']:g}"]
        table.add_row(*row)
    return table


def _rate(record: dict[str, Any]) -> str:
    """Parties trained per second in this round: its participants over its wall time."""
    seconds = record.get("seconds") or 0.0
    if seconds <= 0:
        return "-"
    rate = len(record["participants"]) / seconds
    return f"{rate:.0f}" if rate >= 10 else f"{rate:.2g}"


def _progress_text(record: dict[str, Any]) -> str:
    """What the progress bar shows after a round, e.g. ``acc 81.20% | 412 parties/s``."""
    return f"acc {_pct(record.get('central'))}% | {_rate(record)} parties/s"


def _run(spec: FederationSpec, out_dir: str, console: Console) -> SimulationResult:
    data = spec.data
    console.print(
        f"[bold]fedfuse[/] {spec.fusion.name} on [bold]{data.dataset}[/]: {spec.num_parties} "
        f"parties ({data.partition} partition), model {spec.model.name or 'mlp'}, "
        f"{spec.rounds} rounds"
    )
    columns = (
        TextColumn("round"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.description}"),
    )
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("", total=spec.rounds)

        def on_round(record: dict[str, Any]) -> None:
            progress.update(task, advance=1, description=_progress_text(record))

        result = simulate(spec, out_dir=out_dir, on_round=on_round)
    console.print(format_label_stats(result.dataset), highlight=False)
    if result.report:
        console.print(format_use_report(spec.use.name, result.report), highlight=False)
        for name, path in result.files.items():
            console.print(f"{name}: {path}")
        return result
    console.print(_round_table(result))
    if result.stop_reason:
        console.print(f"stopped after round {len(result.history)}: {result.stop_reason}")
    if not result.history:
        return result
    last = result.history[-1]
    console.print(f"federated model: central test accuracy {_pct(last.get('central'))}%")
    if result.centralized:
        console.print(
            f"centralized model (pooled data, {len(result.centralized)} epochs): "
            f"test accuracy {_pct(result.centralized[-1])}%"
        )
    for name, path in result.files.items():
        console.print(f"{name}: {path}")
    return result


def _add_threads_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: fastest for small models; raise it for big CNNs)",
    )


def _set_threads(args: argparse.Namespace, spec: FederationSpec) -> None:
    """Torch threads of this process: ``--threads``, or the spec's own ``threads`` setting
    where it has one (``--threads`` is then that setting's flag, see ``add_parsers``)."""
    threads = args.threads if "threads" in vars(args) else spec_value(spec, "threads")
    if threads < 1:
        raise ValueError(f"--threads must be >= 1, got {threads}")
    torch.set_num_threads(threads)


def _cmd_demo(args: argparse.Namespace) -> int:
    spec = DEMO_SPEC if args.rounds is None else DEMO_SPEC.replace(rounds=args.rounds)
    _set_threads(args, spec)
    _run(spec, args.out, Console())
    return 0


def _cmd_simulate(args: argparse.Namespace) -> int:
    spec = spec_from_args(args, SIMULATION_DEFAULTS)
    _set_threads(args, spec)
    _run(spec, args.out, Console())
    return 0


def _cmd_partition(args: argparse.Namespace) -> int:
    fed = build_federated_dataset(spec_from_args(args, SIMULATION_DEFAULTS))
    paths = fed.save_npz(args.out)
    print(format_label_stats(fed))
    print(f"wrote {len(paths)} party files to {Path(args.out).resolve()}")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    demo = sub.add_parser("demo", help=COMMANDS["demo"].help)
    demo.add_argument("--out", default=DEMO_OUT, help=f"output folder (default: {DEMO_OUT})")
    demo.add_argument("--rounds", type=int, default=None, help="rounds (default: 25)")
    _add_threads_flag(demo)
    demo.set_defaults(func=_cmd_demo)

    sim = sub.add_parser("simulate", help=COMMANDS["simulate"].help)
    sim.add_argument("--out", default="fedfuse-output", help="output folder (default: %(default)s)")
    add_spec_flags(sim, SIMULATION_DEFAULTS)
    if "threads" not in flat_names():  # else the spec's threads setting has the flag
        _add_threads_flag(sim)
    sim.set_defaults(func=_cmd_simulate)

    part = sub.add_parser("partition", help=COMMANDS["partition"].help)
    part.add_argument("--out", required=True, help="folder for data_party<i>.npz files")
    add_spec_flags(part, SIMULATION_DEFAULTS)
    part.set_defaults(func=_cmd_partition)
