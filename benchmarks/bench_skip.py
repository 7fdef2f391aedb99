"""Aggregation only when necessary: messages and bytes saved by skipping, and what it costs.

What is measured
    A party skips sending its delta (it replies ``Skipped``) when the delta says little new:
    its relative norm ``||delta|| / ||w_global||`` is below a threshold
    (``skip_relative_norm``), or its cosine similarity to a reference is above a threshold
    (``skip_cosine``): the last delta it sent (``skip_cosine_to="last_sent"``) or how the
    global model moved since its previous task (``"global"``); no party skips more than 3
    rounds in a row. A round in which
    nothing arrives is not fused. For each setting: messages (update uploads) saved, update
    bytes saved (``bytes_dense - bytes_up`` in the round history), rounds fused, and central
    test accuracy after the last round (and the mean of the last 3 rounds, less noisy) against
    the same federation without skipping.

    Thresholds are calibrated once, on the IID run without skipping: a probe records every
    party's relative norm and both cosines, and the thresholds are the 25th and 50th
    percentile of the relative norms and the 50th and 75th percentile of each cosine.
    The same thresholds are then used on IID and non-IID (Dirichlet 0.5) data.

Workload (see ``_fl.py``): Fashion-MNIST, 10 parties x 1000 images, MLP 784-128-10, SGD lr
0.05, batch 32, 1 local epoch, every party every round.

Run:  .venv/bin/python benchmarks/bench_skip.py [--rounds 20] [--quick]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from typing import Any

import _fl
import numpy as np
import torch

from fedfuse.fusion import Update
from fedfuse.models import TrainConfig
from fedfuse.weights import global_norm, subtract


def _cosine(a, b) -> float:
    return sum(float(np.vdot(a[n], b[n])) for n in a) / (global_norm(a) * global_norm(b))


class ProbePool:
    """Wraps a pool and records, for every delta: its relative norm, its cosine to the
    party's previous delta, and its cosine to how the global model moved since then."""

    def __init__(self, pool: Any) -> None:
        self.pool = pool
        self.last_delta: dict[str, dict[str, np.ndarray]] = {}
        self.last_global: dict[str, dict[str, np.ndarray]] = {}
        self.relative: list[float] = []
        self.cosine_last_sent: list[float] = []
        self.cosine_global: list[float] = []

    def party_ids(self) -> list[str]:
        return self.pool.party_ids()

    def dispatch(self, tasks, timeout=None):
        for pid, reply in self.pool.dispatch(tasks, timeout):
            if isinstance(reply, Update):
                start = tasks[pid].weights
                self.relative.append(global_norm(reply.weights) / global_norm(start))
                if pid in self.last_delta:
                    self.cosine_last_sent.append(_cosine(reply.weights, self.last_delta[pid]))
                    moved = subtract(start, self.last_global[pid])
                    self.cosine_global.append(_cosine(reply.weights, moved))
                self.last_delta[pid], self.last_global[pid] = reply.weights, start
            yield pid, reply


