"""Accuracy of FedAvg on non-IID Fashion-MNIST against centralized training of the same model.

What is compared
    FedAvg with 10 parties on two label-skewed partitions of Fashion-MNIST's training set,
    ``classes`` (each party holds exactly 2 classes) and ``dirichlet`` (alpha 0.5), against
    centralized training on all the data pooled. Same model (MLP 784-200-200-10, same
    initialisation seed), SGD lr 0.05, batch 32. Each FedAvg round is 1 local epoch on every
    party, so round R has seen the data R times: it is compared with centralized training after
    R epochs. Accuracy is measured every round on the 10k test set (``central_eval``).

Run it (results go to ``benchmarks/results/accuracy.{json,md,png}``)::

    .venv/bin/python benchmarks/bench_accuracy.py           # 20 rounds on all 60k examples
    .venv/bin/python benchmarks/bench_accuracy.py --quick   # a smoke test in well under a minute
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from fedfuse import ArrayDataset, Federation, LocalPool, TorchAdapter, TrainConfig
from fedfuse.data import federate, format_label_stats, load_dataset
from fedfuse.models import mlp, train_centralized

NUM_PARTIES = 10
HIDDEN = (200, 200)
CONFIG = TrainConfig(epochs=1, batch_size=32, optimizer="sgd", learning_rate=0.05)
PARTITIONS = (
    ("FedAvg 2-class", "classes", {"classes_per_party": 2}),
    ("FedAvg Dir(0.5)", "dirichlet", {"alpha": 0.5}),
)
CENTRALIZED = "centralized same epochs"
REPORT_ROUNDS = (1, 5, 10, 20)
RESULTS_DIR = Path(__file__).resolve().parent / "results"


def model_fn() -> torch.nn.Module:
    return mlp((1, 28, 28), 10, HIDDEN)


def subsample(data: ArrayDataset, limit: int | None, seed: int) -> ArrayDataset:
    if limit is None or limit >= len(data):
        return data
    return data.subset(np.sort(np.random.default_rng(seed).permutation(len(data))[:limit]))


def run_fedavg(
    train: ArrayDataset, test: ArrayDataset, scheme: str, params: dict, rounds: int, seed: int
) -> tuple[list[dict], dict[str, list[int]]]:
    """FedAvg for ``rounds`` rounds; per-round test metrics and each party's label counts."""
    fed = federate(train, test, NUM_PARTIES, scheme, seed=seed, local_test_fraction=0.0, **params)
    print(format_label_stats(fed))
    torch.manual_seed(seed)  # the same initial model as train_centralized builds
    adapter = TorchAdapter(model_fn())
    evaluator = TorchAdapter(model_fn())

    def central_eval(weights: dict[str, np.ndarray]) -> dict[str, float]:
        evaluator.set_weights(weights)
        return evaluator.evaluate(test)

    federation = Federation(
        LocalPool.from_dataset(fed, adapter),
        adapter.get_weights(),
        fusion="fedavg",
        config=CONFIG,
        seed=seed,
        central_eval=central_eval,
        federated_eval=False,
    )
    curve = []

    def on_round(record: dict) -> None:
        central = record["central"]
        curve.append(
            {
                "round": record["round"],
                "accuracy": central["accuracy"],
                "loss": central["loss"],
                "train_loss": record["train"].get("loss"),
                "seconds": record["seconds"],
            }
        )
        print(
            f"  round {record['round']:3d}: test accuracy {central['accuracy']:.4f}  "
            f"loss {central['loss']:.4f}  ({record['seconds']:.1f} s)",
            flush=True,
        )

    federation.run(rounds, on_round=on_round)
    return curve, {pid: counts.tolist() for pid, counts in fed.label_stats().items()}


def report_rounds(rounds: int) -> list[int]:
    return sorted({r for r in REPORT_ROUNDS if r <= rounds} | {rounds})


