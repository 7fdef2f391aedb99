"""CIFAR-10 from the files users already have: the binary version or torchvision's python one.

Two layouts are read, both as distributed by the dataset's authors:

- ``cifar-10-batches-bin/``: ``data_batch_1.bin`` .. ``data_batch_5.bin`` and ``test_batch.bin``,
  each a run of 3073-byte records (one label byte, then 3072 pixel bytes: 1024 red, 1024 green,
  1024 blue, row-major 32x32).
- ``cifar-10-batches-py/`` (what ``torchvision.datasets.CIFAR10`` leaves in its root):
  ``data_batch_1`` .. ``data_batch_5`` and ``test_batch``, each a pickled dict with ``b"data"``
  (uint8, N x 3072, the same pixel order) and ``b"labels"`` (a list of int).

A pickle can run any callable it names, so the python batches are read by an unpickler that admits
only what a plain numpy array, dicts, lists, bytes, str and int need, and refuses anything else
by name before it is called. The binary version needs no unpickling and is preferred when both
are present.

References:
    Krizhevsky, "Learning Multiple Layers of Features from Tiny Images", 2009.
"""

from __future__ import annotations

import _codecs
import importlib
import math
import os
import pickle
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from fedfuse.data._dataset import ArrayDataset
from fedfuse.data._files import DatasetFormatError, DatasetNotFoundError, checked_size
from fedfuse.weights import SizeLimits

__all__ = ["CIFAR10_BIN_DIR", "CIFAR10_PY_DIR", "load_cifar10"]

#: The binary version's folder name, as in ``cifar-10-binary.tar.gz``.
CIFAR10_BIN_DIR = "cifar-10-batches-bin"
#: The python version's folder name, as in ``cifar-10-python.tar.gz`` and torchvision's root.
CIFAR10_PY_DIR = "cifar-10-batches-py"

_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
_TEST_BATCH = "test_batch"
_PIXELS = 3 * 32 * 32
_RECORD = 1 + _PIXELS
_NUM_CLASSES = 10
_LIMITS = SizeLimits()


def _batch_names(layout: str) -> list[str]:
    suffix = ".bin" if layout == "bin" else ""
    return [f"{name}{suffix}" for name in (*_TRAIN_BATCHES, _TEST_BATCH)]


def _find_cifar10(directory: Path) -> tuple[Path, str]:
    """The folder holding all six batches and its layout (``"bin"`` or ``"py"``)."""
    candidates = [
        (directory, "bin"),
        (directory, "py"),
        (directory / CIFAR10_BIN_DIR, "bin"),
        (directory / CIFAR10_PY_DIR, "py"),
    ]
    partial = ""
    for folder, layout in candidates:
        names = _batch_names(layout)
        missing = [n for n in names if not (folder / n).is_file()]
        if not missing:
            return folder, layout
        if len(missing) < len(names) and not partial:
            partial = f"; {folder} has some batches but lacks {', '.join(missing)}"
    raise DatasetNotFoundError(
        f"CIFAR-10 not found in {directory}{partial}. Put the binary version's files "
        f"({', '.join(_batch_names('bin'))}) in {directory / CIFAR10_BIN_DIR}, or the python "
        f"version's ({', '.join(_batch_names('py'))}, as torchvision downloads them) in "
        f"{directory / CIFAR10_PY_DIR}; both come from https://www.cs.toronto.edu/~kriz/cifar.html"
    )


# --- the binary version ------------------------------------------------------------------------


def _read_bin_batch(path: Path, limits: SizeLimits) -> tuple[np.ndarray, np.ndarray]:
    """Pixels ``(N, 3072)`` uint8 and labels ``(N,)`` of one binary batch (size checked first)."""
    size = checked_size(path, limits, "CIFAR-10 binary batch")
    if size == 0 or size % _RECORD:
        raise DatasetFormatError(
            f"{path}: {size:,} bytes is not a whole number of {_RECORD}-byte CIFAR-10 records "
            f"(1 label byte + {_PIXELS} pixel bytes): truncated, or not CIFAR-10 "
            "(CIFAR-100's records have two label bytes)"
        )
    with path.open("rb") as fh:
        raw = fh.read(size + 1)
    if len(raw) != size:
        raise DatasetFormatError(f"{path}: changed size while being read")
    records = np.frombuffer(raw, dtype=np.uint8).reshape(-1, _RECORD)
    return records[:, 1:], records[:, 0]


