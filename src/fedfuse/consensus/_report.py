"""Measures and files of a decentralized run: consensus distance, history JSON, plots."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["consensus_distance", "mean_weights", "plot_runs", "write_json"]


def mean_weights(models: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The element-wise average of the nodes' models (float64 accumulation, original dtypes)."""
    first = models[0]
    return {
        name: np.mean([m[name] for m in models], axis=0, dtype=np.float64).astype(arr.dtype)
        for name, arr in first.items()
    }


def consensus_distance(models: Sequence[Mapping[str, np.ndarray]]) -> float:
    """``sqrt(mean_i |w_i - w_mean|^2)``: how far the node models are from their average.

    Zero exactly when all nodes hold the same model.
    """
    if len(models) < 2:
        return 0.0
    total = 0.0
    for name in models[0]:
        stack = np.stack([np.asarray(m[name], dtype=np.float64) for m in models])
        total += float(((stack - stack.mean(axis=0)) ** 2).sum())
    return (total / len(models)) ** 0.5


def write_json(path: Path, doc: Mapping[str, Any]) -> Path:
    path.write_text(json.dumps(doc, indent=1, default=_plain))
    return path


def _plain(obj: object) -> object:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"cannot write {type(obj).__name__} as JSON")


def plot_runs(
    path: Path,
    runs: Mapping[str, Sequence[Mapping[str, Any]]],
    centralized: Sequence[Mapping[str, float]] = (),
    *,
    title: str = "",
) -> Path:
    """Mean node test accuracy per epoch (band: worst to best node) and consensus distance.

    ``runs`` maps a label to a history (records with ``epoch``, ``mean_accuracy``,
    ``min_accuracy``, ``max_accuracy``, ``consensus_distance``).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (acc_ax, dist_ax) = plt.subplots(1, 2, figsize=(11, 4.2))
    for label, history in runs.items():
        epochs = [r["epoch"] for r in history]
        (line,) = acc_ax.plot(
            epochs, [r["mean_accuracy"] for r in history], "o-", ms=3, label=label
        )
        acc_ax.fill_between(
            epochs,
            [r["min_accuracy"] for r in history],
            [r["max_accuracy"] for r in history],
            color=line.get_color(),
            alpha=0.15,
        )
        if all("consensus_distance" in r for r in history):
            distances = [max(r["consensus_distance"], 1e-12) for r in history]
            dist_ax.semilogy(epochs, distances, "o-", ms=3, color=line.get_color(), label=label)
    if centralized:
        acc_ax.plot(
            [c["epoch"] for c in centralized],
            [c["accuracy"] for c in centralized],
            "k:",
            lw=2,
            label="centralized, same epochs",
        )
    acc_ax.set_xlabel("epoch")
    acc_ax.set_ylabel("test accuracy (mean over nodes; band: worst to best)")
    acc_ax.grid(alpha=0.3)
    acc_ax.legend(loc="lower right", fontsize=8)
    dist_ax.set_xlabel("epoch")
    dist_ax.set_ylabel("consensus distance  sqrt(mean |w_i - w_mean|^2)")
    dist_ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
