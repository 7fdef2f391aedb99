"""Models for decentralized training: the zoo plus a small GroupNorm CNN for 28x28 images.

Nodes hold different classes, so BatchNorm's batch statistics would differ from node to node
and its running averages would describe no one's data; GroupNorm normalises each example on
its own and has no buffers, so every variable of the model is a parameter that ECL constrains.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import nn

from fedfuse.models import MODELS, build_model

__all__ = ["CONSENSUS_MODELS", "gn_cnn", "make_model"]

#: Model names ``make_model`` accepts: ``gn_cnn`` and the ``fedfuse.models`` zoo.
CONSENSUS_MODELS = ("gn_cnn", *MODELS)


def gn_cnn(
    input_shape: Sequence[int] = (1, 28, 28),
    num_classes: int = 10,
    widths: tuple[int, int] = (8, 16),
    hidden: int = 64,
) -> nn.Module:
    """Two 5x5 conv blocks (conv, GroupNorm(4), ReLU, 2x2 max-pool), a 64-unit layer, logits.

    About 54k parameters on 28x28 inputs with the default widths: small enough to train eight
    nodes on two CPU cores, big enough for about 88% on Fashion-MNIST. Takes flat rows too.
    """
    shape = tuple(int(d) for d in input_shape)
    if len(shape) == 1 and math.isqrt(shape[0]) ** 2 == shape[0]:
        side = math.isqrt(shape[0])
        shape = (1, side, side)
    if len(shape) != 3 or min(shape[1:]) < 4:
        raise ValueError(f"gn_cnn needs image inputs (channels, height, width) >= 4x4, got {shape}")
    c1, c2 = widths
    flat = c2 * (shape[1] // 4) * (shape[2] // 4)
    return nn.Sequential(
        nn.Flatten(),  # flat rows and images alike become (batch, channels, height, width)
        nn.Unflatten(1, shape),
        nn.Conv2d(shape[0], c1, 5, padding=2),
        nn.GroupNorm(4, c1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(c1, c2, 5, padding=2),
        nn.GroupNorm(4, c2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(flat, hidden),
        nn.ReLU(),
        nn.Linear(hidden, num_classes),
    )


def make_model(name: str, input_shape: Sequence[int], num_classes: int) -> nn.Module:
    """``gn_cnn`` or any ``fedfuse.models.build_model`` name."""
    if name == "gn_cnn":
        return gn_cnn(input_shape, num_classes)
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(CONSENSUS_MODELS)}")
    return build_model(name, input_shape, num_classes)
