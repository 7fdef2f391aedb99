"""History files and accuracy plots."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["plot_accuracy", "write_history"]


def write_history(
    path: Path,
    config: Mapping[str, Any],
    history: Sequence[Mapping[str, Any]],
    centralized: Sequence[Mapping[str, float]] = (),
    label_stats: Mapping[str, np.ndarray] | None = None,
) -> Path:
    """Write the run as JSON: its config, one record per round, the centralized curve."""
    doc = {
        "config": dict(config),
        "rounds": list(history),
        "centralized": list(centralized),
        "label_counts": {k: v.tolist() for k, v in (label_stats or {}).items()},
    }
    path.write_text(json.dumps(doc, indent=1))
    return path


def plot_accuracy(
    path: Path,
    history: Sequence[Mapping[str, Any]],
    centralized: Sequence[Mapping[str, float]] = (),
    *,
    epochs_per_round: int = 1,
) -> Path:
    """Plot central and federated test accuracy per round (and the centralized baseline)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    rounds = [r["round"] for r in history]
    if any("central" in r for r in history):
        central = [r["central"]["accuracy"] for r in history]
        ax.plot(rounds, central, "o-", label="federated model, central test set")
    if any(r.get("federated") for r in history):
        ax.plot(
            rounds,
            [r["federated"].get("accuracy", np.nan) for r in history],
            "s--",
            label="federated evaluation (weighted by examples)",
        )
    if centralized:
        x = [c["epoch"] / epochs_per_round for c in centralized]
        ax.plot(x, [c["accuracy"] for c in centralized], "k:", label="centralized, same epochs")
    ax.set_xlabel("round")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
