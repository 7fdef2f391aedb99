"""Speed and memory of fedfuse's simulation against a plain PyTorch loop doing the same training.

What is compared
    *fedfuse*: ``Federation(LocalPool.from_dataset(fed, adapter), ...).run(rounds)`` with FedAvg,
    no central or federated evaluation. *plain*: a FedAvg loop written in plain PyTorch, without
    fedfuse, doing exactly the same training: the same parties' data (partitioned once, with
    fedfuse's ``federate``, and handed to both sides as index arrays), the same model (MLP
    784-200-200-10, same initialisation seed), the same per-party, per-round seeds (fedfuse's
    seeding contract, ``derive_seed``, copied below), SGD lr 0.05, batch 32, 1 local epoch, a fresh
    optimizer per party and round, ``torch.manual_seed`` before each party's training and
    ``torch.randperm`` for the batch order, and example-weighted averaging of the parties' models.
    Both must therefore end with the same global weights; the script checks that they do.

    A third, diagnostic side, *plain+metrics*, is the plain loop plus the per-batch loss and
    accuracy bookkeeping that ``TorchAdapter.fit`` does, to tell that cost apart from the rest of
    fedfuse's overhead.

How it is measured
    Every run is a fresh subprocess of this script (``--worker``). It loads the data, builds the
    model and warms PyTorch up (none of that is timed), then times training with
    ``time.perf_counter``. Memory: the peak RSS is reset (``/proc/self/clear_refs``) after set-up,
    so the peak RSS (``VmHWM``) at the end is the peak *during training*; "above baseline" is that
    peak minus the RSS right after set-up. (``ru_maxrss`` is recorded too but not used: a
    subprocess inherits its parent's peak at fork, so it never reads below the driver's RSS.)
    Repetitions alternate the order of the sides to spread the noise of a shared machine; best
    and median are reported. PyTorch runs 1 thread by default (``--threads``): a batch-32 MLP
    gains little from more, and threads competing with other load make timings erratic. The goal
    is fedfuse <= 1.05 x plain; it is reported, never enforced.

Run it (results go to ``benchmarks/results/speed.json`` and ``speed.md``)::

    .venv/bin/python benchmarks/bench_speed.py            # 10x5 and 100x3 on 60k Fashion-MNIST
    .venv/bin/python benchmarks/bench_speed.py --quick    # a smoke test in well under a minute
"""

from __future__ import annotations

import argparse
import datetime
import gc
import gzip
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

# fedfuse is imported inside the functions that use it, so that a plain worker process never
# loads it: the plain side is PyTorch and numpy only.

SIDES = ("plain", "fedfuse", "plain+metrics")
LEARNING_RATE = 0.05
BATCH_SIZE = 32
LOCAL_EPOCHS = 1
HIDDEN = (200, 200)
INPUT_SIZE = 28 * 28
NUM_CLASSES = 10
GOAL_RATIO = 1.05
FULL_WORKLOADS = ((10, 5), (100, 3))
QUICK_WORKLOADS = ((10, 2), (20, 1))
QUICK_EXAMPLES = 6000
RESULTS_DIR = Path(__file__).resolve().parent / "results"

Weights = dict[str, np.ndarray]


# --- what both sides share: data files, the model, the seeding contract -----------------------


def read_idx(path: Path) -> np.ndarray:
    """An idx file (MNIST format, optionally gzipped) as a numpy array."""
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    ndim = raw[3]
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def idx_file(data_dir: Path, stem: str) -> Path:
    plain = data_dir / stem
    return plain if plain.is_file() else data_dir / f"{stem}.gz"


def load_train_labels(data_dir: Path) -> np.ndarray:
    return read_idx(idx_file(data_dir, "train-labels-idx1-ubyte")).astype(np.int64)


