"""The centralized baseline: the same model trained on everyone's data pooled in one place."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from fedfuse.data import ArrayDataset
from fedfuse.models import LossFn, TorchAdapter, TrainConfig, torch_seed

__all__ = ["train_centralized"]


def train_centralized(
    model_fn: Callable[[], nn.Module],
    train: ArrayDataset,
    test: ArrayDataset,
    config: TrainConfig,
    epochs: int,
    *,
    seed: int = 0,
    loss: LossFn | None = None,
) -> list[dict[str, float]]:
    """Train ``epochs`` epochs on ``train`` (same initialisation seed, optimizer, learning rate
    and batch size as the federation); returns test metrics after each epoch."""
    with torch_seed(seed):
        adapter = TorchAdapter(model_fn(), loss)
    curve = []
    for epoch in range(1, epochs + 1):
        adapter.fit(
            train,
            TrainConfig(
                1, config.batch_size, config.optimizer, config.learning_rate, seed=seed + epoch
            ),
        )
        curve.append({"epoch": epoch, **adapter.evaluate(test)})
    return curve
