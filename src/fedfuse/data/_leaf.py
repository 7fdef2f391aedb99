"""LEAF's JSON files (FEMNIST and the other numeric LEAF sets): one party per LEAF user.

LEAF's preprocessing (``./preprocess.sh`` in ``leaf/data/<dataset>``) writes ``data/train/*.json``
and ``data/test/*.json``, each file an object::

    {"users": ["f0000_14", ...], "num_samples": [134, ...],
     "user_data": {"f0000_14": {"x": [[784 floats], ...], "y": [7, ...]}, ...}}

A user's test examples are in the test files under the same id (LEAF's split by sample). Users
only in the test files (LEAF's split by user) are held-out users: their examples become the
central test set. Every file's size is checked before it is parsed, NaN and Infinity literals are
refused, and each user's ``x`` rows must be numbers of one length, with one integer ``y`` each.

References:
    Caldas et al., "LEAF: A Benchmark for Federated Settings", 2018.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fedfuse._natural import natural_key
from fedfuse.data._dataset import ArrayDataset, FederatedDataset
from fedfuse.data._files import DatasetFormatError, DatasetNotFoundError, checked_size
from fedfuse.weights import SizeLimits

__all__ = ["load_leaf"]

_LIMITS = SizeLimits()


def _json_files(directory: Path) -> tuple[list[Path], list[Path]]:
    """The train and test ``.json`` files: ``train/`` and ``test/``, or a folder or file of them."""
    if directory.is_file():
        return [directory], []
    if (directory / "train").is_dir():
        train = sorted(
            (directory / "train").glob("*.json"), key=lambda path: natural_key(path.name)
        )
        test_dir = directory / "test"
        test = (
            sorted(test_dir.glob("*.json"), key=lambda path: natural_key(path.name))
            if test_dir.is_dir()
            else []
        )
    else:
        train = (
            sorted(directory.glob("*.json"), key=lambda path: natural_key(path.name))
            if directory.is_dir()
            else []
        )
        test = []
    if not train:
        raise DatasetNotFoundError(
            f"no LEAF json files in {directory}: put the train files in {directory / 'train'} "
            f"and the test files in {directory / 'test'} (what LEAF's preprocess.sh writes to "
            "leaf/data/<dataset>/data/train and .../test), or pass one .json file"
        )
    return train, test


def _refuse_constant(name: str) -> float:
    raise ValueError(f"the number {name} (every value must be finite)")


def _parse(path: Path, limits: SizeLimits) -> dict[str, Any]:
    checked_size(path, limits, "LEAF json file")
    try:
        with path.open("rb") as fh:
            document = json.load(fh, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError too
        raise DatasetFormatError(f"{path}: not valid LEAF json: {exc}") from None
    if not isinstance(document, dict):
        raise DatasetFormatError(f"{path}: expected a json object, got {type(document).__name__}")
    users, user_data = document.get("users"), document.get("user_data")
    if not isinstance(users, list) or not all(isinstance(u, str) for u in users):
        raise DatasetFormatError(f"{path}: 'users' must be a list of user ids (strings)")
    if not isinstance(user_data, dict):
        raise DatasetFormatError(f"{path}: 'user_data' must be an object keyed by user id")
    num_samples = document.get("num_samples")
    if num_samples is not None and (
        not isinstance(num_samples, list) or len(num_samples) != len(users)
    ):
        raise DatasetFormatError(
            f"{path}: 'num_samples' must be a list with one count per user ({len(users)})"
        )
    return document


def _rows(x: object, where: str) -> np.ndarray:
    """``x`` as a ``(N, D)`` float32 array, or an error naming the first bad row."""
    if not isinstance(x, list):
        raise DatasetFormatError(f"{where}: 'x' must be a list of rows")
    if not x:
        return np.zeros((0, 0), dtype=np.float32)
    try:
        array = np.asarray(x)
    except ValueError:  # ragged rows: found below
        array = None
    if array is not None and array.ndim == 2 and array.dtype.kind in "biuf":
        return array.astype(np.float32)
    for i, row in enumerate(x):
        if not isinstance(row, list) or not all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in row
        ):
            raise DatasetFormatError(f"{where}: x row {i} is not a list of numbers")
        if len(row) != len(x[0]):
            raise DatasetFormatError(
                f"{where}: x row {i} has {len(row)} values, row 0 has {len(x[0])}"
            )
    raise DatasetFormatError(f"{where}: x must be a list of rows of numbers that fit float32")


def _labels(y: object, where: str) -> np.ndarray:
    if not isinstance(y, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in y
    ):
        raise DatasetFormatError(f"{where}: 'y' must be a list of integer labels")
    labels = np.asarray(y, dtype=np.int64) if y else np.zeros(0, dtype=np.int64)
    if labels.size and labels.min() < 0:
        raise DatasetFormatError(f"{where}: label {int(labels.min())} is negative")
    return labels


def _users(path: Path, document: dict[str, Any]) -> dict[str, ArrayDataset]:
    """User id -> examples of one parsed file, in the file's ``users`` order."""
    counts = document.get("num_samples") or [None] * len(document["users"])
    out: dict[str, ArrayDataset] = {}
    for user, count in zip(document["users"], counts, strict=True):
        where = f"{path}: user {user!r}"
        entry = document["user_data"].get(user)
        if not isinstance(entry, dict) or "x" not in entry or "y" not in entry:
            raise DatasetFormatError(f"{where}: user_data has no {{'x': ..., 'y': ...}} for it")
        x, y = _rows(entry["x"], where), _labels(entry["y"], where)
        if len(x) != len(y):
            raise DatasetFormatError(f"{where}: {len(x)} rows of x but {len(y)} labels in y")
        if count is not None and count != len(y):
            raise DatasetFormatError(f"{where}: num_samples says {count}, user_data has {len(y)}")
        if user in out:
            raise DatasetFormatError(f"{where}: listed twice in 'users'")
        out[user] = ArrayDataset(x, y)
    return out


