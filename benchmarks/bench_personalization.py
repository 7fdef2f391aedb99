"""Personalization: per-party accuracy of local-only, global, fine-tuned and personal-layer models.

Workload: Fashion-MNIST (Debian's ``dataset-fashion-mnist``), a seeded subset of 3000 training
images split among 10 parties with a Dirichlet(alpha) label skew; each party keeps 20% of its
images as its own test split, on which all its numbers are measured. MLP 784-128-10, SGD lr
0.05, batch 32, 1 local epoch per round, 30 rounds. ``compare_personalization`` trains with the
same local compute: *local* (each party alone for 30 epochs), *global* (FedAvg), *finetuned*
(the global model, 5 more local epochs), *personal* (FedAvg whose classifier head never leaves
the parties). The same on scikit-learn's digits (10 parties, MLP 64-64-10, SGD lr 0.1).

Run: ``PYTHONPATH=src .venv/bin/python benchmarks/bench_personalization.py`` (a few minutes on 2
cores). Writes ``benchmarks/results/personalization.json`` and ``.md``.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from _fl import machine, write

from fedfuse.data import federate, load_dataset
from fedfuse.models import TrainConfig, mlp
from fedfuse.recipes import PERSONALIZATION_MODELS, compare_personalization

ALPHAS = (0.1, 0.3, 1.0)
ROUNDS, FINETUNE = 30, 5


def workloads():
    train, test = load_dataset("fashion_mnist")
    subset = train.subset(np.random.default_rng(0).permutation(len(train))[:3000])
    yield "fashion_mnist", subset, test, (128,), TrainConfig(1, 32, "sgd", 0.05)
    train, test = load_dataset("digits")
    yield "digits", train, test, (64,), TrainConfig(1, 16, "sgd", 0.1)


def main() -> None:
    torch.set_num_threads(1)
    runs = []
    for name, train, test, hidden, config in workloads():
        for alpha in ALPHAS:
            start = time.perf_counter()
            fed = federate(train, test, 10, "dirichlet", alpha=alpha, seed=0)
            shape = train.x.shape[1:]
            report = compare_personalization(
                fed,
                lambda shape=shape, hidden=hidden: mlp(shape, 10, hidden=hidden),
                config,
                ROUNDS,
                finetune_epochs=FINETUNE,
                seed=0,
            )
            report.pop("history")
            report.update(dataset=name, alpha=alpha, seconds=time.perf_counter() - start)
            runs.append(report)
            means = ", ".join(f"{m} {100 * report['mean'][m]:.1f}%" for m in PERSONALIZATION_MODELS)
            print(f"{name} alpha={alpha}: {means} ({report['seconds']:.0f} s)", flush=True)
    lines = [
        "# Personalization: each party's accuracy on its own test split",
        "",
        f"Measured on {machine()}.",
        "",
        "10 parties, Dirichlet(alpha) label skew, 30 rounds of 1 local epoch; *local*: each "
        "party alone for 30 epochs; *global*: FedAvg; *finetuned*: FedAvg's model plus 5 local "
        "epochs; *personal*: FedAvg with the classifier head kept by each party. Means weighted "
        "by each party's test examples. Fashion-MNIST: 3000 training images, MLP 784-128-10, "
        "SGD 0.05; digits: MLP 64-64-10, SGD 0.1.",
        "",
        "| dataset | alpha | local | global | finetuned | personal |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in runs:
        cells = " | ".join(f"{100 * r['mean'][m]:.1f}%" for m in PERSONALIZATION_MODELS)
        lines.append(f"| {r['dataset']} | {r['alpha']} | {cells} |")
    detail = next(r for r in runs if r["dataset"] == "fashion_mnist" and r["alpha"] == 0.3)
    lines += ["", "Per party, Fashion-MNIST, alpha 0.3:", ""]
    lines += ["| party | test examples | local | global | finetuned | personal |"]
    lines += ["| --- | --- | --- | --- | --- | --- |"]
    for pid, p in detail["parties"].items():
        cells = " | ".join(f"{100 * p[m]:.1f}%" for m in PERSONALIZATION_MODELS)
        lines.append(f"| {pid} | {p['test_examples']} | {cells} |")
    write("personalization", {"machine": machine(), "runs": runs}, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
