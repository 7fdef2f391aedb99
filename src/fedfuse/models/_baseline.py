"""The centralized baseline: the same model trained on everyone's data pooled in one place."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from fedfuse.data import ArrayDataset
from fedfuse.models._config import TrainConfig
from fedfuse.models._torch import LossFn, TorchAdapter, torch_seed

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
    """The baseline: the model ``model_fn`` builds (under ``seed``), trained ``epochs`` epochs
    on the pooled ``train`` data with ``config``'s optimizer, learning rate and batch size (as
    the federation trains); returns ``test`` metrics after each epoch. The module is trained
    in place. Used by simulations and by decentralized consensus alike."""
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
