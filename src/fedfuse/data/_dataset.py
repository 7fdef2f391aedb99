"""In-memory datasets: one party's arrays, and a federation of parties keyed by id."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

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
