"""Privacy in the round loop: DP-FedAvg's utility on Fashion-MNIST, and secure aggregation's cost.

What is measured
    ``--part dp`` (the issue's acceptance experiment): Fashion-MNIST split IID into 1000
    parties of 60 images, each round a Poisson sample of the parties (q = 0.1, about 100),
    200 rounds, MLP 784-128-10, 1 local epoch of SGD (batch 20, lr 0.1), server momentum 0.9
    (``fedavgm``, server lr 1) for every run. Runs: non-private FedAvgM; DP-FedAvgM with
    adaptive clipping (median of the update norms, initial clip 0.1, noisy count with
    ``count_stddev = expected / 20``) and central Gaussian noise, at the noise multiplier
    ``z`` for epsilon <= 10 and the one for epsilon <= 3 at delta = 1e-5 after 200 rounds.
    Each ``z`` is the smallest found by bisection with ``PrivacyAccountant`` (PLD, Poisson,
    the count's noise included, as the federation records it); the final epsilon is the one
    in the run's own last record. Central test accuracy (10k images) after every round;
    final accuracy, the mean of the last 5 rounds, the gap to the non-private run, and wall
    time per run (training, fusion, accounting and evaluation). Each setting is run with
    ``--seeds`` seeds (the same seed gives the same initial model and the same samples).
    Targets (from the issue): within 3 points of non-private at epsilon <= 10, within 6 at
    epsilon <= 3. ``--server-lr`` / ``--server-momentum`` other than the defaults run the same
    experiment as a "try" (recorded under ``dp_tries``, compared in one table with the
    default; the default's curves and plot are kept).

    ``--part secagg``: 100 parties x 60 images, every party every round, FedAvg over a
    ``LocalPool`` of real ``Party`` objects: plain, under SecAgg+
    (``SecureAggregation(secagg=True)``: four dispatches per round, update quantized to
    Z_2^32) and under SecAgg+ with distributed DP noise
    (``Privacy(noise_multiplier=1.0, noise="distributed")``). Round time: median over the
    rounds after the first (warm-up), training included in all three (the parties train
    inside the same process, one after another); bytes up per round from the records; test
    accuracy after the last round, plain against secure (the quantization error).
    Target (from the issue): DP noise under SecAgg, round time <= 1.3x plain FedAvg.

Results: ``benchmarks/results/privacy.{json,md}`` and ``privacy_accuracy.png`` (``--quick``:
``results/quick/``). A part run alone replaces only its own section of the json.

Run:  .venv/bin/python benchmarks/bench_privacy.py [--part dp|secagg|all] [--quick]
          [--seeds 2] [--server-lr 1.0 --server-momentum 0.9]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

import _fl
import numpy as np
import torch

from fedfuse.federation import Privacy, PrivacyAccountant, Sampling, SecureAggregation
from fedfuse.fusion import FusionSpec
from fedfuse.models import TrainConfig
from fedfuse.party import vector_size
from fedfuse.weights import global_norm, subtract

DELTA = 1e-5
FRACTION = 0.1
CONFIG = TrainConfig(epochs=1, batch_size=20, optimizer="sgd", learning_rate=0.1)
SERVER = {"server_learning_rate": 1.0, "momentum": 0.9}  # fedavgm; other values: a "try"
INITIAL_CLIP = 0.1
TARGETS = {10.0: 3.0, 3.0: 6.0}  # epsilon -> allowed accuracy gap (points)
LAST = 5  # final accuracy: also the mean over this many last rounds


# ---- part 1: DP utility -----------------------------------------------------------------------
def epsilon_after(z: float, rounds: int, population: int, count_stddev: float) -> float:
    """Epsilon at DELTA after ``rounds`` Poisson rounds, as the federation's accountant has it."""
    accountant = PrivacyAccountant("pld", "poisson", population, DELTA)
    for _ in range(rounds):
        accountant.record(z, sample_rate=FRACTION, count_stddev=count_stddev)
    return accountant.epsilon()


