"""In-memory datasets: one party's arrays, and a federation of parties keyed by id."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["ArrayDataset", "FederatedDataset", "PartyData"]


@dataclass(frozen=True, eq=False)
class ArrayDataset:
    """Features ``x`` and labels ``y`` with one row per example, held in memory."""

    x: np.ndarray
    y: np.ndarray

    def __post_init__(self) -> None:
        if len(self.x) != len(self.y):
            raise ValueError(
                "x and y must have the same number of rows: "
                f"x has {len(self.x)}, y has {len(self.y)}"
            )

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, indices: np.ndarray | Sequence[int]) -> ArrayDataset:
        """The examples at ``indices`` (a copy)."""
        idx = np.asarray(indices, dtype=np.int64)
        return ArrayDataset(self.x[idx], self.y[idx])

    def label_counts(self, num_classes: int | None = None) -> np.ndarray:
        """How many examples carry each label ``0 .. num_classes-1``."""
        size = num_classes if num_classes is not None else int(self.y.max(initial=-1)) + 1
        return np.bincount(self.y.astype(np.int64).ravel(), minlength=size)


@dataclass(frozen=True, eq=False)
class PartyData:
    """What one party holds: its training examples and, optionally, a local test split."""

    train: ArrayDataset
    test: ArrayDataset | None = None


class FederatedDataset(Mapping[str, PartyData]):
    """Party id -> ``PartyData``, plus an optional central test set held by the aggregator.

    Party ids keep the order they were given in. ``num_classes`` is used for label statistics.
    """

    def __init__(
        self,
        parties: Mapping[str, PartyData],
        test: ArrayDataset | None = None,
        num_classes: int | None = None,
    ) -> None:
        if not parties:
            raise ValueError("a federated dataset needs at least one party")
        self._parties = dict(parties)
        self.test = test
        labels = [p.train.y for p in self._parties.values()]
        self.num_classes = (
            num_classes
            if num_classes is not None
            else int(max(int(y.max(initial=-1)) for y in labels)) + 1
        )

    @classmethod
    def from_dict(
        cls,
        mapping: Mapping[Any, Any],
        test: ArrayDataset | tuple[Any, Any] | None = None,
        num_classes: int | None = None,
    ) -> FederatedDataset:
        """A federated dataset from your own per-client arrays, keeping your client ids.

        Each value of ``mapping`` is one client's data, in any of these forms:

        - ``(x, y)``: training examples only;
        - ``(x_train, y_train, x_test, y_test)``: with a local test split;
        - ``{"x": x, "y": y}``, or ``{"x_train": ..., "y_train": ..., "x_test": ...,
          "y_test": ...}`` (the party ``.npz`` key names);
        - an ``ArrayDataset`` (training examples) or a ``PartyData``.

        Arrays may be numpy arrays or nested lists. Ids become ``str(client_id)``, in the order
        of ``mapping``. ``test`` is the central test set, an ``ArrayDataset`` or ``(x, y)``.
        Every client's ``x`` rows must have the same shape (one model trains on all of them)
        and ``y`` must be one label per row.

        Example:
            >>> fed = FederatedDataset.from_dict({"clinic_a": (xa, ya), "clinic_b": (xb, yb)})

        Raises:
            ValueError: an empty mapping, two ids with the same ``str``, or a client whose data
                has the wrong form, mismatched lengths or wrong shapes (the message names it).
        """
        if not isinstance(mapping, Mapping) or not mapping:
            raise ValueError("from_dict needs a non-empty mapping {client_id: client data}")
        parties: dict[str, PartyData] = {}
        for key, value in mapping.items():
            name = str(key)
            if name in parties:
                raise ValueError(f"client ids {key!r} and another id both read {name!r}")
            parties[name] = _party_from_value(value, f"client {name!r}")
        central = None if test is None else _dataset_from_value(test, "the central test set")
        row_shape = next(iter(parties.values())).train.x.shape[1:]
        first = next(iter(parties))
        for name, party in parties.items():
            for split, data in (("train", party.train), ("test", party.test)):
                _check_row_shape(data, row_shape, f"client {name!r} {split}", first)
        _check_row_shape(central, row_shape, "the central test set", first)
        if num_classes is None:
            labels = [d.y for p in parties.values() for d in (p.train, p.test) if d is not None]
            labels += [central.y] if central is not None else []
            num_classes = int(max(int(y.max(initial=-1)) for y in labels)) + 1
        return cls(parties, test=central, num_classes=num_classes)

    def __getitem__(self, party_id: str) -> PartyData:
        try:
            return self._parties[party_id]
        except KeyError:
            raise KeyError(f"unknown party id {party_id!r}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._parties)

    def __len__(self) -> int:
        return len(self._parties)

    @property
    def party_ids(self) -> list[str]:
        return list(self._parties)

    def train_data(self, party_ids: Sequence[str] | None = None) -> list[ArrayDataset]:
        """The training sets of ``party_ids`` (all parties by default), in that order."""
        return [self[p].train for p in (party_ids or self.party_ids)]

    def test_data(self, party_ids: Sequence[str] | None = None) -> list[ArrayDataset]:
        """The local test splits of ``party_ids`` that have one."""
        return [self[p].test for p in (party_ids or self.party_ids) if self[p].test is not None]

    def label_stats(self) -> dict[str, np.ndarray]:
        """Per-party training label counts (``num_classes`` entries each)."""
        return {p: d.train.label_counts(self.num_classes) for p, d in self._parties.items()}

    def pooled_train(self) -> ArrayDataset:
        """All parties' training examples in one dataset: the centralized baseline's data."""
        trains = self.train_data()
        return ArrayDataset(
            np.concatenate([d.x for d in trains]), np.concatenate([d.y for d in trains])
        )

    def save_npz(self, directory: str | os.PathLike, prefix: str = "data_party") -> list[Path]:
        """Write one ``{prefix}{i}.npz`` per party with ``x_train, y_train, x_test, y_test``.

        This is the party file layout of the Model Fusion API tutorial. A party without a test
        split gets empty ``x_test``/``y_test`` arrays.
        """
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        paths = []
        for i, data in enumerate(self._parties.values()):
            test = data.test or ArrayDataset(data.train.x[:0], data.train.y[:0])
            path = out / f"{prefix}{i}.npz"
            np.savez(path, x_train=data.train.x, y_train=data.train.y, x_test=test.x, y_test=test.y)
            paths.append(path)
        return paths


# --- from_dict's checks ------------------------------------------------------------------------

_SPLIT_KEYS = ("x_train", "y_train", "x_test", "y_test")


def _arrays(x: object, y: object, what: str) -> ArrayDataset:
    """``x`` and ``y`` as arrays with one row per example and one label per row."""
    try:
        x_array, y_array = np.asarray(x), np.asarray(y)
    except ValueError as exc:  # ragged nested lists
        raise ValueError(f"{what}: x and y must be rectangular arrays: {exc}") from None
    if x_array.ndim == 0:
        raise ValueError(f"{what}: x must have one row per example, got a scalar")
    if y_array.ndim != 1:
        raise ValueError(
            f"{what}: y must be one label per example, shape (N,); got {y_array.shape}"
        )
    if x_array.dtype.kind not in "biuf" or y_array.dtype.kind not in "biuf":
        raise ValueError(
            f"{what}: x and y must be numeric, got dtypes {x_array.dtype} and {y_array.dtype}"
        )
    if len(x_array) != len(y_array):
        raise ValueError(
            f"{what}: x has {len(x_array)} rows but y has {len(y_array)} labels; "
            "give one label per row"
        )
    return ArrayDataset(x_array, y_array)


def _dataset_from_value(value: object, what: str) -> ArrayDataset:
    if isinstance(value, ArrayDataset):
        return _arrays(value.x, value.y, what)
    if isinstance(value, tuple | list) and len(value) == 2:
        return _arrays(value[0], value[1], what)
    raise ValueError(f"{what}: expected an ArrayDataset or (x, y), got {type(value).__name__}")


def _party_from_value(value: object, what: str) -> PartyData:
    """One client's ``PartyData`` from any form ``FederatedDataset.from_dict`` accepts."""
    if isinstance(value, PartyData):
        train = _arrays(value.train.x, value.train.y, f"{what} train")
        test = None if value.test is None else _arrays(value.test.x, value.test.y, f"{what} test")
    elif isinstance(value, ArrayDataset):
        train, test = _arrays(value.x, value.y, f"{what} train"), None
    elif isinstance(value, Mapping) and {"x", "y"} <= set(value):
        train, test = _arrays(value["x"], value["y"], f"{what} train"), None
    elif isinstance(value, Mapping) and {"x_train", "y_train"} <= set(value):
        train = _arrays(value["x_train"], value["y_train"], f"{what} train")
        test = None
        if "x_test" in value or "y_test" in value:
            if not {"x_test", "y_test"} <= set(value):
                raise ValueError(f"{what}: give both x_test and y_test, or neither")
            test = _arrays(value["x_test"], value["y_test"], f"{what} test")
    elif isinstance(value, tuple | list) and len(value) in (2, 4):
        train = _arrays(value[0], value[1], f"{what} train")
        test = _arrays(value[2], value[3], f"{what} test") if len(value) == 4 else None
    else:
        raise ValueError(
            f"{what}: expected (x, y), (x_train, y_train, x_test, y_test), a dict with x and y "
            f"(or {', '.join(_SPLIT_KEYS)}), an ArrayDataset or a PartyData; "
            f"got {type(value).__name__}"
            + (f" of length {len(value)}" if isinstance(value, tuple | list) else "")
            + (f" with keys {', '.join(map(str, value))}" if isinstance(value, Mapping) else "")
        )
    if len(train) == 0:
        raise ValueError(f"{what}: has no training examples")
    return PartyData(train=train, test=test if test is not None and len(test) else None)


def _check_row_shape(
    data: ArrayDataset | None, row_shape: tuple[int, ...], what: str, first: str
) -> None:
    if data is not None and len(data) and data.x.shape[1:] != row_shape:
        raise ValueError(
            f"{what}: rows of shape {data.x.shape[1:]}, but client {first!r} has rows of "
            f"shape {row_shape}; every client's x must have the same row shape"
        )
