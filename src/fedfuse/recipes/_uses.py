"""The three uses of the Model Fusion API from one federation spec.

``FederationSpec.use`` picks one:

- ``aggregate`` (default): one aggregate model from the edges (FedAvg and friends);
- ``personalize``: independent edge models improved by model sharing
  (``compare_personalization``: local-only vs global vs fine-tuned vs personal layers);
- ``ensemble``: model ensembles from edges (``compare_ensemble``: FedAvg vs edge models vs
  their ensembles vs one distilled model);
- ``oneshot``: independently initialized edge models fused once by neuron matching
  (``compare_oneshot``; each edge trains ``rounds * epochs`` local epochs).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from torch import nn

from fedfuse.data import FederatedDataset
from fedfuse.recipes._ensemble import compare_ensemble
from fedfuse.recipes._oneshot import compare_oneshot
from fedfuse.recipes._personalize import PERSONALIZATION_MODELS, compare_personalization

__all__ = ["USES", "format_use_report", "run_use"]

USES = ("aggregate", "personalize", "ensemble", "oneshot")


def run_use(spec: Any, fed: FederatedDataset, model_fn: Callable[[], nn.Module]) -> dict:
    """Run ``spec.use`` (not ``aggregate``) on ``fed`` with ``spec.use.params``; returns its
    report."""
    train, use = spec.training, spec.use
    common = {"sampling": spec.sampling, "seed": spec.seed, **use.params}
    if use.name == "personalize":
        return compare_personalization(fed, model_fn, train, spec.rounds, **common)
    if use.name == "ensemble":
        return compare_ensemble(fed, model_fn, train, spec.rounds, **common)
    if use.name == "oneshot":
        local = dataclasses.replace(train, epochs=spec.rounds * train.epochs)
        return compare_oneshot(fed, model_fn, local, seed=spec.seed)
    raise ValueError(f"unknown use {use.name!r}; choose one of: {', '.join(USES)}")


def _pct(value: float) -> str:
    return f"{100 * value:.2f}%"


def format_use_report(use: str, report: dict) -> str:
    """A plain-text summary of ``run_use``'s report, for the command line."""
    if use == "personalize":
        lines = ["accuracy on each party's own test split:"]
        lines.append("party        " + "".join(f"{m:>11}" for m in PERSONALIZATION_MODELS))
        rows = [*report["parties"].items(), ("mean", report["mean"])]
        for pid, r in rows:
            lines.append(
                f"{pid:<13}" + "".join(f"{_pct(r[m]):>11}" for m in PERSONALIZATION_MODELS)
            )
        lines.append(f"personal layers: {', '.join(report['personal_layers'])}")
        return "\n".join(lines)
    if use == "ensemble":
        lines = [f"accuracy on {report['scored_examples']} held-out central test examples:"]
        lines += [f"  edge {pid}: {_pct(a)}" for pid, a in report["edges"].items()]
        for key in ("fedavg", "ensemble", "ensemble_weighted", "ensemble_classwise", "distilled"):
            lines.append(f"  {key}: {_pct(report[key])}")
        lines.append(f"(distilled on {report['distill_examples']} unlabeled central examples)")
        return "\n".join(lines)
    if use == "oneshot":
        lines = [f"accuracy on the union of the parties' test splits ({report['union_examples']}):"]
        lines += [f"  edge {pid}: {_pct(a)}" for pid, a in report["edges"].items()]
        skip = {"edges", "union_examples", "matching_inputs"}
        lines += [f"  {key}: {_pct(v)}" for key, v in report.items() if key not in skip]
        return "\n".join(lines)
    raise ValueError(f"unknown use {use!r}; choose one of: {', '.join(USES)}")