def _read_split(
    paths: Sequence[Path], max_clients: int | None, limits: SizeLimits
) -> dict[str, ArrayDataset]:
    """User id -> examples over ``paths``; stops once ``max_clients`` users are read."""
    split: dict[str, ArrayDataset] = {}
    where_read: dict[str, Path] = {}
    for path in paths:
        for user, data in _users(path, _parse(path, limits)).items():
            if user in split:
                raise DatasetFormatError(f"{path}: user {user!r} is also in {where_read[user]}")
            split[user], where_read[user] = data, path
            if max_clients is not None and len(split) == max_clients:
                return split
    return split


def _shaped(data: ArrayDataset, shape: tuple[int, ...], width: int, where: str) -> ArrayDataset:
    if data.x.shape[1:] != (width,) and len(data):
        raise DatasetFormatError(
            f"{where}: rows of {data.x.shape[1:]} values, but the first user's have {width}"
        )
    return ArrayDataset(data.x.reshape(len(data), *shape), data.y)


def load_leaf(
    directory: str | os.PathLike,
    *,
    shape: Sequence[int] | None = None,
    num_classes: int | None = None,
    max_clients: int | None = None,
    limits: SizeLimits = _LIMITS,
) -> FederatedDataset:
    """A LEAF dataset's json files as a ``FederatedDataset``, one party per LEAF user.

    ``directory`` holds ``train/`` and (optionally) ``test/`` folders of ``.json`` files, or is
    one folder or one file of them (then there are no test splits). Users are taken in file order
    (files in natural order); ``max_clients`` keeps the first ones. A user's test examples become
    its local test split; users only in the test files become the central test set (when
    ``max_clients`` is None; otherwise they are skipped). ``shape`` reshapes each row, e.g.
    ``(1, 28, 28)`` for FEMNIST; ``num_classes`` defaults to the largest label plus one, and
    labels past it are refused. ``x`` is float32, ``y`` int64.

    Raises:
        DatasetNotFoundError: no json files there (the message says where to put them).
        DatasetFormatError: not json, not the LEAF layout, NaN or Infinity, ragged or non-numeric
            rows, rows of different lengths, a ``y`` that does not match ``x`` or ``num_samples``,
            a user in two files (the message names the file, user and row).
        SizeLimitError: a json file larger than ``limits.max_bytes``.
    """
    if max_clients is not None and max_clients < 1:
        raise ValueError(f"max_clients must be at least 1, got max_clients={max_clients}")
    train_paths, test_paths = _json_files(Path(directory))
    train = {u: d for u, d in _read_split(train_paths, max_clients, limits).items() if len(d)}
    if not train:
        raise DatasetFormatError(f"{directory}: no LEAF user has any training examples")
    test = _read_split(test_paths, None, limits)
    if max_clients is not None:
        test = {u: d for u, d in test.items() if u in train}
    first = next(iter(train.values()))
    width = first.x.shape[1]
    row_shape = tuple(shape) if shape is not None else (width,)
    if math.prod(row_shape) != width:
        raise DatasetFormatError(f"{directory}: rows of {width} values cannot be shaped {shape}")
    train = {u: _shaped(d, row_shape, width, f"train user {u!r}") for u, d in train.items()}
    test = {u: _shaped(d, row_shape, width, f"test user {u!r}") for u, d in test.items()}
    held_out = [d for u, d in test.items() if u not in train and len(d)]
    central = None
    if held_out:
        central = ArrayDataset(
            np.concatenate([d.x for d in held_out]), np.concatenate([d.y for d in held_out])
        )
    labels = [d.y for d in (*train.values(), *test.values())]
    largest = int(max(int(y.max(initial=-1)) for y in labels))
    if num_classes is not None and largest >= num_classes:
        raise DatasetFormatError(
            f"{directory}: label {largest} is past the {num_classes} classes (0..{num_classes - 1})"
        )
    parties = {
        user: (data.x, data.y, *((test[user].x, test[user].y) if user in test else ()))
        for user, data in train.items()
    }
    return FederatedDataset.from_dict(
        parties, test=central, num_classes=num_classes if num_classes is not None else largest + 1
    )
