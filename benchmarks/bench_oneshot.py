"""One-shot fusion of edge models trained independently from different random inits.

Each party builds its model from its own seed, trains it alone, and sends it once. The
aggregator fuses: a *plain* average, *matched* (units matched by activation correlation on up
to 2000 unlabeled central test images, then averaged), *weight_matched* (units matched by
weights, no data); each also with the output layer averaged class by class with the parties'
label counts (*classwise*). Every model is scored on the union of the parties' own test splits.

Workloads: scikit-learn's digits with an MLP 64-256-256-10 (Adam 0.003, 30 epochs), and
Fashion-MNIST (a seeded 4000-image subset) with an MLP 784-256-256-10 (Adam 0.001, 10 epochs)
and a small CNN (conv16-pool-conv32-pool-fc128-fc10) (Adam 0.001, 6 epochs); partitions: IID,
Dirichlet(0.5), Dirichlet(0.3), and 6 of 10 classes per party; 2 or 3 parties; seeds 0 and 1.

Run: ``PYTHONPATH=src .venv/bin/python benchmarks/bench_oneshot.py`` (a few minutes on 2 cores).
Writes ``benchmarks/results/oneshot.json`` and ``.md``.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from _fl import machine, write
from torch import nn

from fedfuse.data import federate, load_dataset
from fedfuse.models import TrainConfig
from fedfuse.recipes import compare_oneshot

FUSIONS = (
    "plain",
    "matched",
    "weight_matched",
    "plain_classwise",
    "matched_classwise",
    "weight_matched_classwise",
)
PARTITIONS = {
    "iid, 2 parties": (2, "iid", {}),
    "dirichlet 0.5, 3 parties": (3, "dirichlet", {"alpha": 0.5}),
    "dirichlet 0.3, 3 parties": (3, "dirichlet", {"alpha": 0.3}),
    "6 classes each, 2 parties": (2, "classes", {"classes_per_party": 6}),
}


def _mlp(inputs: int):
    return lambda: nn.Sequential(
        nn.Flatten(), nn.Linear(inputs, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
        nn.Linear(256, 10),
    )  # fmt: skip


def _cnn():
    return nn.Sequential(
        nn.Conv2d(1, 16, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(16, 32, 3), nn.ReLU(),
        nn.MaxPool2d(2), nn.Flatten(), nn.Linear(32 * 5 * 5, 128), nn.ReLU(), nn.Linear(128, 10),
    )  # fmt: skip


def workloads():
    train, test = load_dataset("digits")
    yield "digits", "mlp", train, test, _mlp(64), TrainConfig(30, 32, "adam", 0.003)
    train, test = load_dataset("fashion_mnist")
    train = train.subset(np.random.default_rng(0).permutation(len(train))[:4000])
    train = type(train)(train.x.reshape(-1, 1, 28, 28), train.y)
    test = type(test)(test.x.reshape(-1, 1, 28, 28), test.y)
    yield "fashion_mnist", "mlp", train, test, _mlp(784), TrainConfig(10, 32, "adam", 0.001)
    yield "fashion_mnist", "cnn", train, test, _cnn, TrainConfig(6, 32, "adam", 0.001)


def main() -> None:
    torch.set_num_threads(1)
    runs = []
    for dataset, model, train, test, model_fn, config in workloads():
        for partition, (parties, scheme, params) in PARTITIONS.items():
            for seed in (0, 1):
                start = time.perf_counter()
                fed = federate(train, test, parties, scheme, seed=seed, **params)
                r = compare_oneshot(fed, model_fn, config, seed=seed)
                r["best_edge"] = max(r["edges"].values())
                r.update(dataset=dataset, model=model, partition=partition, seed=seed)
                r["seconds"] = time.perf_counter() - start
                runs.append(r)
                cells = ", ".join(f"{f} {100 * r[f]:.1f}%" for f in ("best_edge", *FUSIONS))
                print(f"{dataset} {model} {partition} seed {seed}: {cells}", flush=True)
    lines = [
        "# One-shot fusion of independently initialized edge models",
        "",
        f"Measured on {machine()}.",
        "",
        "Accuracy on the union of the parties' test splits. *best edge*: the best single "
        "party's model; *plain*: coordinate-wise average; *matched*: units matched by "
        "activation correlation on unlabeled central inputs, then averaged; *weight matched*: "
        "by weights, no data; *classwise*: output layer averaged class by class with the "
        "parties' label counts. Mean of seeds 0 and 1.",
        "",
        "| data | model | partition | best edge | plain | matched | weight matched "
        "| plain classwise | matched classwise | weight matched classwise |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    keys = dict.fromkeys((r["dataset"], r["model"], r["partition"]) for r in runs)
    for key in keys:
        group = [r for r in runs if (r["dataset"], r["model"], r["partition"]) == key]
        cells = " | ".join(
            f"{100 * np.mean([r[f] for r in group]):.1f}%" for f in ("best_edge", *FUSIONS)
        )
        lines.append(f"| {' | '.join(key)} | {cells} |")
    write("oneshot", {"machine": machine(), "runs": runs}, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
