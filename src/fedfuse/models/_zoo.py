"""A small model zoo in plain torch (no torchvision), each built for a given input shape.

``build_model(name, input_shape, num_classes)`` is what the CLI and ``simulate`` use; the
functions can also be called directly. A description may come from someone else (a federation's
model, the join answer a party gets), so ``build_model`` counts the parameters first, on
torch's ``meta`` device (shapes only, nothing allocated), and refuses more than
``limits.max_params``.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence

import torch
from torch import nn

from fedfuse.weights import SizeLimits

__all__ = ["MODELS", "build_model", "cifar_cnn", "logistic_regression", "mlp", "mnist_cnn"]


def logistic_regression(input_shape: Sequence[int], num_classes: int) -> nn.Module:
    """Multinomial logistic regression: flatten, one linear layer (softmax lives in the loss)."""
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), num_classes))


def mlp(
    input_shape: Sequence[int], num_classes: int, hidden: Sequence[int] = (200, 200)
) -> nn.Module:
    """A ReLU multilayer perceptron over the flattened input."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = math.prod(input_shape)
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def _flat_size(features: nn.Module, input_shape: Sequence[int]) -> int:
    with torch.no_grad():
        return int(features(torch.zeros(1, *input_shape)).numel())


def mnist_cnn(input_shape: Sequence[int] = (1, 28, 28), num_classes: int = 10) -> nn.Module:
    """The Model Fusion tutorial's MNIST CNN: two 3x3 convs, max-pool, dropout, two dense layers.

    On 28x28 inputs the flattened size is 9216, as in the tutorial.
    """
    features = nn.Sequential(
        nn.Conv2d(input_shape[0], 32, 3, 1),
        nn.ReLU(),
        nn.Conv2d(32, 64, 3, 1),
        nn.ReLU(),
        nn.MaxPool2d(2, 2),
        nn.Dropout(p=0.25),
        nn.Flatten(),
    )
    return nn.Sequential(
        *features,
        nn.Linear(_flat_size(features, input_shape), 128),
        nn.ReLU(),
        nn.Dropout(p=0.5),
        nn.Linear(128, num_classes),
    )


def cifar_cnn(
    input_shape: Sequence[int] = (3, 32, 32), num_classes: int = 10, groups: int = 8
) -> nn.Module:
    """A CIFAR-style CNN with GroupNorm (BatchNorm statistics break under non-IID parties).

    Three conv blocks (32, 64, 128 channels; conv, GroupNorm, ReLU, 2x2 max-pool), then a dense
    classifier. Works for any input at least 8x8.
    """
    blocks: list[nn.Module] = []
    channels = input_shape[0]
    for width in (32, 64, 128):
        blocks += [
            nn.Conv2d(channels, width, 3, padding=1),
            nn.GroupNorm(groups, width),
            nn.ReLU(),
            nn.MaxPool2d(2),
        ]
        channels = width
    features = nn.Sequential(*blocks, nn.Flatten())
    return nn.Sequential(
        *features,
        nn.Linear(_flat_size(features, input_shape), 128),
        nn.ReLU(),
        nn.Linear(128, num_classes),
    )


_BUILDERS = {
    "logreg": logistic_regression,
    "mlp": mlp,
    "mnist_cnn": mnist_cnn,
    "cifar_cnn": cifar_cnn,
}
MODELS: tuple[str, ...] = tuple(sorted(_BUILDERS))


_LIMITS = SizeLimits()  # the default caps (an immutable value)
_MAX_DIMS = 4
_MAX_CLASSES = 1_000_000


def build_model(
    name: str, input_shape: Sequence[int], num_classes: int, *, limits: SizeLimits = _LIMITS
) -> nn.Module:
    """Build zoo model ``name`` for inputs of ``input_shape`` (without the batch dimension).

    Raises:
        ValueError: an unknown model, or a shape or class count it cannot be built for.
        SizeLimitError: the model would hold more than ``limits.max_params`` parameters
            (counted without allocating them).
    """
    try:
        builder = _BUILDERS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}") from None
    shape, num_classes = _checked_shape(input_shape), _checked_classes(num_classes)
    if name in ("mnist_cnn", "cifar_cnn"):
        if len(shape) == 1 and math.isqrt(shape[0]) ** 2 == shape[0]:
            side = math.isqrt(shape[0])
            shape = (1, side, side)
        if len(shape) != 3:
            raise ValueError(
                f"model {name!r} needs image inputs (channels, height, width), got shape {shape}"
            )
        if name == "cifar_cnn" and min(shape[1:]) < 8:
            raise ValueError(f"model 'cifar_cnn' needs images at least 8x8, got {shape}")
        if name == "mnist_cnn" and min(shape[1:]) < 6:
            raise ValueError(f"model 'mnist_cnn' needs images at least 6x6, got {shape}")

        def build() -> nn.Module:
            return _Reshape(shape, builder(shape, num_classes))
    else:

        def build() -> nn.Module:
            return builder(shape, num_classes)

    with torch.device("meta"):
        count = sum(p.numel() for p in build().parameters())
    limits.check_params(count, f"model {name!r} for inputs {shape}")
    return build()


def _checked_shape(input_shape: Sequence[int]) -> tuple[int, ...]:
    try:
        shape = tuple(int(d) for d in input_shape)
    except (TypeError, ValueError):
        raise ValueError(f"input_shape must be a list of integers, got {input_shape!r}") from None
    if not 1 <= len(shape) <= _MAX_DIMS or min(shape) <= 0:
        raise ValueError(f"input_shape must have 1 to {_MAX_DIMS} positive dimensions, got {shape}")
    return shape


def _checked_classes(num_classes: int) -> int:
    try:
        count = operator.index(num_classes)
    except TypeError:
        raise ValueError(f"num_classes must be an integer, got {num_classes!r}") from None
    if not 1 <= count <= _MAX_CLASSES:
        raise ValueError(f"num_classes must be between 1 and {_MAX_CLASSES:,}, got {count:,}")
    return count


class _Reshape(nn.Module):
    """Views flat inputs as images so image models also take flattened rows (e.g. digits)."""

    def __init__(self, shape: tuple[int, ...], inner: nn.Module) -> None:
        super().__init__()
        self.shape = shape
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x.reshape(x.shape[0], *self.shape))
