"""Federated EMNIST as TensorFlow Federated stores it: one HDF5 group per writer.

TFF's ``tff.simulation.datasets.emnist.load_data`` keeps two HDF5 files per variant in its cache
(``~/.keras/datasets``): ``fed_emnist_train.h5`` / ``fed_emnist_test.h5`` (62 classes: digits,
upper- and lower-case letters) and ``fed_emnist_digitsonly_train.h5`` /
``fed_emnist_digitsonly_test.h5`` (10 classes). Inside, ``examples/<writer id>/pixels`` is
``(N, 28, 28)`` float32 in [0, 1] and ``examples/<writer id>/label`` is ``(N,)`` int.

Each writer is a party, keyed by its own id. Every group and dataset is checked before it is read:
a hard link (no link to another file), a plain dataset (not virtual, no external raw storage), the
declared shape and dtype, and the decoded size against ``SizeLimits``. The file itself is read
piecewise, so its size is not capped (the full train file is about a gigabyte).

References:
    Caldas et al., "LEAF: A Benchmark for Federated Settings", 2018 (the writer split);
    TensorFlow Federated, ``tff.simulation.datasets.emnist``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from fedfuse._extras import import_extra
from fedfuse.data._dataset import ArrayDataset, FederatedDataset
from fedfuse.data._files import DatasetFormatError, DatasetNotFoundError
from fedfuse.weights import SizeLimits

__all__ = ["TFF_EMNIST_FILES", "load_federated_emnist"]

#: only_digits -> (train file, test file), as TFF names them.
TFF_EMNIST_FILES = {
    True: ("fed_emnist_digitsonly_train.h5", "fed_emnist_digitsonly_test.h5"),
    False: ("fed_emnist_train.h5", "fed_emnist_test.h5"),
}

_IMAGE = (28, 28)
# The full variant's train split decodes to 1.07 GB of float32, past the 1 GiB default cap.
_LIMITS = SizeLimits(max_bytes=2 << 30)


def _choose_files(directory: Path, only_digits: bool | None) -> tuple[Path, Path, bool]:
    """The train and test paths of the chosen variant, and whether it is digits only."""
    present = {
        digits: (directory / names[0]).is_file() for digits, names in TFF_EMNIST_FILES.items()
    }
    if only_digits is None:
        if all(present.values()):
            raise ValueError(
                f"{directory} holds both the digits-only and the full federated EMNIST; "
                "choose one with only_digits=True or only_digits=False"
            )
        only_digits = present[True] or not present[False]
    train_name, test_name = TFF_EMNIST_FILES[only_digits]
    if not present[only_digits]:
        other = TFF_EMNIST_FILES[not only_digits][0]
        hint = (
            f" (it holds {other}: pass only_digits={not only_digits})"
            if present[not only_digits]
            else ""
        )
        raise DatasetNotFoundError(
            f"federated EMNIST not found: put {train_name} (and optionally {test_name}) in "
            f"{directory}{hint}. TensorFlow Federated downloads them into ~/.keras/datasets "
            "(tff.simulation.datasets.emnist.load_data); fed_emnist_train.h5 / "
            "fed_emnist_test.h5 are the 62-class variant"
        )
    return directory / train_name, directory / test_name, only_digits


def _member(h5py: Any, group: Any, name: str, kind: type, path: Path) -> Any:
    """``group[name]`` once it is a hard link to an object of ``kind``."""
    where = f"{path}: {group.name.rstrip('/')}/{name}"
    link = group.get(name, getlink=True)
    if link is None:
        raise DatasetFormatError(f"{where} is missing (expected the TFF layout examples/<id>/...)")
    if not isinstance(link, h5py.HardLink):
        raise DatasetFormatError(f"{where} is a {type(link).__name__}; only hard links are read")
    member = group[name]
    if not isinstance(member, kind):
        raise DatasetFormatError(f"{where} is a {type(member).__name__}, not a {kind.__name__}")
    if isinstance(member, h5py.Dataset) and (member.is_virtual or member.external):
        raise DatasetFormatError(f"{where} keeps its data outside this file; refusing to read it")
    return member


def _writer_datasets(h5py: Any, examples: Any, writer: str, path: Path) -> tuple[Any, Any]:
    """One writer's ``pixels`` and ``label`` datasets, their layout checked (nothing read)."""
    group = _member(h5py, examples, writer, h5py.Group, path)
    pixels = _member(h5py, group, "pixels", h5py.Dataset, path)
    label = _member(h5py, group, "label", h5py.Dataset, path)
    where = f"{path}: writer {writer!r}"
    if pixels.ndim != 3 or pixels.shape[1:] != _IMAGE or pixels.dtype.kind != "f":
        raise DatasetFormatError(
            f"{where}: pixels must be float (N, 28, 28), got {pixels.dtype} {pixels.shape}"
        )
    if label.ndim != 1 or label.dtype.kind not in "iu":
        raise DatasetFormatError(
            f"{where}: label must be int (N,), got {label.dtype} {label.shape}"
        )
    if label.shape[0] != pixels.shape[0]:
        raise DatasetFormatError(
            f"{where}: {pixels.shape[0]} images but {label.shape[0]} labels; they must match"
        )
    return pixels, label