def load_train(data_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST's training set as fedfuse loads it: float32 (N, 1, 28, 28) in [0, 1]."""
    images = read_idx(idx_file(data_dir, "train-images-idx3-ubyte"))
    x = images[:, None, :, :].astype(np.float32) / np.float32(255.0)
    return x, load_train_labels(data_dir)


def build_mlp() -> nn.Module:
    """MLP 784-200-200-10, the same layers (and parameter names) as ``fedfuse.models.mlp``."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = INPUT_SIZE
    for h in HIDDEN:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, NUM_CLASSES))
    return nn.Sequential(*layers)


def party_seed(seed: int, round_num: int, party_id: str) -> int:
    """fedfuse's seeding contract (``fedfuse.federation.derive_seed``), copied."""
    state = np.random.SeedSequence([seed, round_num, zlib.crc32(party_id.encode())])
    return int(state.generate_state(1, dtype=np.uint32)[0])


def party_id(i: int) -> str:
    return f"party_{i}"


# --- the plain PyTorch side -------------------------------------------------------------------


def plain_local_train(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    seed: int,
    loss_fn: nn.Module,
    track_metrics: bool,
) -> None:
    """One party's local training, with or without fedfuse's per-batch metric bookkeeping."""
    torch.manual_seed(seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE)
    model.train()
    n = len(y)
    loss_sum = torch.zeros((), dtype=torch.float64)
    correct = torch.zeros((), dtype=torch.int64)
    for _ in range(LOCAL_EPOCHS):
        order = torch.randperm(n)
        for start in range(0, n, BATCH_SIZE):
            idx = order[start : start + BATCH_SIZE]
            xb, yb = x[idx], y[idx]
            optimizer.zero_grad(set_to_none=True)
            out = model(xb)
            loss = loss_fn(out, yb)
            loss.backward()
            optimizer.step()
            if track_metrics:
                with torch.no_grad():
                    loss_sum += loss.detach() * len(idx)
                    correct += (out.argmax(dim=1) == yb).sum()


def plain_setup(
    x: np.ndarray, y: np.ndarray, parts: list[np.ndarray], rounds: int, seed: int, metrics: bool
) -> Callable[[], Weights]:
    """Build the plain FedAvg loop; the returned function trains and returns the final weights."""
    parties = [(torch.from_numpy(x[idx]), torch.from_numpy(y[idx])) for idx in parts]
    total = sum(len(py) for _, py in parties)
    torch.manual_seed(seed)
    model = build_mlp()
    loss_fn = nn.CrossEntropyLoss()

    def run() -> Weights:
        global_w = {name: t.detach().clone() for name, t in model.state_dict().items()}
        for round_num in range(1, rounds + 1):
            acc = {name: torch.zeros_like(t, dtype=torch.float64) for name, t in global_w.items()}
            for i, (px, py) in enumerate(parties):
                model.load_state_dict(global_w)
                seed_i = party_seed(seed, round_num, party_id(i))
                plain_local_train(model, px, py, seed_i, loss_fn, metrics)
                with torch.no_grad():
                    for name, t in model.state_dict().items():
                        acc[name].add_((t - global_w[name]).mul_(len(py)))
            # w + sum_k n_k (w_k - w) / sum_k n_k: the example-weighted mean of the parties'
            # models, folded in float64 in the same order as fedfuse, so results match exactly.
            global_w = {name: global_w[name] + (a / total).float() for name, a in acc.items()}
        return {name: t.numpy() for name, t in global_w.items()}

    return run


# --- the fedfuse side -------------------------------------------------------------------------


def fedfuse_setup(
    x: np.ndarray, y: np.ndarray, parts: list[np.ndarray], rounds: int, seed: int
) -> Callable[[], Weights]:
    """Build a fedfuse simulation; the returned function runs it and returns the final weights."""
    from fedfuse import (
        ArrayDataset,
        FederatedDataset,
        Federation,
        LocalPool,
        PartyData,
        TorchAdapter,
        TrainConfig,
    )
    from fedfuse.models import mlp

    fed = FederatedDataset(
        {party_id(i): PartyData(ArrayDataset(x[idx], y[idx])) for i, idx in enumerate(parts)},
        num_classes=NUM_CLASSES,
    )
    torch.manual_seed(seed)
    adapter = TorchAdapter(mlp((1, 28, 28), NUM_CLASSES, HIDDEN))
    pool = LocalPool.from_dataset(fed, adapter)
    config = TrainConfig(
        epochs=LOCAL_EPOCHS, batch_size=BATCH_SIZE, optimizer="sgd", learning_rate=LEARNING_RATE
    )

    def run() -> Weights:
        federation = Federation(
            pool,
            adapter.get_weights(),
            fusion="fedavg",
            config=config,
            seed=seed,
            central_eval=None,
            federated_eval=False,
        )
        federation.run(rounds)
        return dict(federation.weights)

    return run


# --- one measured run (a subprocess) ----------------------------------------------------------


def warm_up() -> None:
    """A few steps on a throwaway model, so PyTorch's one-time start-up cost is not timed."""
    model = build_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE)
    xb, yb = torch.rand(BATCH_SIZE, 1, 28, 28), torch.randint(0, NUM_CLASSES, (BATCH_SIZE,))
    for _ in range(50):
        optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(xb), yb).backward()
        optimizer.step()