# --- the python version ------------------------------------------------------------------------


class _NdarrayClass:
    """Stands for ``numpy.ndarray`` inside a pickle: accepted as ``_reconstruct``'s first
    argument, never callable, so a pickle cannot allocate an array of a shape it chose."""


_NDARRAY = _NdarrayClass()


def _numpy_global(module: str, name: str) -> Any:
    """``module.name``, read from ``numpy._core`` where numpy 2 moved ``numpy.core``."""
    if module.startswith("numpy.core."):
        try:
            return getattr(importlib.import_module("numpy._core." + module[11:]), name)
        except (ImportError, AttributeError):
            pass
    return getattr(importlib.import_module(module), name)


_RECONSTRUCT = frozenset(
    {"numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct"}
)
_FROMBUFFER = frozenset({"numpy.core.numeric._frombuffer", "numpy._core.numeric._frombuffer"})


class _BatchUnpickler(pickle.Unpickler):
    """An unpickler that admits only the globals a plain numpy array's pickle names.

    ``_reconstruct`` is wrapped so that it builds only an empty array (the data then comes from
    the pickle's own bytes, which ``limits`` already bounds); ``_codecs.encode`` (how protocol 2
    writes ``bytes``) is wrapped to latin-1 only. Anything else is refused with an error naming
    it, before it is called.
    """

    def __init__(self, file: BinaryIO, name: str) -> None:
        super().__init__(file, encoding="bytes")
        self._name = name

    def find_class(self, module: str, name: str) -> Any:
        qualified = f"{module}.{name}"
        if qualified in _RECONSTRUCT:
            return _checked_reconstruct(_numpy_global(module, name), self._name)
        if qualified in _FROMBUFFER or qualified == "numpy.dtype":
            return _numpy_global(module, name)
        if qualified == "numpy.ndarray":
            return _NDARRAY
        if qualified == "_codecs.encode":
            return _checked_encode(self._name)
        raise DatasetFormatError(
            f"{self._name}: refusing to unpickle {qualified}: a CIFAR-10 python batch holds only "
            "a numpy array, dicts, lists, bytes, str and int"
        )


def _checked_reconstruct(reconstruct: Any, name: str) -> Any:
    def build(cls: object, shape: object, dtype: object) -> np.ndarray:
        if cls is not _NDARRAY:
            raise DatasetFormatError(f"{name}: _reconstruct of {cls!r}, not numpy.ndarray")
        if not isinstance(shape, tuple) or math.prod(int(d) for d in shape) != 0:
            raise DatasetFormatError(f"{name}: _reconstruct of shape {shape!r}, not an empty one")
        if dtype not in (b"b", "b"):
            raise DatasetFormatError(f"{name}: _reconstruct with dtype {dtype!r}, not b'b'")
        return reconstruct(np.ndarray, shape, dtype)

    return build


def _checked_encode(name: str) -> Any:
    def encode(text: object, encoding: object = "utf-8") -> bytes:
        if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
            raise DatasetFormatError(f"{name}: _codecs.encode with encoding {encoding!r}")
        return _codecs.encode(text, "latin1")

    return encode


def _entry(batch: dict, key: str, path: Path) -> Any:
    for candidate in (key.encode(), key):
        if candidate in batch:
            return batch[candidate]
    found = ", ".join(repr(k) for k in list(batch)[:10])
    raise DatasetFormatError(f"{path}: no {key!r} entry in the batch (found {found})")