def _read_writer(pixels: Any, label: Any, where: str, num_classes: int) -> ArrayDataset:
    """One writer's ``(N, 1, 28, 28)`` float32 images and int64 labels, their values checked."""
    x = np.asarray(pixels[()], dtype=np.float32)
    y = np.asarray(label[()], dtype=np.int64)
    if not np.all((x >= 0) & (x <= 1)):  # also false for NaN
        raise DatasetFormatError(f"{where}: pixels must be finite and in [0, 1]")
    bad = y[(y < 0) | (y >= num_classes)]
    if bad.size:
        raise DatasetFormatError(f"{where}: label {int(bad[0])} is not in 0..{num_classes - 1}")
    return ArrayDataset(x.reshape(len(x), 1, *_IMAGE), y)


def _read_split(
    h5py: Any,
    path: Path,
    writers: list[str] | None,
    max_clients: int | None,
    num_classes: int,
    limits: SizeLimits,
) -> dict[str, ArrayDataset]:
    """Writer id -> data for ``writers`` (those present), or for the first ``max_clients`` in
    the file's order when ``writers`` is None. Every writer's layout, and the decoded size of
    them all, is checked before any data is read."""
    try:
        handle = h5py.File(path, "r")
    except OSError as exc:
        raise DatasetFormatError(f"{path}: not a readable HDF5 file: {exc}") from None
    with handle:
        examples = _member(h5py, handle, "examples", h5py.Group, path)
        names = list(examples.keys())
        chosen = names[:max_clients] if writers is None else [w for w in writers if w in examples]
        datasets = {w: _writer_datasets(h5py, examples, w, path) for w in chosen}
        decoded = sum(pixels.size * 4 + label.size * 8 for pixels, label in datasets.values())
        limits.check_bytes(decoded, f"{path}: {len(chosen)} writers as float32")
        return {
            writer: _read_writer(pixels, label, f"{path}: writer {writer!r}", num_classes)
            for writer, (pixels, label) in datasets.items()
        }


def load_federated_emnist(
    directory: str | os.PathLike,
    *,
    only_digits: bool | None = None,
    max_clients: int | None = None,
    limits: SizeLimits = _LIMITS,
) -> FederatedDataset:
    """TFF's federated EMNIST from its HDF5 files: one party per writer, keyed by writer id.

    ``directory`` holds the train file and, optionally, the test file of one variant (see
    ``TFF_EMNIST_FILES``); ``only_digits=None`` takes whichever variant is there. Each party's
    training data comes from the train file and its local test split from the test file, when
    that file has the writer. ``max_clients`` keeps only the first writers, in the file's order.
    A writer with no training examples is left out; so is a writer only in the test file.
    ``x`` is float32 ``(N, 1, 28, 28)`` in [0, 1]; ``y`` is int64, ``num_classes`` is 10 for the
    digits-only variant and 62 for the full one. Needs h5py (``pip install 'fedfuse[emnist]'``).

    ``limits`` caps the decoded bytes of each split (2 GiB by default: the full train split is
    1.07 GB), checked from the declared shapes before any data is read.

    Raises:
        DatasetNotFoundError: no train file in ``directory`` (the message names the files).
        DatasetFormatError: not HDF5, not the TFF layout, links or data outside the file, wrong
            shapes, dtypes, pixel values or labels (the message names the file and writer).
        SizeLimitError: a writer, or the whole split, decodes past ``limits.max_bytes``.
        MissingExtraError: h5py is not installed.
    """
    if max_clients is not None and max_clients < 1:
        raise ValueError(f"max_clients must be at least 1, got max_clients={max_clients}")
    folder = Path(directory)
    if not folder.is_dir():
        raise DatasetNotFoundError(
            f"{folder} is not a folder; federated EMNIST needs a folder holding "
            f"{' or '.join(names[0] for names in TFF_EMNIST_FILES.values())}"
        )
    train_path, test_path, digits = _choose_files(folder, only_digits)
    h5py = import_extra("h5py", "emnist", "the TFF federated EMNIST loader")
    num_classes = 10 if digits else 62
    train = _read_split(h5py, train_path, None, max_clients, num_classes, limits)
    train = {writer: data for writer, data in train.items() if len(data)}
    if not train:
        raise DatasetFormatError(f"{train_path}: no writer has any training examples")
    test = {}
    if test_path.is_file():
        test = _read_split(h5py, test_path, list(train), None, num_classes, limits)
    parties = {
        writer: (data.x, data.y, *((test[writer].x, test[writer].y) if writer in test else ()))
        for writer, data in train.items()
    }
    return FederatedDataset.from_dict(parties, num_classes=num_classes)