def memory_kb(field: str) -> int:
    """``VmHWM`` (peak RSS) or ``VmRSS`` of this process in KiB, from ``/proc/self/status``.

    Not ``ru_maxrss``: a subprocess inherits its parent's peak RSS at fork, so ``ru_maxrss``
    never reads below the driver's own RSS.
    """
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not found in /proc/self/status")


def reset_peak_rss() -> None:
    """Make ``VmHWM`` count from now on (Linux >= 4.0)."""
    Path("/proc/self/clear_refs").write_text("5")


def worker(args: argparse.Namespace) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    x, y = load_train(Path(args.data_dir))
    with np.load(args.parts) as archive:
        parts = [archive[f"idx_{i}"] for i in range(len(archive.files))]
    if args.worker == "fedfuse":
        run = fedfuse_setup(x, y, parts, args.rounds, args.seed)
    else:
        run = plain_setup(x, y, parts, args.rounds, args.seed, args.worker == "plain+metrics")
    del x, y  # each side now holds its own copy of the parties' data
    warm_up()
    gc.collect()
    reset_peak_rss()
    baseline_kb = memory_kb("VmRSS")
    start = time.perf_counter()
    weights = run()
    seconds = time.perf_counter() - start
    peak_kb = memory_kb("VmHWM")
    np.savez(Path(args.result).with_suffix(".npz"), **weights)
    report = {
        "seconds": seconds,
        "peak_mb": peak_kb / 1024,
        "baseline_mb": baseline_kb / 1024,
        "above_baseline_mb": (peak_kb - baseline_kb) / 1024,
        "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "torch_threads": torch.get_num_threads(),
        "fedfuse_loaded": "fedfuse" in sys.modules,
    }
    Path(args.result).write_text(json.dumps(report))


def run_worker(
    side: str, parts_file: Path, rounds: int, args: argparse.Namespace, scratch: Path, tag: str
) -> tuple[dict, Weights]:
    result = scratch / f"{tag}.json"
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        side,
        "--parts",
        str(parts_file),
        "--rounds",
        str(rounds),
        "--data-dir",
        str(args.data_dir),
        "--seed",
        str(args.seed),
        "--threads",
        str(args.threads),
        "--result",
        str(result),
    ]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{side} worker failed:\n{done.stderr}")
    with np.load(result.with_suffix(".npz")) as archive:
        weights = {name: archive[name] for name in archive.files}
    return json.loads(result.read_text()), weights


# --- the driver -------------------------------------------------------------------------------


def machine_info() -> dict:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "numpy": np.__version__,
        "load_average_at_start": list(os.getloadavg()),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def partition(
    labels: np.ndarray, examples: np.ndarray, parties: int, seed: int
) -> list[np.ndarray]:
    """fedfuse's IID ``federate`` once, as index arrays into the training set.

    ``federate`` is given the example indices as features, so each party's "features" come out
    as exactly the indices, in exactly the order, that its local training set has.
    """
    from fedfuse.data import ArrayDataset, federate

    fed = federate(
        ArrayDataset(examples, labels[examples]),
        None,
        parties,
        "iid",
        seed=seed,
        local_test_fraction=0.0,
    )
    return [fed[party_id(i)].train.x for i in range(parties)]


def summarize(runs: list[dict]) -> dict:
    seconds = [r["seconds"] for r in runs]
    return {
        "seconds": seconds,
        "best_s": min(seconds),
        "median_s": statistics.median(seconds),
        "peak_mb": statistics.median(r["peak_mb"] for r in runs),
        "baseline_mb": statistics.median(r["baseline_mb"] for r in runs),
        "above_baseline_mb": statistics.median(r["above_baseline_mb"] for r in runs),
        "torch_threads": runs[0]["torch_threads"],
        "fedfuse_loaded": runs[0]["fedfuse_loaded"],
    }


def max_abs_diff(a: Weights, b: Weights) -> float:
    if sorted(a) != sorted(b):
        return float("inf")
    return max(float(np.max(np.abs(a[n].astype(np.float64) - b[n]))) for n in a)