def markdown(result: dict) -> str:
    s = result["settings"]
    m = result["machine"]
    names = [name for name, _, _ in PARTITIONS] + [CENTRALIZED]
    lines = [
        "# FedAvg accuracy on Fashion-MNIST",
        "",
        f"Measured {m['date']} on {m['platform']}, {m['cpu_count']} CPUs, torch {m['torch']}.",
        "",
        f"{s['parties']} parties, MLP 784-200-200-10, SGD lr {s['learning_rate']}, batch "
        f"{s['batch_size']}, {s['local_epochs']} local epoch per round; "
        f"{s['train_examples']} training examples"
        + (" (subsampled)" if s["subsampled"] else " (all of them)")
        + f", test accuracy on {s['test_examples']} test examples. Centralized training after "
        "R epochs is listed at round R (the same number of passes over the data).",
        "",
        "| rounds | " + " | ".join(names) + " |",
        "| --- | " + " | ".join("---" for _ in names) + " |",
    ]
    for r in report_rounds(s["rounds"]):
        cells = [f"{result['curves'][name][r - 1]['accuracy']:.4f}" for name in names]
        lines.append(f"| {r} | " + " | ".join(cells) + " |")
    lines += ["", "Wall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in result["seconds"].items())]
    if s["quick"]:
        lines += ["", "**Quick run (smoke test): sizes are tiny, the numbers mean little.**"]
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    styles = {"FedAvg 2-class": "o-", "FedAvg Dir(0.5)": "s-", CENTRALIZED: "k:"}
    for name, curve in result["curves"].items():
        ax.plot(
            [c["round"] for c in curve], [c["accuracy"] for c in curve], styles[name], label=name
        )
    s = result["settings"]
    ax.set_title(
        f"Fashion-MNIST, {s['parties']} parties, MLP, {s['train_examples']} training examples"
    )
    ax.set_xlabel("round (= epochs over the data)")
    ax.set_ylabel("test accuracy")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    parser.add_argument("--rounds", type=int, default=None, help="default 20 (3 with --quick)")
    parser.add_argument("--examples", type=int, default=None, help="subsample the training set")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out-dir", type=Path, default=None, help="default: results/ (results/quick/ with --quick)"
    )
    args = parser.parse_args(argv)
    rounds = args.rounds or (3 if args.quick else 20)
    limit = args.examples or (3000 if args.quick else None)
    out_dir = args.out_dir or (RESULTS_DIR / "quick" if args.quick else RESULTS_DIR)
    if args.threads:
        torch.set_num_threads(args.threads)
    machine = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    print("machine:", json.dumps(machine))

    full_train, full_test = load_dataset("fashion_mnist")
    train = subsample(full_train, limit, args.seed)
    test = subsample(full_test, 1000 if args.quick else None, args.seed)
    print(f"training examples: {len(train)} of {len(full_train)}; test examples: {len(test)}")

    curves: dict[str, list[dict]] = {}
    label_counts: dict[str, dict[str, list[int]]] = {}
    seconds: dict[str, float] = {}
    for name, scheme, params in PARTITIONS:
        print(f"\n{name}: partition {scheme!r} {params}", flush=True)
        start = time.perf_counter()
        curves[name], label_counts[name] = run_fedavg(
            train, test, scheme, params, rounds, args.seed
        )
        seconds[name] = time.perf_counter() - start

    print(f"\n{CENTRALIZED}: {rounds} epochs on all {len(train)} examples", flush=True)
    start = time.perf_counter()
    centralized = train_centralized(model_fn, train, test, CONFIG, rounds, seed=args.seed)
    seconds[CENTRALIZED] = time.perf_counter() - start
    curves[CENTRALIZED] = [
        {"round": c["epoch"], "accuracy": c["accuracy"], "loss": c["loss"]} for c in centralized
    ]

    result = {
        "machine": machine,
        "settings": {
            "quick": args.quick,
            "parties": NUM_PARTIES,
            "rounds": rounds,
            "seed": args.seed,
            "model": "MLP 784-200-200-10",
            "optimizer": CONFIG.optimizer,
            "learning_rate": CONFIG.learning_rate,
            "batch_size": CONFIG.batch_size,
            "local_epochs": CONFIG.epochs,
            "train_examples": len(train),
            "test_examples": len(test),
            "subsampled": len(train) < len(full_train),
            "partitions": {name: {"scheme": s, **p} for name, s, p in PARTITIONS},
        },
        "curves": curves,
        "label_counts": label_counts,
        "seconds": seconds,
    }
    md = markdown(result)
    print("\n" + md)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "accuracy.json").write_text(json.dumps(result, indent=1) + "\n")
    (out_dir / "accuracy.md").write_text(md)
    plot(result, out_dir / "accuracy.png")
    print(f"wrote accuracy.json, accuracy.md and accuracy.png to {out_dir}")


if __name__ == "__main__":
    main()
