"""Ensembles from edges against FedAvg on non-IID parties.

Workload: Fashion-MNIST, a seeded subset of 4000 training images split among 10 parties with a
Dirichlet(alpha) label skew; MLP 784-128-10; batch 32, 1 local epoch per round, 20 rounds for
FedAvg, and 20 local epochs for every edge model (the same local compute). The aggregator's
10k test images are split in two: 5000 it holds as unlabeled inputs to distill on, 5000 on which
every model is scored. Ensembles: uniform, weighted by each party's validation accuracy (its own
test split), class-wise weighted by the parties' label counts; the class-wise ensemble is
distilled into one MLP (30 epochs). Two local recipes: SGD lr 0.05 and Adam lr 0.001.

Run: ``PYTHONPATH=src .venv/bin/python benchmarks/bench_ensemble.py`` (a few minutes on 2 cores).
Writes ``benchmarks/results/ensemble.json`` and ``.md``.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from _fl import machine, write

from fedfuse.data import federate, load_dataset
from fedfuse.models import TrainConfig, mlp
from fedfuse.recipes import compare_ensemble

ALPHAS = (0.1, 0.3, 1.0)
RECIPES = {
    "sgd 0.05": TrainConfig(1, 32, "sgd", 0.05),
    "adam 0.001": TrainConfig(1, 32, "adam", 0.001),
}
COLUMNS = (
    "fedavg",
    "best_edge",
    "ensemble",
    "ensemble_weighted",
    "ensemble_classwise",
    "distilled",
)


def main() -> None:
    torch.set_num_threads(1)
    train, test = load_dataset("fashion_mnist")
    train = train.subset(np.random.default_rng(0).permutation(len(train))[:4000])
    runs = []
    for recipe, config in RECIPES.items():
        for alpha in ALPHAS:
            start = time.perf_counter()
            fed = federate(train, test, 10, "dirichlet", alpha=alpha, seed=0)
            report = compare_ensemble(
                fed,
                lambda: mlp((784,), 10, hidden=(128,)),
                config,
                20,
                weighting="classwise",
                distill_epochs=30,
                seed=0,
            )
            report.pop("history")
            report["best_edge"] = max(report["edges"].values())
            report.update(alpha=alpha, recipe=recipe, seconds=time.perf_counter() - start)
            runs.append(report)
            cells = ", ".join(f"{c} {100 * report[c]:.1f}%" for c in COLUMNS)
            print(f"{recipe} alpha={alpha}: {cells} ({report['seconds']:.0f} s)", flush=True)
    lines = [
        "# Ensembles from edges vs FedAvg (Fashion-MNIST, 10 non-IID parties)",
        "",
        f"Measured on {machine()}.",
        "",
        "4000 training images split by Dirichlet(alpha); MLP 784-128-10; FedAvg 20 rounds of 1 "
        "local epoch, edge models 20 local epochs each. Accuracy on 5000 central test images; "
        "the other 5000 are the aggregator's unlabeled distillation inputs. *weighted*: by each "
        "party's validation accuracy; *classwise*: per class by the parties' label counts; "
        "*distilled*: one MLP trained for 30 epochs to match the class-wise ensemble.",
        "",
        "| recipe | alpha | FedAvg | best edge | ensemble | weighted | classwise | distilled |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in runs:
        cells = " | ".join(f"{100 * r[c]:.1f}%" for c in COLUMNS)
        lines.append(f"| {r['recipe']} | {r['alpha']} | {cells} |")
    write("ensemble", {"machine": machine(), "runs": runs}, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
