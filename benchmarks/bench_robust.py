"""Robust fusion against 2 attackers among 10 parties.

What is measured
    Central test accuracy after R rounds of each fusion rule, without attackers and with two
    of the ten parties (``party_3``, ``party_7``) sending one of three kinds of bad update:

    - *scaled*: 100 x their honest delta (a boosted, model-replacement-style update);
    - *sign_flip*: -10 x their honest delta;
    - *random*: Gaussian noise, standard deviation 1 per coordinate (they do not train).

    Attackers are a pool wrapper (``AttackPool``): the parties themselves are honest, the
    wrapper rewrites their replies on the way to the aggregator. Rules: FedAvg; coordinate
    median; trimmed mean (beta 0.2); Krum and multi-Krum (f = 2); FedAvg after clipping every
    update to ``c`` = the median honest update norm of the clean FedAvg run; FedAvg with the
    round loop rejecting updates whose norm exceeds ``3c`` (``max_update_norm``). These rules
    run with the round loop's default relative bound turned off (``max_update_ratio=None``),
    to measure each rule alone; the last row is plain FedAvg with that default bound on
    (``||delta|| <= 10 max(||w||, 10)``), as every federation runs unless told otherwise.

Workload (see ``_fl.py``): Fashion-MNIST, 10 IID parties x 1000 images, MLP 784-128-10,
SGD lr 0.05, batch 32, 1 local epoch, every party every round. The goal (reported, never
enforced): FedAvg breaks under attack, the robust rules stay within 2 points of clean FedAvg.

Run:  .venv/bin/python benchmarks/bench_robust.py [--rounds 12] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import _fl
import numpy as np
import torch

from fedfuse.federation import Aggregation
from fedfuse.fusion import Update, get_fusion
from fedfuse.models import TrainConfig
from fedfuse.weights import global_norm, scale

ATTACKERS = ("party_3", "party_7")
ATTACKS = ("none", "scaled", "sign_flip", "random")


class AttackPool:
    """Wraps a pool: the ``attackers`` reply with ``attack(honest_update)`` instead."""

    def __init__(self, pool: Any, attack: str, seed: int = 0) -> None:
        self.pool, self.attack = pool, attack
        self.rng = np.random.default_rng(seed)
        self.honest_norms: list[float] = []

    def party_ids(self) -> list[str]:
        return self.pool.party_ids()

    def dispatch(self, tasks, timeout=None):
        for pid, reply in self.pool.dispatch(tasks, timeout):
            if not isinstance(reply, Update):
                yield pid, reply
            elif pid not in ATTACKERS or self.attack == "none":
                self.honest_norms.append(global_norm(reply.weights))
                yield pid, reply
            else:
                yield pid, Update(self._poison(reply.weights), reply.num_examples, reply.metrics)

    def _poison(self, delta):
        if self.attack == "scaled":
            return scale(delta, 100.0)
        if self.attack == "sign_flip":
            return scale(delta, -10.0)
        return {n: self.rng.normal(size=a.shape).astype(a.dtype) for n, a in delta.items()}


def run(fed, config, rounds, fusion, attack, **bounds) -> dict[str, Any]:
    """``bounds`` are the update bounds of ``Aggregation`` (``max_update_norm``,
    ``max_update_ratio``)."""
    pools: list[AttackPool] = []

    def wrap(pool):
        pools.append(AttackPool(pool, attack))
        return pools[-1]

    start = time.perf_counter()
    aggregation = Aggregation(**bounds)
    federation = _fl.federation(fed, config, fusion=fusion, wrap_pool=wrap, aggregation=aggregation)
    history = federation.run(rounds)
    return {
        "accuracy": history[-1]["central"]["accuracy"],
        "curve": [r["central"]["accuracy"] for r in history],
        "rejected": sum(len(r["rejected"]) for r in history),
        "seconds": time.perf_counter() - start,
        "honest_norms": pools[0].honest_norms,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--per-party", type=int, default=1000)
    parser.add_argument("--quick", action="store_true", help="3 rounds, 200 images per party")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.per_party = 3, 200
    torch.set_num_threads(1)
    where = _fl.machine()
    print(f"bench_robust on {where}")
    fed = _fl.fashion_parties(10, args.per_party, "iid", seed=0)
    config = TrainConfig(epochs=1, batch_size=32, optimizer="sgd", learning_rate=0.05)

    alone = {"max_update_ratio": None}
    clean = run(fed, config, args.rounds, get_fusion("fedavg"), "none", **alone)
    c = statistics.median(clean["honest_norms"])
    rules = {
        "fedavg": (get_fusion("fedavg"), alone),
        "median": (get_fusion("median"), alone),
        "trimmed_mean(0.2)": (get_fusion("trimmed_mean", trim_fraction=0.2), alone),
        "krum(f=2)": (get_fusion("krum", num_byzantine=2), alone),
        "multi_krum(f=2)": (get_fusion("multi_krum", num_byzantine=2), alone),
        f"clip_norm({c:.3g}) + fedavg": (get_fusion("fedavg", clip_norm=c), alone),
        f"fedavg, max_update_norm {3 * c:.3g}": (
            get_fusion("fedavg"),
            alone | {"max_update_norm": 3 * c},
        ),
        "fedavg, default max_update_ratio 10": (get_fusion("fedavg"), {}),
    }
    results: dict[str, dict[str, Any]] = {}
    for rule, (fusion, kwargs) in rules.items():
        results[rule] = {}
        for attack in ATTACKS:
            if rule == "fedavg" and attack == "none":
                out = clean
            else:
                out = run(fed, config, args.rounds, fusion, attack, **kwargs)
            out.pop("honest_norms")
            results[rule][attack] = out
            print(
                f"{rule:32s} {attack:10s} accuracy {100 * out['accuracy']:6.2f}%  "
                f"rejected {out['rejected']:3d}  ({out['seconds']:.1f} s)",
                flush=True,
            )

    base = results["fedavg"]["none"]["accuracy"]
    lines = [
        "# Robust fusion: 2 of 10 parties attack",
        "",
        f"Measured on {where}.",
        "",
        f"Fashion-MNIST, 10 IID parties x {args.per_party} images, MLP 784-128-10, SGD lr 0.05, "
        f"batch 32, 1 local epoch, {args.rounds} rounds; central test accuracy (10k images) "
        "after the last round, in %. Attackers: party_3 and party_7. `scaled` = 100 x honest "
        "delta, `sign_flip` = -10 x honest delta, `random` = N(0, 1) per coordinate. "
        f"c = {c:.3g} is the median honest update norm of the clean FedAvg run.",
        "",
        "| rule | no attack | scaled | sign_flip | random |",
        "| --- | --- | --- | --- | --- |",
    ]
    for rule, by_attack in results.items():
        cells = []
        for attack in ATTACKS:
            acc = by_attack[attack]["accuracy"]
            rejected = by_attack[attack]["rejected"]
            cells.append(f"{100 * acc:.2f}" + (f" ({rejected} rejected)" if rejected else ""))
        lines.append(f"| {rule} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Goal: under attack, robust rules within 2 points of clean FedAvg ({100 * base:.2f}):",
    ]
    for rule, by_attack in results.items():
        if rule == "fedavg":
            continue
        worst = min(by_attack[a]["accuracy"] for a in ATTACKS[1:])
        verdict = "met" if worst >= base - 0.02 else "not met"
        lines.append(f"- {rule}: worst {100 * worst:.2f} ({verdict})")
    worst_fedavg = min(results["fedavg"][a]["accuracy"] for a in ATTACKS[1:])
    lines.append(f"- fedavg itself: worst {100 * worst_fedavg:.2f}")
    if args.quick:
        lines += ["", "**Quick run (smoke test): sizes are tiny, the numbers mean little.**"]
    markdown = "\n".join(lines) + "\n"
    print(markdown)
    name = "quick/robust" if args.quick else "robust"
    _fl.write(
        name,
        {
            "machine": where,
            "rounds": args.rounds,
            "per_party": args.per_party,
            "clip_norm": c,
            "results": results,
        },
        markdown,
    )


if __name__ == "__main__":
    main()