def bench_workload(
    parties: int,
    rounds: int,
    examples: np.ndarray,
    labels: np.ndarray,
    args: argparse.Namespace,
    scratch: Path,
) -> dict:
    parts_file = scratch / f"parts_{parties}x{rounds}.npz"
    np.savez(
        parts_file,
        **{f"idx_{i}": p for i, p in enumerate(partition(labels, examples, parties, args.seed))},
    )
    name = f"{parties} parties x {rounds} rounds"
    print(f"\n{name} ({len(examples)} examples, {args.reps} repetitions)", flush=True)
    runs: dict[str, list[dict]] = {side: [] for side in SIDES}
    weights: dict[str, list[Weights]] = {side: [] for side in SIDES}
    for rep in range(args.reps):
        # Alternate the order so that slow and fast spells of a shared machine hit every side.
        order = SIDES if rep % 2 == 0 else SIDES[::-1]
        for side in order:
            report, w = run_worker(
                side, parts_file, rounds, args, scratch, f"{parties}x{rounds}_{side}_{rep}"
            )
            runs[side].append(report)
            weights[side].append(w)
            print(
                f"  rep {rep + 1}: {side:<14} {report['seconds']:7.2f} s  "
                f"peak {report['peak_mb']:6.1f} MB (+{report['above_baseline_mb']:.1f})",
                flush=True,
            )
    sides = {side: summarize(runs[side]) for side in SIDES}
    diff = max_abs_diff(weights["fedfuse"][0], weights["plain"][0])
    equal = bool(np.isfinite(diff)) and all(
        np.allclose(weights["fedfuse"][0][n], weights["plain"][0][n], atol=1e-5, rtol=0)
        for n in weights["plain"][0]
    )
    reproducible = all(
        max_abs_diff(w, weights[side][0]) == 0.0 for side in SIDES for w in weights[side]
    )
    plain, fedfuse = sides["plain"], sides["fedfuse"]
    return {
        "workload": name,
        "parties": parties,
        "rounds": rounds,
        "examples": len(examples),
        "sides": sides,
        "ratio_best": fedfuse["best_s"] / plain["best_s"],
        "ratio_median": fedfuse["median_s"] / plain["median_s"],
        "metrics_ratio_best": sides["plain+metrics"]["best_s"] / plain["best_s"],
        "goal_met": fedfuse["best_s"] <= GOAL_RATIO * plain["best_s"],
        "weights_equal": equal,
        "weights_max_abs_diff": diff,
        "reproducible_across_reps": reproducible,
    }