def run(fed, config, rounds, wrap_pool=None) -> dict[str, Any]:
    start = time.perf_counter()
    history = _fl.federation(fed, config, wrap_pool=wrap_pool).run(rounds)
    acc = [r["central"]["accuracy"] for r in history]
    return {
        "accuracy": acc[-1],
        "accuracy_last3": float(np.mean(acc[-3:])),
        "curve": acc,
        "messages": sum(len(r["participants"]) for r in history),
        "skipped": sum(len(r["skipped"]) for r in history),
        "bytes_up": sum(r["bytes_up"] for r in history),
        "bytes_dense": sum(r["bytes_dense"] for r in history),
        "rounds_fused": sum(r["fused"] for r in history),
        "seconds": time.perf_counter() - start,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--per-party", type=int, default=1000)
    parser.add_argument("--quick", action="store_true", help="4 rounds, 200 images per party")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.per_party = 4, 200
    torch.set_num_threads(1)
    where = _fl.machine()
    print(f"bench_skip on {where}")
    base = TrainConfig(epochs=1, batch_size=32, optimizer="sgd", learning_rate=0.05)
    data = {
        "IID": _fl.fashion_parties(10, args.per_party, "iid", seed=0),
        "Dirichlet(0.5)": _fl.fashion_parties(10, args.per_party, "dirichlet", seed=0, alpha=0.5),
    }

    probes: list[ProbePool] = []

    def probe(pool):
        probes.append(ProbePool(pool))
        return probes[-1]

    baseline_iid = run(data["IID"], base, args.rounds, wrap_pool=probe)
    rel, last, moved = probes[0].relative, probes[0].cosine_last_sent, probes[0].cosine_global
    settings: dict[str, dict[str, Any]] = {"no skipping": {}}
    for q in (25, 50):
        t = float(np.percentile(rel, q))
        settings[f"relative norm < {t:.3g} (p{q})"] = {"skip_relative_norm": t}
    for q in (50, 75):
        t = float(np.percentile(last, q))
        settings[f"cosine to last sent > {t:.3g} (p{q})"] = {"skip_cosine": t}
    for q in (50, 75):
        t = float(np.percentile(moved, q))
        settings[f"cosine to global move > {t:.3g} (p{q})"] = {
            "skip_cosine": t,
            "skip_cosine_to": "global",
        }
    results: dict[str, dict[str, Any]] = {}
    for data_name, fed in data.items():
        results[data_name] = {}
        for label, fields in settings.items():
            if data_name == "IID" and not fields:
                out = baseline_iid
            else:
                out = run(fed, replace(base, **fields), args.rounds)
            out["config"] = fields
            results[data_name][label] = out
            print(
                f"{data_name:15s} {label:40s} acc {100 * out['accuracy']:6.2f}%  "
                f"skipped {out['skipped']:3d}/{out['skipped'] + out['messages']}  "
                f"fused {out['rounds_fused']}/{args.rounds}  ({out['seconds']:.1f} s)",
                flush=True,
            )

    lines = [
        "# Aggregation only when necessary (skip updates that say little new)",
        "",
        f"Measured on {where}.",
        "",
        f"Fashion-MNIST, 10 parties x {args.per_party} images, MLP 784-128-10, SGD lr 0.05, "
        f"batch 32, 1 local epoch, FedAvg, {args.rounds} rounds, every party asked every round "
        f"({10 * args.rounds} possible uploads); at most 3 skips in a row per party. "
        "Thresholds calibrated on the IID run without skipping (percentiles of the parties' "
        "relative update norms, cosines to their previous delta and cosines to how the global "
        "model moved since their previous task), then used on both data splits. "
        "Accuracy: central test set after the last round (mean of the last 3 rounds).",
        "",
        "| data | skip when | uploads saved | bytes saved | rounds fused | accuracy % | "
        "vs no skipping (points) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for data_name, by_setting in results.items():
        ref = by_setting["no skipping"]
        for label, r in by_setting.items():
            total = r["skipped"] + r["messages"]
            saved = r["bytes_dense"] - r["bytes_up"]
            lines.append(
                f"| {data_name} | {label} | {r['skipped']}/{total} "
                f"({100 * r['skipped'] / total:.0f}%) | {saved / 1e6:.1f} MB "
                f"({100 * saved / r['bytes_dense']:.0f}%) | {r['rounds_fused']}/{args.rounds} | "
                f"{100 * r['accuracy']:.2f} ({100 * r['accuracy_last3']:.2f}) | "
                f"{100 * (r['accuracy'] - ref['accuracy']):+.2f} "
                f"({100 * (r['accuracy_last3'] - ref['accuracy_last3']):+.2f}) |"
            )
    if args.quick:
        lines += ["", "**Quick run (smoke test): sizes are tiny, the numbers mean little.**"]
    markdown = "\n".join(lines) + "\n"
    print(markdown)
    _fl.write(
        "quick/skip" if args.quick else "skip",
        {
            "machine": where,
            "rounds": args.rounds,
            "per_party": args.per_party,
            "calibration": {
                "relative_norm": rel,
                "cosine_to_last_sent": last,
                "cosine_to_global_move": moved,
            },
            "results": results,
        },
        markdown,
    )


if __name__ == "__main__":
    main()