def noise_for(target: float, rounds: int, population: int, count_stddev: float) -> dict:
    """The smallest ``z`` (to 4 decimals, rounded up) with epsilon <= ``target``, by bisection."""
    calls = 0

    def eps(z: float) -> float:
        nonlocal calls
        calls += 1
        return epsilon_after(z, rounds, population, count_stddev)

    lo, hi = 0.25, 1.0
    while eps(hi) > target:
        lo, hi = hi, 2 * hi
    while hi - lo > 1e-4:
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if eps(mid) <= target else (mid, hi)
    z = math.ceil(hi * 1e4) / 1e4
    return {"noise_multiplier": z, "epsilon": eps(z), "bisection_calls": calls}


def dp_run(
    fed, fusion: FusionSpec, rounds: int, seed: int, privacy: Privacy | None
) -> dict[str, Any]:
    federation = _fl.federation(
        fed,
        CONFIG,
        seed=seed,
        fusion=fusion,
        sampling=Sampling(fraction=FRACTION, poisson=True),
        population=len(fed.party_ids),
        privacy=privacy,
    )
    curve: list[dict[str, Any]] = []

    def on_round(record: dict[str, Any]) -> None:
        point = {
            "round": record["round"],
            "accuracy": record["central"]["accuracy"],
            "parties": len(record["participants"]),
        }
        if privacy is not None:
            point["epsilon"] = record["epsilon"]
            point["clip"] = federation.fusion_state[0]["clip_norm"]  # adaptive_clip's state
        curve.append(point)

    start = time.perf_counter()
    federation.run(rounds, on_round)
    seconds = time.perf_counter() - start
    acc = [p["accuracy"] for p in curve]
    out = {
        "accuracy": acc[-1],
        "accuracy_last": float(np.mean(acc[-LAST:])),
        "rounds_run": len(curve),
        "stop_reason": federation.stop_reason,
        "seconds": seconds,
        "round_seconds": float(np.mean([r["seconds"] for r in federation.history])),
        "curve": curve,
    }
    if privacy is not None:
        out["epsilon"] = curve[-1]["epsilon"]
        out["final_clip"] = curve[-1]["clip"]
    return out


def dp_part(quick: bool, rounds: int, seeds: int, server: dict[str, float]) -> dict[str, Any]:
    fusion = FusionSpec("fedavgm", server)
    parties, per_party = (100, 60) if quick else (1000, 60)
    fed = _fl.fashion_parties(parties, per_party)
    expected = FRACTION * parties
    count_stddev = Privacy().count_stddev(expected)
    noise = {}
    for target in TARGETS:
        start = time.perf_counter()
        noise[target] = noise_for(target, rounds, parties, count_stddev)
        noise[target]["seconds"] = time.perf_counter() - start
        print(f"epsilon <= {target:g}: z = {noise[target]['noise_multiplier']:.4f} "
              f"(epsilon {noise[target]['epsilon']:.4f}, {noise[target]['seconds']:.1f} s)",
              flush=True)  # fmt: skip
    runs: dict[str, list[dict[str, Any]]] = {"non-private": []}
    for target in TARGETS:
        runs[f"DP eps<={target:g}"] = []
    for seed in range(seeds):
        for label in runs:
            privacy = None
            if label != "non-private":
                target = float(label.split("<=")[1])
                privacy = Privacy(
                    noise_multiplier=noise[target]["noise_multiplier"],
                    l2_norm_clip=INITIAL_CLIP,
                    clipping="adaptive",
                    target_quantile=0.5,
                    delta=DELTA,
                    noise_seed=1000 + seed,
                )
            out = dp_run(fed, fusion, rounds, seed, privacy)
            runs[label].append(out)
            eps = f"  epsilon {out['epsilon']:.3f}  clip {out['final_clip']:.3f}" if privacy else ""
            print(f"seed {seed} {label:14s} acc {100 * out['accuracy']:.2f}% "
                  f"(last {LAST}: {100 * out['accuracy_last']:.2f}%){eps}  "
                  f"{out['seconds']:.0f} s", flush=True)  # fmt: skip
    summary = {}
    for label, outs in runs.items():
        summary[label] = {
            "accuracy": float(np.mean([o["accuracy"] for o in outs])),
            "accuracy_last": float(np.mean([o["accuracy_last"] for o in outs])),
            "seconds": float(np.mean([o["seconds"] for o in outs])),
        }
        if label != "non-private":
            target = float(label.split("<=")[1])
            ref = summary["non-private"]
            gap = 100 * (ref["accuracy_last"] - summary[label]["accuracy_last"])
            summary[label].update(
                target_epsilon=target,
                noise_multiplier=noise[target]["noise_multiplier"],
                epsilon=max(o["epsilon"] for o in outs),
                gap_points=gap,
                gap_points_final=100 * (ref["accuracy"] - summary[label]["accuracy"]),
                allowed_gap_points=TARGETS[target],
                met=gap <= TARGETS[target]
                and max(o["epsilon"] for o in outs) <= target
                and all(o["rounds_run"] == rounds for o in outs),
            )
    return {
        "parties": parties,
        "per_party": per_party,
        "rounds": rounds,
        "seeds": seeds,
        "fraction": FRACTION,
        "delta": DELTA,
        "count_stddev": count_stddev,
        "initial_clip": INITIAL_CLIP,
        "config": CONFIG.to_dict(),
        "fusion": fusion.to_dict(),
        "noise": {f"{t:g}": v for t, v in noise.items()},
        "summary": summary,
        "runs": runs,
    }