def markdown(result: dict) -> str:
    m = result["machine"]
    s = result["settings"]
    lines = [
        "# fedfuse simulation vs a plain PyTorch loop",
        "",
        f"Measured {m['date']} on {m['platform']} ({m['processor']}), {m['cpus_usable']} usable "
        f"of {m['cpu_count']} CPUs, torch {m['torch']} with {s['torch_threads']} thread(s), "
        f"load average {m['load_average_at_start'][0]:.2f} at start, "
        f"{m['load_average_at_end'][0]:.2f} at end.",
        "",
        f"FedAvg, MLP 784-200-200-10, SGD lr {s['learning_rate']}, batch {s['batch_size']}, "
        f"{s['local_epochs']} local epoch, IID Fashion-MNIST. Seconds: best of {s['reps']} "
        "(median); peak RSS during training, absolute (above the post-set-up baseline).",
        "",
        "| workload | plain s | fedfuse s | ratio best (median) | plain peak MB "
        "| fedfuse peak MB | weights equal |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for w in result["workloads"]:
        p, f = w["sides"]["plain"], w["sides"]["fedfuse"]
        lines.append(
            f"| {w['workload']} ({w['examples']} ex.) "
            f"| {p['best_s']:.2f} ({p['median_s']:.2f}) "
            f"| {f['best_s']:.2f} ({f['median_s']:.2f}) "
            f"| {w['ratio_best']:.3f} ({w['ratio_median']:.3f}) "
            f"| {p['peak_mb']:.0f} (+{p['above_baseline_mb']:.1f}) "
            f"| {f['peak_mb']:.0f} (+{f['above_baseline_mb']:.1f}) "
            f"| {'yes' if w['weights_equal'] else 'NO'} "
            f"(max diff {w['weights_max_abs_diff']:.1e}) |"
        )
    lines += [
        "",
        f"Goal: fedfuse <= {GOAL_RATIO} x plain (best times): "
        + ", ".join(
            f"{w['workload']}: {'met' if w['goal_met'] else 'NOT met'}" for w in result["workloads"]
        ),
        "",
        "Diagnostic: the plain loop plus the per-batch loss/accuracy bookkeeping of "
        "`TorchAdapter.fit`:",
        "",
        "| workload | plain+metrics s | vs plain |",
        "| --- | --- | --- |",
    ]
    for w in result["workloads"]:
        pm = w["sides"]["plain+metrics"]
        lines.append(
            f"| {w['workload']} | {pm['best_s']:.2f} ({pm['median_s']:.2f}) "
            f"| {w['metrics_ratio_best']:.3f} |"
        )
    if busy(m):
        lines += ["", f"**{BUSY_WARNING}**"]
    if result["settings"]["quick"]:
        lines += ["", "**Quick run (smoke test): sizes are tiny, the numbers mean little.**"]
    return "\n".join(lines) + "\n"


BUSY_WARNING = (
    "Other work shared the CPUs during this run (load average above half the CPU count): "
    "treat the timings as rough and re-run on a quiet machine."
)


def busy(machine: dict) -> bool:
    loads = machine["load_average_at_start"][0], machine["load_average_at_end"][0]
    return max(loads) > machine["cpus_usable"] / 2


def print_table(result: dict) -> None:
    print(
        f"\n{'workload':<26}{'plain s':>9}{'fedfuse s':>11}{'ratio':>8}{'+metrics':>10}"
        f"{'plain MB':>10}{'fedfuse MB':>12}  weights equal"
    )
    for w in result["workloads"]:
        p, f = w["sides"]["plain"], w["sides"]["fedfuse"]
        print(
            f"{w['workload']:<26}{p['best_s']:>9.2f}{f['best_s']:>11.2f}{w['ratio_best']:>8.3f}"
            f"{w['metrics_ratio_best']:>10.3f}{p['peak_mb']:>10.0f}{f['peak_mb']:>12.0f}  "
            f"{'yes' if w['weights_equal'] else 'NO'} (max |diff| {w['weights_max_abs_diff']:.1e})"
        )
    print(
        f"(best of {result['settings']['reps']}; ratio = fedfuse / plain, goal <= {GOAL_RATIO};"
        " +metrics = plain with fedfuse's per-batch metrics / plain)"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    parser.add_argument("--reps", type=int, default=None, help="repetitions per side (>= 3)")
    parser.add_argument("--examples", type=int, default=None, help="use only this many examples")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (default 1; 0: torch's default)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out-dir", type=Path, default=None, help="default: results/ (results/quick/ with --quick)"
    )
    parser.add_argument("--worker", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--parts", help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return

    from fedfuse.data import fashion_mnist_dir

    args.reps = max(3, args.reps or (3 if args.quick else 5))
    args.data_dir = fashion_mnist_dir()
    if args.threads:
        torch.set_num_threads(args.threads)
    info = machine_info()
    print("machine:", json.dumps(info))
    labels = load_train_labels(args.data_dir)
    examples = np.arange(len(labels))
    limit = args.examples or (QUICK_EXAMPLES if args.quick else None)
    if limit is not None and limit < len(labels):
        examples = np.sort(np.random.default_rng(args.seed).permutation(len(labels))[:limit])
    workloads = QUICK_WORKLOADS if args.quick else FULL_WORKLOADS
    with tempfile.TemporaryDirectory(prefix="fedfuse-bench-") as tmp:
        results = [
            bench_workload(parties, rounds, examples, labels, args, Path(tmp))
            for parties, rounds in workloads
        ]
    info["load_average_at_end"] = list(os.getloadavg())
    result = {
        "machine": info,
        "settings": {
            "quick": args.quick,
            "reps": args.reps,
            "seed": args.seed,
            "torch_threads": results[0]["sides"]["plain"]["torch_threads"],
            "model": "MLP 784-200-200-10",
            "optimizer": "sgd",
            "learning_rate": LEARNING_RATE,
            "batch_size": BATCH_SIZE,
            "local_epochs": LOCAL_EPOCHS,
            "partition": "iid, local_test_fraction=0",
            "dataset": "fashion_mnist train",
            "goal_ratio": GOAL_RATIO,
        },
        "workloads": results,
    }
    print_table(result)
    if busy(info):
        print(BUSY_WARNING)
    args.out_dir = args.out_dir or (RESULTS_DIR / "quick" if args.quick else RESULTS_DIR)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "speed.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out_dir / "speed.md").write_text(markdown(result))
    print(f"wrote {args.out_dir / 'speed.json'} and {args.out_dir / 'speed.md'}")


if __name__ == "__main__":
    main()