def _read_py_batch(path: Path, limits: SizeLimits) -> tuple[np.ndarray, np.ndarray]:
    """Pixels ``(N, 3072)`` uint8 and labels ``(N,)`` of one python batch, unpickled strictly."""
    checked_size(path, limits, "CIFAR-10 python batch")
    try:
        with path.open("rb") as fh:
            batch = _BatchUnpickler(fh, str(path)).load()
    except DatasetFormatError:
        raise
    except Exception as exc:  # a damaged pickle fails in many ways; all mean "not a batch"
        raise DatasetFormatError(
            f"{path}: not a readable CIFAR-10 python batch ({type(exc).__name__}: {exc})"
        ) from None
    if not isinstance(batch, dict):
        raise DatasetFormatError(f"{path}: a CIFAR-10 batch is a dict, got {type(batch).__name__}")
    pixels, labels = _entry(batch, "data", path), _entry(batch, "labels", path)
    if not isinstance(pixels, np.ndarray) or pixels.dtype != np.uint8:
        kind = pixels.dtype if isinstance(pixels, np.ndarray) else type(pixels).__name__
        raise DatasetFormatError(f"{path}: 'data' must be a uint8 array, got {kind}")
    if pixels.ndim != 2 or pixels.shape[1] != _PIXELS:
        raise DatasetFormatError(
            f"{path}: 'data' must have shape (N, {_PIXELS}), got {pixels.shape}"
        )
    if not isinstance(labels, list | np.ndarray) or not all(
        isinstance(v, int | np.integer) for v in labels
    ):
        raise DatasetFormatError(f"{path}: 'labels' must be a list of int")
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) != len(pixels):
        raise DatasetFormatError(
            f"{path}: {len(pixels)} images but {len(labels)} labels; they must match"
        )
    return pixels, labels


# --- both ---------------------------------------------------------------------------------------


def _split(paths: list[Path], layout: str, limits: SizeLimits) -> ArrayDataset:
    read = _read_bin_batch if layout == "bin" else _read_py_batch
    batches = [read(path, limits) for path in paths]
    for path, (_, labels) in zip(paths, batches, strict=True):
        bad = labels[(labels < 0) | (labels >= _NUM_CLASSES)]
        if bad.size:
            raise DatasetFormatError(
                f"{path}: label {int(bad[0])} is not a CIFAR-10 class (0..{_NUM_CLASSES - 1})"
            )
    count = sum(len(labels) for _, labels in batches)
    limits.check_bytes(count * _PIXELS * 4, f"{paths[0].parent}: CIFAR-10 as float32")
    x = np.concatenate([pixels for pixels, _ in batches]).reshape(count, 3, 32, 32)
    y = np.concatenate([labels for _, labels in batches]).astype(np.int64)
    return ArrayDataset(x.astype(np.float32) / np.float32(255.0), y)


def load_cifar10(
    directory: str | os.PathLike, *, limits: SizeLimits = _LIMITS
) -> tuple[ArrayDataset, ArrayDataset]:
    """CIFAR-10's ``(train, test)``, 50,000 and 10,000 images, from files already on disk.

    ``directory`` is ``cifar-10-batches-bin/``, ``cifar-10-batches-py/`` or a folder holding
    either (torchvision's ``root``); the binary version is read when both are there. ``x`` is
    float32 ``(N, 3, 32, 32)`` in [0, 1] (channels red, green, blue); ``y`` is int64 0..9 in the
    order ``airplane, automobile, bird, cat, deer, dog, frog, horse, ship, truck``.

    Raises:
        DatasetNotFoundError: no folder there holds all six batches (the message says which files
            go where).
        DatasetFormatError: a truncated binary batch, a pickle naming anything but a numpy array
            (refused by name, never called), wrong shapes or labels.
        SizeLimitError: a batch, or the decoded split, past ``limits.max_bytes``.
    """
    folder, layout = _find_cifar10(Path(directory))
    names = _batch_names(layout)
    train = _split([folder / n for n in names[:-1]], layout, limits)
    test = _split([folder / names[-1]], layout, limits)
    return train, test
