"""Decentralized learning with no aggregator: Edge-consensus Learning against gossip SGD, D-PSGD
and centralized training, on non-IID Fashion-MNIST (the NTT press release's experiment).

What is compared
    8 nodes on a ring (and on a random 3-regular graph), each holding 5 of the 10 Fashion-MNIST
    classes (``classes`` partition, k=5: every class lives on 4 nodes, all classes are covered).
    Every node trains the same small GroupNorm CNN (``gn_cnn``, 54k parameters) from the same
    initialisation with minibatch SGD (batch 32, step 0.05), at its own seeded speed (rates
    U[0.5, 1.5]), and after every 2 of its own steps sends its variables to each neighbour at
    that moment: asynchronous exchanges, no barrier, no aggregator (``run_consensus``'s
    event-driven clock). Algorithms: ECL-ISVR with ADMM exchanges (fedfuse's default ECL), ECL
    with PDMM exchanges (same eta), gossip SGD (average with one random neighbour), D-PSGD
    (Metropolis mixing with every neighbour). Baseline: the same CNN, same initialisation, same
    SGD, trained on the pooled data for the same number of epochs (one epoch of the clock is one
    pass of an average-speed node over its data, so all nodes together compute as many
    gradients as the baseline). Reported: every node's accuracy on the whole 10k test set at the
    end (mean, worst, best), the accuracy of the nodes' average model, the consensus distance,
    and per-epoch curves on a fixed 1000-image test subset.

CPU budget
    Two shared cores: a seeded subset of the training set (``--train-size``, default 9600, 1200
    per node) and 10 epochs keep the whole run within about 25 minutes there.

Run it (results go to ``benchmarks/results/consensus.{json,md,png}``)::

    .venv/bin/python benchmarks/bench_consensus.py            # the full comparison
    .venv/bin/python benchmarks/bench_consensus.py --quick    # a smoke test in about a minute
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch

from fedfuse.consensus import ConsensusConfig, plot_runs, run_consensus

RESULTS_DIR = Path(__file__).resolve().parent / "results"
ALGORITHMS = (
    ("ECL-ISVR (ADMM)", {"algorithm": "ecl-isvr", "exchange": "admm"}),
    ("ECL-ISVR (PDMM)", {"algorithm": "ecl-isvr", "exchange": "pdmm"}),
    ("gossip SGD", {"algorithm": "gossip"}),
    ("D-PSGD", {"algorithm": "dpsgd"}),
)
TOPOLOGIES = (
    ("ring", {"topology": "ring"}, ALGORITHMS),
    (
        "random 3-regular",
        {"topology": "random_regular", "degree": 3},
        tuple(a for a in ALGORITHMS if "PDMM" not in a[0]),
    ),
)


def machine() -> str:
    return (
        f"{platform.platform()} ({platform.machine()}), {len(os.sched_getaffinity(0))} usable "
        f"CPU(s), torch {torch.__version__} with {torch.get_num_threads()} thread(s), "
        f"load average at start {os.getloadavg()[0]:.2f}"
    )


def _summary(label: str, topology: str, result: Any, seconds: float) -> dict[str, Any]:
    final = result.final
    return {
        "topology": topology,
        "algorithm": label,
        "mean_accuracy": final["mean_accuracy"],
        "min_accuracy": final["min_accuracy"],
        "max_accuracy": final["max_accuracy"],
        "average_model_accuracy": final["average_model"]["accuracy"],
        "consensus_distance": final["consensus_distance"],
        "exchanges": final["exchanges"],
        "megabytes_sent": final["bytes_sent"] / 1e6,
        "wall_time_s": seconds,
        "curve": [
            {
                k: r[k]
                for k in (
                    "epoch",
                    "mean_accuracy",
                    "min_accuracy",
                    "max_accuracy",
                    "consensus_distance",
                )
            }
            | {"average_model_accuracy": r["average_model"]["accuracy"]}
            for r in result.history
        ],
        "edges": result.topology.to_dict()["edges"],
    }


def _markdown(doc: dict[str, Any]) -> str:
    s, central = doc["settings"], doc["centralized"]
    lines = [
        "# Decentralized learning: ECL against gossip SGD, D-PSGD and centralized training",
        "",
        f"Measured {doc['date']} on {doc['machine']}.",
        "",
        f"Fashion-MNIST, {s['train_size']} training images (seeded subset) split among "
        f"{s['num_nodes']} nodes, {s['classes_per_node']} of the 10 classes each; model "
        f"`{s['model']}` (GroupNorm CNN); SGD step {s['learning_rate']}, batch {s['batch_size']}; "
        f"{s['epochs']} epochs; a node exchanges after every {s['local_steps']} of its own steps; "
        f"node rates U[{1 - s['speed_spread']:.1f}, {1 + s['speed_spread']:.1f}]. Accuracy on the "
        'whole 10k test set at the end; "mean/worst/best" are over the nodes\' own models.',
        "",
        f"**Centralized** (same CNN, pooled data, {s['epochs']} epochs): "
        f"**{100 * central['final_accuracy']:.2f}%** ({central['wall_time_s']:.0f} s).",
        "",
        "| graph | algorithm | mean node acc | worst | best | avg-model acc | gap to "
        "centralized | consensus dist | MB sent | wall s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in doc["runs"]:
        gap = 100 * (r["mean_accuracy"] - central["final_accuracy"])
        lines.append(
            f"| {r['topology']} | {r['algorithm']} | {100 * r['mean_accuracy']:.2f} | "
            f"{100 * r['min_accuracy']:.2f} | {100 * r['max_accuracy']:.2f} | "
            f"{100 * r['average_model_accuracy']:.2f} | {gap:+.2f} | "
            f"{r['consensus_distance']:.3f} | {r['megabytes_sent']:.0f} | {r['wall_time_s']:.0f} |"
        )
    lines += ["", f"Total wall time {doc['total_wall_time_s'] / 60:.1f} min.", ""]
    lines += doc.get("notes", [])
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    parser.add_argument("--epochs", type=int, default=None, help="default 10 (2 with --quick)")
    parser.add_argument("--train-size", type=int, default=None, help="default 9600")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out-dir", type=Path, default=None, help="default: results/ (results/quick/ with --quick)"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    out_dir = args.out_dir or (RESULTS_DIR / "quick" if args.quick else RESULTS_DIR)
    out_dir.mkdir(parents=True, exist_ok=True)
    base = ConsensusConfig(
        dataset="fashion_mnist",
        model="gn_cnn",
        num_nodes=8,
        partition="classes",
        classes_per_node=5,
        train_size=args.train_size or (1600 if args.quick else 9600),
        test_size=1000 if not args.quick else 500,
        epochs=args.epochs or (2 if args.quick else 10),
        batch_size=32,
        learning_rate=0.05,
        local_steps=2,
        exchange_prob=1.0,
        speed_spread=0.5,
        seed=args.seed,
        centralized=False,
    )
    started = time.perf_counter()
    doc: dict[str, Any] = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": machine(),
        "settings": base.to_dict(),
        "runs": [],
    }
    curves: dict[str, list] = {}
    centralized_curve: list = []
    for topo_label, topo_settings, algorithms in TOPOLOGIES:
        for label, settings in algorithms:
            first = not doc["runs"]
            result = run_consensus(base, **topo_settings, **settings, centralized=first)
            # Training plus the per-epoch evaluations, without loading data or the baseline.
            seconds = result.final["simulation_wall_time_s"]
            if first:
                central_s = result.centralized_final["wall_time_s"]
                centralized_curve = result.centralized
                doc["centralized"] = {
                    "final_accuracy": result.centralized_final["accuracy"],
                    "curve": result.centralized,
                    "wall_time_s": central_s,
                }
            summary = _summary(label, topo_label, result, seconds)
            doc["runs"].append(summary)
            curves[f"{topo_label}: {label}"] = result.history
            print(
                f"{topo_label:16s} {label:16s} mean {100 * summary['mean_accuracy']:.2f}% "
                f"(worst {100 * summary['min_accuracy']:.2f}%), average model "
                f"{100 * summary['average_model_accuracy']:.2f}%, consensus "
                f"{summary['consensus_distance']:.3f}, {seconds:.0f} s",
                flush=True,
            )
    print(f"centralized: {100 * doc['centralized']['final_accuracy']:.2f}%")
    doc["total_wall_time_s"] = time.perf_counter() - started
    (out_dir / "consensus.json").write_text(json.dumps(doc, indent=1))
    (out_dir / "consensus.md").write_text(_markdown(doc))
    plot_runs(
        out_dir / "consensus.png",
        curves,
        centralized_curve,
        title="8 nodes, 5 of 10 Fashion-MNIST classes each, asynchronous exchanges",
    )
    print(f"wrote {out_dir / 'consensus.md'} ({doc['total_wall_time_s'] / 60:.1f} min)")


if __name__ == "__main__":
    main()
