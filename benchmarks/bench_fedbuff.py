"""FedBuff against synchronous FedAvg when parties' speeds differ by 10x (simulated clock).

What is measured
    Ten parties take 1 to 10 simulated seconds per local task (log-spaced, seeded order:
    ``fedfuse.runtime.spread_task_seconds``). Synchronous FedAvg waits for every sampled
    party, so a round lasts as long as its slowest party: all 10 parties per round (10 s a
    round), or 5 sampled per round. FedBuff (``Federation`` with
    ``Aggregation(mode="buffered")``) keeps all 10 parties training and fuses every
    K = 5 arrivals, scaling stale updates by 1/sqrt(1 + staleness). Reported: central test
    accuracy against simulated time, the simulated time to reach target accuracies, and the
    local tasks (compute) and uploads each used to get there. Every run gets the same
    simulated time budget.

Workload (see ``_fl.py``): Fashion-MNIST, 10 parties x 1000 images, IID and Dirichlet(0.5),
MLP 784-128-10, SGD lr 0.05, batch 32, 1 local epoch per task.

Run:  .venv/bin/python benchmarks/bench_fedbuff.py [--budget 150] [--quick]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import _fl
import torch

from fedfuse.federation import Aggregation, Federation, Sampling
from fedfuse.models import TorchAdapter, TrainConfig
from fedfuse.runtime import LocalPool, spread_task_seconds

TARGETS = (0.70, 0.75, 0.78)


def sync_run(fed, config, seconds, budget, *, count=None) -> list[dict[str, Any]]:
    """Synchronous FedAvg; each round lasts as long as its slowest sampled party."""
    federation = _fl.federation(fed, config, sampling=Sampling(count=count))
    clock, curve, tasks = 0.0, [], 0
    while True:
        record = federation.run_round()
        clock += max(seconds[p] for p in record["sampled"])
        if clock > budget:
            break
        tasks += len(record["sampled"])
        curve.append({"time": clock, "accuracy": record["central"]["accuracy"], "tasks": tasks})
    return curve


def fedbuff_run(fed, config, seconds, budget, *, buffer_size) -> list[dict[str, Any]]:
    """FedBuff: every party trains continuously on the pool's simulated clock; each step fuses
    ``buffer_size`` arrivals. Runs until the clock passes ``budget``."""
    torch.manual_seed(0)
    adapter = TorchAdapter(_fl.model_fn(fed)())
    federation = Federation(
        LocalPool.from_dataset(fed, adapter, seconds),
        adapter.get_weights(),
        config=config,
        aggregation=Aggregation(mode="buffered", buffer_size=buffer_size),
        central_eval=_fl.central_evaluator(fed),
    )
    curve, tasks = [], 0
    while True:
        record = federation.run_round()
        if record["time"] > budget:
            break
        tasks += len(record["participants"])
        curve.append(
            {"time": record["time"], "accuracy": record["central"]["accuracy"], "tasks": tasks}
        )
    return curve


def time_to(curve: list[dict[str, Any]], target: float) -> dict[str, Any] | None:
    return next((point for point in curve if point["accuracy"] >= target), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=150.0, help="simulated seconds per run")
    parser.add_argument("--per-party", type=int, default=1000)
    parser.add_argument("--quick", action="store_true", help="budget 30 s, 200 images per party")
    args = parser.parse_args()
    if args.quick:
        args.budget, args.per_party = 30.0, 200
    torch.set_num_threads(1)
    where = _fl.machine()
    print(f"bench_fedbuff on {where}")
    config = TrainConfig(epochs=1, batch_size=32, optimizer="sgd", learning_rate=0.05)
    data = {
        "IID": _fl.fashion_parties(10, args.per_party, "iid", seed=0),
        "Dirichlet(0.5)": _fl.fashion_parties(10, args.per_party, "dirichlet", seed=0, alpha=0.5),
    }
    results: dict[str, dict[str, Any]] = {}
    for data_name, fed in data.items():
        seconds = spread_task_seconds(fed.party_ids, fastest=1.0, spread=10.0, seed=0)
        runs = {
            "sync FedAvg, 10 per round": (sync_run, {}),
            "sync FedAvg, 5 per round": (sync_run, {"count": 5}),
            "FedBuff K=5, 10 training": (fedbuff_run, {"buffer_size": 5}),
        }
        results[data_name] = {}
        for label, (fn, kwargs) in runs.items():
            start = time.perf_counter()
            curve = fn(fed, config, seconds, args.budget, **kwargs)
            results[data_name][label] = {"curve": curve, "seconds": time.perf_counter() - start}
            last = curve[-1]
            print(
                f"{data_name:15s} {label:28s} t={last['time']:6.1f}  acc "
                f"{100 * last['accuracy']:6.2f}%  tasks {last['tasks']:4d}  "
                f"({results[data_name][label]['seconds']:.1f} s)",
                flush=True,
            )

    header = " | ".join(f"time to {100 * t:.0f}% (tasks)" for t in TARGETS)
    lines = [
        "# FedBuff vs synchronous FedAvg, party speeds 1-10 s per task",
        "",
        f"Measured on {where}.",
        "",
        f"Fashion-MNIST, 10 parties x {args.per_party} images, MLP 784-128-10, SGD lr 0.05, "
        "batch 32, 1 local epoch per task. Simulated clock: party i takes 1 to 10 s per task "
        "(log-spaced). Sync rounds last as long as their slowest sampled party. FedBuff: all "
        "10 parties train continuously, fuse every 5 arrivals, stale updates scaled by "
        f"1/sqrt(1 + staleness). Budget {args.budget:.0f} simulated seconds per run. "
        "Accuracy: central test set (10k images). Tasks: local trainings whose updates were "
        "fused by then (the compute spent).",
        "",
        f"| data | algorithm | {header} | accuracy at the end % | tasks |",
        "| --- | --- | " + " | ".join("---" for _ in TARGETS) + " | --- | --- |",
    ]
    for data_name, by_run in results.items():
        for label, r in by_run.items():
            cells = []
            for target in TARGETS:
                hit = time_to(r["curve"], target)
                cells.append("-" if hit is None else f"{hit['time']:.0f} s ({hit['tasks']})")
            last = r["curve"][-1]
            lines.append(
                f"| {data_name} | {label} | " + " | ".join(cells) + f" | "
                f"{100 * last['accuracy']:.2f} | {last['tasks']} |"
            )
    if args.quick:
        lines += ["", "**Quick run (smoke test): sizes are tiny, the numbers mean little.**"]
    markdown = "\n".join(lines) + "\n"
    print(markdown)
    _fl.write(
        "quick/fedbuff" if args.quick else "fedbuff",
        {"machine": where, "budget": args.budget, "per_party": args.per_party, "results": results},
        markdown,
    )


if __name__ == "__main__":
    main()