def plot(dp: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (by_round, by_eps) = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, (label, outs) in enumerate(dp["runs"].items()):
        color = f"C{i}"
        curve = outs[0]["curve"]
        rounds = [p["round"] for p in curve]
        acc = [p["accuracy"] for p in curve]
        z = dp["summary"][label].get("noise_multiplier")
        name = label if z is None else f"{label} (z={z:.3f})"
        by_round.plot(rounds, acc, color=color, label=name)
        if z is None:
            last = dp["summary"][label]["accuracy_last"]
            by_eps.axhline(last, color=color, ls=":", label=f"{label} (last {LAST} rounds)")
        else:
            by_eps.plot([p["epsilon"] for p in curve], acc, color=color, label=name)
    title = f"Fashion-MNIST, {dp['parties']} parties x {dp['per_party']}, q={dp['fraction']}"
    by_round.set(title=title, xlabel="round", ylabel="test accuracy")
    by_eps.set(
        title=f"accuracy against epsilon (delta={dp['delta']:g})",
        xlabel="epsilon so far",
        ylabel="test accuracy",
    )
    by_eps.set_xscale("log")
    for ax in (by_round, by_eps):
        ax.set_ylim(0.5, 0.9)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---- part 2: SecAgg round cost -------------------------------------------------------------
def secagg_part(quick: bool, rounds: int) -> dict[str, Any]:
    parties, per_party = (10, 60) if quick else (100, 60)
    fed = _fl.fashion_parties(parties, per_party)
    secure = SecureAggregation(secagg=True)
    private = Privacy(noise_multiplier=1.0, noise="distributed")
    settings: dict[str, dict[str, Any]] = {
        "plain FedAvg": {},
        "SecAgg+": {"secure": secure},
        "SecAgg+ with distributed DP noise": {"secure": secure, "privacy": private},
    }
    results: dict[str, dict[str, Any]] = {}
    final: dict[str, Any] = {}
    for label, kwargs in settings.items():
        federation = _fl.federation(fed, CONFIG, **kwargs)
        evaluate, federation.central_eval = federation.central_eval, None  # not timed
        initial = federation.weights
        times = []
        for _ in range(rounds):
            start = time.perf_counter()
            federation.run_round()
            times.append(time.perf_counter() - start)
        history = federation.history
        final[label] = federation.weights
        moved = global_norm(subtract(final["plain FedAvg"], initial))
        out = {
            "round_seconds": statistics.median(times[1:]),
            "warmup_seconds": times[0],
            "all_round_seconds": times,
            "bytes_up": statistics.median(r["bytes_up"] for r in history),
            "bytes_dense": statistics.median(r["bytes_dense"] for r in history),
            "participants": statistics.median(len(r["participants"]) for r in history),
            "fused": sum(r["fused"] for r in history),
            "accuracy": evaluate(federation.weights)["accuracy"],
            "max_abs_diff_to_plain": max(
                float(np.max(np.abs(a - final["plain FedAvg"][n])))
                for n, a in federation.weights.items()
            ),
            "relative_diff_to_plain": global_norm(
                subtract(federation.weights, final["plain FedAvg"])
            )
            / moved,
        }
        if "secure" in history[-1]:
            out["degree"] = history[-1]["secure"].get("degree")
            out["threshold"] = history[-1]["secure"].get("threshold")
        if "epsilon" in history[-1]:
            out["epsilon"] = history[-1]["epsilon"]
        results[label] = out
        print(f"{label:36s} round {out['round_seconds']:.3f} s (median of {rounds - 1})  "
              f"up {out['bytes_up'] / 1e6:.2f} MB  acc {100 * out['accuracy']:.2f}%",
              flush=True)  # fmt: skip
    plain = results["plain FedAvg"]
    for out in results.values():
        out["time_ratio"] = out["round_seconds"] / plain["round_seconds"]
        out["overhead_seconds"] = out["round_seconds"] - plain["round_seconds"]
        out["bytes_ratio"] = out["bytes_up"] / plain["bytes_up"]
        out["accuracy_diff_points"] = 100 * (out["accuracy"] - plain["accuracy"])
    dp = results["SecAgg+ with distributed DP noise"]
    size = vector_size(initial) - 1
    return {
        "parties": parties,
        "per_party": per_party,
        "rounds": rounds,
        "config": CONFIG.to_dict(),
        "results": results,
        "parameters": size,
        "target_time_ratio": 1.3,
        "met": dp["time_ratio"] <= 1.3,
    }


def source_state() -> dict[str, Any]:
    """The commit measured and the files under src/ that differ from it (others edit too)."""
    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True).stdout

    return {
        "commit": git("rev-parse", "HEAD").strip(),
        "modified": git("diff", "--name-only", "HEAD", "--", "src").split(),
    }


