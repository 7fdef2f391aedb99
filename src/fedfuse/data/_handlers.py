"""Named data handlers, as the Model Fusion API names them (``mnist_pytorch``, ...).

A handler turns a party's raw arrays (as uploaded in a ``.npz``) into what its model expects.
Handlers are looked up by name; more are registered by the modules that need them.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from fedfuse.data._dataset import ArrayDataset, PartyData
from fedfuse.data._loaders import DatasetFormatError

__all__ = ["DATA_HANDLERS", "DataHandler", "get_data_handler", "register_data_handler"]

DataHandler = Callable[[PartyData], PartyData]
DATA_HANDLERS: dict[str, DataHandler] = {}


def register_data_handler(name: str, handler: DataHandler) -> DataHandler:
    """Make ``handler`` available under ``name`` (replacing any earlier one)."""
    DATA_HANDLERS[name] = handler
    return handler


def get_data_handler(name: str) -> DataHandler:
    try:
        return DATA_HANDLERS[name]
    except KeyError:
        raise ValueError(
            f"unknown data handler {name!r}; choose one of: {', '.join(sorted(DATA_HANDLERS))}"
        ) from None


def _images(data: ArrayDataset, shape: tuple[int, ...], name: str) -> ArrayDataset:
    x = np.asarray(data.x)
    if x.dtype.kind not in "uif":
        raise DatasetFormatError(f"{name}: x must be numeric, got dtype {x.dtype}")
    size = int(np.prod(shape))
    if x.ndim < 2 or int(np.prod(x.shape[1:])) != size:
        raise DatasetFormatError(
            f"{name}: each example must have {size} values {shape}, got shape {x.shape[1:]}"
        )
    x = x.astype(np.float32).reshape(len(x), *shape)
    if x.size and x.max() > 1.0:
        x /= 255.0
    y = np.asarray(data.y)
    if y.dtype.kind not in "ui" or (y.size and (y.min() < 0 or y.max() > 9)):
        raise DatasetFormatError(f"{name}: y must hold integer labels 0..9")
    return ArrayDataset(x, y.astype(np.int64))


def mnist_pytorch(party: PartyData) -> PartyData:
    """28x28 grey images as float32 ``(N, 1, 28, 28)`` in [0, 1]; labels int64 0..9."""
    test = party.test and _images(party.test, (1, 28, 28), "mnist_pytorch")
    return PartyData(_images(party.train, (1, 28, 28), "mnist_pytorch"), test)


register_data_handler("mnist_pytorch", mnist_pytorch)
