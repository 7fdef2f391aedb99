"""Data handlers for Keras models (channels last): ``mnist_keras`` and ``cifar10_keras``."""

from __future__ import annotations

import numpy as np

from fedfuse.data._dataset import ArrayDataset, PartyData
from fedfuse.data._handlers import _images, register_data_handler

__all__ = ["cifar10_keras", "mnist_keras"]


def mnist_keras(party: PartyData) -> PartyData:
    """28x28 grey images as float32 ``(N, 28, 28, 1)`` in [0, 1]; labels int64 0..9."""
    test = party.test and _images(party.test, (28, 28, 1), "mnist_keras")
    return PartyData(_images(party.train, (28, 28, 1), "mnist_keras"), test)


def _channels_last(data: ArrayDataset) -> ArrayDataset:
    """CIFAR-10's own layout (flat 3072 values or ``(3, 32, 32)``) is channels first."""
    x = np.asarray(data.x)
    if x.ndim == 2 or (x.ndim == 4 and x.shape[1:] == (3, 32, 32)):
        x = x.reshape(len(x), 3, 32, 32).transpose(0, 2, 3, 1)
    return _images(ArrayDataset(x, data.y), (32, 32, 3), "cifar10_keras")


def cifar10_keras(party: PartyData) -> PartyData:
    """32x32 colour images as float32 ``(N, 32, 32, 3)`` in [0, 1]; labels int64 0..9.

    Accepts ``(N, 32, 32, 3)``, or CIFAR-10's channels-first ``(N, 3, 32, 32)`` / flat 3072
    values, which are transposed to channels last.
    """
    test = party.test and _channels_last(party.test)
    return PartyData(_channels_last(party.train), test)


register_data_handler("mnist_keras", mnist_keras)
register_data_handler("cifar10_keras", cifar10_keras)