def provenance(part: dict[str, Any]) -> str:
    src = part["source"]
    changed = f", with uncommitted changes to {len(src['modified'])} file(s) under src/"
    return (
        f"Measured on {part['machine']}; fedfuse at commit {src['commit'][:10]}"
        f"{changed if src['modified'] else ''}."
    )


# ---- the report ----------------------------------------------------------------------------
def dp_markdown(dp: dict[str, Any]) -> list[str]:
    s = dp["summary"]
    fusion = dp["fusion"]["params"]
    lines = [
        "## 1. DP-FedAvg utility (Fashion-MNIST)",
        "",
        provenance(dp),
        "",
        f"{dp['parties']} parties x {dp['per_party']} images (IID), Poisson sampling q = "
        f"{dp['fraction']} (about {dp['fraction'] * dp['parties']:.0f} parties a round), "
        f"{dp['rounds']} rounds, MLP 784-128-10; locally 1 epoch of SGD, batch "
        f"{dp['config']['batch_size']}, lr {dp['config']['learning_rate']}; server momentum "
        f"{fusion['momentum']} (server lr {fusion['server_learning_rate']}) in every run. "
        f"DP: adaptive clipping at the median update norm (initial clip {dp['initial_clip']}, "
        f"clip lr 0.2, count noise {dp['count_stddev']:g} = expected/20), central Gaussian "
        f"noise z C on the sum, divided by the expected count; epsilon at delta = "
        f"{dp['delta']:g} from the run's own records (PLD, Poisson amplification, the count's "
        "noise included). z: the smallest value (bisection with `PrivacyAccountant`, rounded up "
        "to 4 decimals) whose epsilon after all rounds is <= the target. Accuracy: central test "
        f"set (10k) after the last round and the mean of the last {LAST} rounds; gap = "
        f"non-private minus private, on the last-{LAST} means; {dp['seeds']} seed(s) "
        "(seed = initial model and samples; the same for all three runs), averaged.",
        "",
        f"| run | z | final epsilon | accuracy % (last {LAST}) | gap (points) | target | "
        "wall time per run |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for label, r in s.items():
        if label == "non-private":
            cells = ["-", "inf", "-", "-"]
        else:
            verdict = "met" if r["met"] else "**missed**"
            cells = [
                f"{r['noise_multiplier']:.4f}",
                f"{r['epsilon']:.3f}",
                f"{r['gap_points']:+.2f} (final {r['gap_points_final']:+.2f})",
                f"<= {r['allowed_gap_points']:g} at eps <= {r['target_epsilon']:g}: {verdict}",
            ]
        lines.append(
            f"| {label} | {cells[0]} | {cells[1]} | {100 * r['accuracy']:.2f} "
            f"({100 * r['accuracy_last']:.2f}) | {cells[2]} | {cells[3]} | {r['seconds']:.0f} s |"
        )
    if dp["seeds"] > 1:
        lines += ["", "Per seed (accuracy %, last-5 mean in brackets):", ""]
        for label, outs in dp["runs"].items():
            per_seed = ", ".join(
                f"{100 * o['accuracy']:.2f} ({100 * o['accuracy_last']:.2f})" for o in outs
            )
            lines.append(f"- {label}: {per_seed}")
    lines += ["", "Accuracy % by round (seed 0):", ""]
    labels = list(dp["runs"])
    lines += ["| round | " + " | ".join(labels) + " |", "| --- " * (len(labels) + 1) + "|"]
    curves = {label: outs[0]["curve"] for label, outs in dp["runs"].items()}
    marks = sorted({1, 5, 10, 25, 50, 100, 150, dp["rounds"]} & set(range(1, dp["rounds"] + 1)))
    for r in marks:
        cells = []
        for label in labels:
            p = curves[label][r - 1]
            eps = f" (eps {p['epsilon']:.2f}, C {p['clip']:.3f})" if "epsilon" in p else ""
            cells.append(f"{100 * p['accuracy']:.2f}{eps}")
        lines.append(f"| {r} | " + " | ".join(cells) + " |")
    peaks = []
    for label, curve in curves.items():
        best = max(curve, key=lambda p: p["accuracy"])
        peaks.append(f"{label} {100 * best['accuracy']:.2f}% at round {best['round']}")
    lines += ["", f"Best round (seed 0): {'; '.join(peaks)}."]
    searches = [
        f"eps <= {t}: {v['bisection_calls']} accountant evaluations, {v['seconds']:.1f} s"
        for t, v in dp["noise"].items()
    ]
    lines += [
        "",
        f"Finding z: {'; '.join(searches)}.",
        "",
        "![accuracy against round and against epsilon](privacy_accuracy.png)",
    ]
    return lines


def tries_markdown(tries: dict[str, dict[str, Any]]) -> list[str]:
    lines = [
        "### Other server settings tried",
        "",
        "The same experiment with other server optimizer settings (the same for the private "
        "and the non-private runs; local training unchanged), each run with "
        "`bench_privacy.py --part dp --seeds 1 --server-lr LR --server-momentum M`.",
        "",
        f"| server | run | z | final epsilon | accuracy % (last {LAST}) | gap (points) | "
        "wall time per run | seeds |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for setting, dp in tries.items():
        for label, r in dp["summary"].items():
            z = f"{r['noise_multiplier']:.4f}" if "noise_multiplier" in r else "-"
            eps = f"{r['epsilon']:.3f}" if "epsilon" in r else "inf"
            gap = f"{r['gap_points']:+.2f}" if "gap_points" in r else "-"
            lines.append(
                f"| {setting} | {label} | {z} | {eps} | {100 * r['accuracy']:.2f} "
                f"({100 * r['accuracy_last']:.2f}) | {gap} | {r['seconds']:.0f} s | "
                f"{dp['seeds']} |"
            )
    return lines


def across_settings(dp: dict[str, Any], tries: dict[str, dict[str, Any]]) -> list[str]:
    """The targets under every server setting, and the best private run against the best
    non-private one of any setting (a gap can be small because the baseline is weak)."""
    main = f"server lr {SERVER['server_learning_rate']:g}, momentum {SERVER['momentum']:g}"
    every = {main: dp["summary"], **{k: v["summary"] for k, v in tries.items()}}
    best_plain = max(s["non-private"]["accuracy_last"] for s in every.values())
    lines = [
        "### Across the server settings",
        "",
        f"Accuracy % (last {LAST} rounds); gap to the same setting's non-private run, and to "
        f"the best non-private run of any setting ({100 * best_plain:.2f}%).",
        "",
        "| server | non-private | " + " | ".join(f"DP eps<={t:g}" for t in TARGETS) + " |",
        "| --- " * (len(TARGETS) + 2) + "|",
    ]
    for setting, summary in every.items():
        cells = [f"{100 * summary['non-private']['accuracy_last']:.2f}"]
        for target in TARGETS:
            r = summary[f"DP eps<={target:g}"]
            verdict = "met" if r["met"] else "missed"
            cells.append(
                f"{100 * r['accuracy_last']:.2f} (gap {r['gap_points']:+.2f}: {verdict}; "
                f"to best {100 * (best_plain - r['accuracy_last']):+.2f})"
            )
        lines.append(f"| {setting} | " + " | ".join(cells) + " |")
    met = [k for k, v in every.items() if all(v[f"DP eps<={t:g}"]["met"] for t in TARGETS)]
    lines += [
        "",
        f"Both targets met (same-setting gaps) under: {'; '.join(met) or 'none'}. The first "
        f"setting ({main}) was chosen before any run; the others were tried after it missed, "
        "on the same test set, so a choice among them is tuned on the test set.",
    ]
    return lines


def secagg_markdown(sa: dict[str, Any]) -> list[str]:
    res = sa["results"]
    lines = [
        "## 2. Secure aggregation: round cost in the loop",
        "",
        provenance(sa),
        "",
        f"Fashion-MNIST, {sa['parties']} parties x {sa['per_party']} images, every party every "
        f"round, FedAvg, MLP 784-128-10 ({sa['parameters']:,} parameters), 1 local epoch of SGD "
        f"(batch {sa['config']['batch_size']}, lr {sa['config']['learning_rate']}), "
        "`Federation` over a `LocalPool` of real `Party` objects in this one process (parties "
        f"train one after another). Round time: median of rounds 2..{sa['rounds']} (round 1 is "
        "the warm-up), central evaluation not included; the parties' training is in every row "
        "(it is most of the plain round). Distributed DP: `Privacy(noise_multiplier=1.0, "
        'noise="distributed")` (fixed clip 1.0; each party adds z C / sqrt(m (1 - dropout)) '
        "to its clipped update). Accuracy: central test set after the last round; the "
        "difference of the final weights to plain FedAvg's, as the largest coordinate and as a "
        "fraction of how far plain FedAvg moved from the initial model, shows the quantization.",
        "",
        "| run | round s | x plain | overhead s | bytes up / round | x plain | accuracy % | "
        "vs plain (points) | weights vs plain: max abs, relative |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for label, r in res.items():
        extra = ""
        if "degree" in r:
            extra = f" (k = {r['degree']}, t = {r['threshold']})"
        if "epsilon" in r:
            extra += f", epsilon {r['epsilon']:.1f} after {sa['rounds']} rounds"
        lines.append(
            f"| {label}{extra} | {r['round_seconds']:.3f} | {r['time_ratio']:.2f} | "
            f"{r['overhead_seconds']:+.3f} | {r['bytes_up']:,.0f} | {r['bytes_ratio']:.3f} | "
            f"{100 * r['accuracy']:.2f} | {r['accuracy_diff_points']:+.2f} | "
            f"{r['max_abs_diff_to_plain']:.2e}, {r['relative_diff_to_plain']:.2e} |"
        )
    dp = res["SecAgg+ with distributed DP noise"]
    verdict = "met" if sa["met"] else "**missed**"
    lines += [
        "",
        f'Target "DP noise under SecAgg: round time <= 1.3x plain FedAvg": '
        f"{dp['time_ratio']:.2f}x, {verdict}. Per round and party, the SecAgg+ protocol "
        "(X25519 key agreement with every neighbour, Shamir shares, AES-CTR masks for each "
        "neighbour, unmasking) adds "
        f"{1e3 * res['SecAgg+']['overhead_seconds'] / sa['parties']:.1f} ms, against "
        f"{1e3 * res['plain FedAvg']['round_seconds'] / sa['parties']:.1f} ms of local "
        "training and fusion in plain FedAvg; the distributed noise adds the parties' clipping "
        "and Gaussian draws on top.",
    ]
    return lines


def markdown(doc: dict[str, Any]) -> str:
    lines = [
        "# Privacy in the round loop: DP-FedAvg utility and secure aggregation cost",
        "",
        "Written by `benchmarks/bench_privacy.py`.",
        "",
    ]
    if "dp" in doc:
        lines += [*dp_markdown(doc["dp"]), ""]
    if "dp_tries" in doc:
        lines += [*tries_markdown(doc["dp_tries"]), ""]
        if "dp" in doc:
            lines += [*across_settings(doc["dp"], doc["dp_tries"]), ""]
    if "secagg" in doc:
        lines += [*secagg_markdown(doc["secagg"]), ""]
    if doc.get("quick"):
        lines += ["**Quick run (smoke test): sizes are tiny, the numbers mean little.**", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("dp", "secagg", "all"), default="all")
    parser.add_argument("--rounds", type=int, default=200, help="DP rounds (default 200)")
    parser.add_argument("--seeds", type=int, default=2, help="DP seeds (default 2)")
    parser.add_argument("--secagg-rounds", type=int, default=11, help="default 11 (1 warm-up)")
    parser.add_argument("--quick", action="store_true", help="100 / 10 parties, a few rounds")
    parser.add_argument(
        "--server-lr",
        type=float,
        default=SERVER["server_learning_rate"],
        help="other server settings than the default are recorded as a try (dp_tries)",
    )
    parser.add_argument("--server-momentum", type=float, default=SERVER["momentum"])
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.seeds, args.secagg_rounds = 10, 1, 3
    torch.set_num_threads(1)
    where = _fl.machine()
    print(f"bench_privacy on {where}", flush=True)
    name = "quick/privacy" if args.quick else "privacy"
    json_path = _fl.RESULTS / f"{name}.json"
    doc: dict[str, Any] = json.loads(json_path.read_text()) if json_path.exists() else {}
    doc.pop("measured", None)
    doc["quick"] = args.quick
    server = {"server_learning_rate": args.server_lr, "momentum": args.server_momentum}
    if args.part in ("dp", "all"):
        dp = {
            "machine": where,
            "source": source_state(),
            **dp_part(args.quick, args.rounds, args.seeds, server),
        }
        if server == SERVER:
            doc["dp"] = dp
            plot(dp, json_path.with_name("privacy_accuracy.png"))
        else:
            for outs in dp["runs"].values():
                for out in outs:
                    del out["curve"]
            label = f"server lr {args.server_lr:g}, momentum {args.server_momentum:g}"
            doc.setdefault("dp_tries", {})[label] = dp
    if args.part in ("secagg", "all"):
        doc["secagg"] = {
            "machine": where,
            "source": source_state(),
            **secagg_part(args.quick, args.secagg_rounds),
        }
    text = markdown(doc)
    print(text)
    _fl.write(name, doc, text)


if __name__ == "__main__":
    main()
