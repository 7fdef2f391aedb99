"""The data part of a federation's spec: which dataset, and how it is split among parties."""

from __future__ import annotations

from dataclasses import dataclass, field
from numbers import Real
from typing import Any, ClassVar

from fedfuse._settings import Interval, Options, Settings
from fedfuse.data._dataset import FederatedDataset
from fedfuse.data._loaders import (
    DATASETS,
    FEDERATED_DATASETS,
    load_dataset,
    load_federated_dataset,
)
from fedfuse.data._partition import PARTITIONS, federate, partition_params

__all__ = ["DataSpec"]


@dataclass(frozen=True)
class DataSpec(Settings):
    """A named dataset (``load_dataset``) split among parties by a named partition, or a
    naturally federated one (``emnist``, ``femnist``: one party per writer, with its own id; the
    first ``num_parties`` writers, and ``partition`` is not used).

    ``partition_params`` are the partitioner's own parameters (``{"alpha": 0.3}`` for
    ``dirichlet``, ``{"classes_per_party": 2}`` for ``classes``; see
    ``fedfuse.data.partition_params``). Each party keeps ``local_test_fraction`` of its examples
    as its own test split. ``data_dir`` is where files-based datasets are read from.
    """

    kind: ClassVar[str] = "data"
    constraints: ClassVar[dict[str, list[Any]]] = {
        "dataset": [Options(DATASETS + FEDERATED_DATASETS)],
        "data_dir": [None, str],
        "partition": [Options(PARTITIONS)],
        "partition_params": [dict],
        "local_test_fraction": [Interval(Real, 0, 1, closed="left")],
    }

    dataset: str = "digits"
    data_dir: str | None = None
    partition: str = "dirichlet"
    partition_params: dict[str, Any] = field(default_factory=dict)
    local_test_fraction: float = 0.2

    def check_together(self) -> list[str]:
        unknown = sorted(set(self.partition_params) - set(partition_params(self.partition)))
        if unknown:
            allowed = ", ".join(partition_params(self.partition)) or "(none)"
            return [f"partition_params: {self.partition!r} takes {allowed}; not {unknown}"]
        return []

    def build(self, num_parties: int, seed: int = 0) -> FederatedDataset:
        """Load the dataset and split it among ``num_parties`` parties (seeded)."""
        self.check("data.")
        if self.dataset in FEDERATED_DATASETS:
            return load_federated_dataset(
                self.dataset, data_dir=self.data_dir, max_clients=num_parties
            )
        train, test = load_dataset(self.dataset, data_dir=self.data_dir, seed=seed)
        return federate(
            train,
            test,
            num_parties,
            self.partition,
            seed=seed,
            local_test_fraction=self.local_test_fraction,
            **self.partition_params,
        )
