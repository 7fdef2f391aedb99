"""Data for federations: loaders, partitioners and in-memory federated datasets.

Load a dataset (``load_dataset("digits")``, idx files, CIFAR-10 batches, a CSV file, party
``.npz`` files), split it among parties with a seeded partitioner
(``federate(train, test, 10, "dirichlet", alpha=0.3)``), or load one already split by writer or
user (``load_federated_dataset("emnist", data_dir=...)``, LEAF json), or bring your own clients
(``FederatedDataset.from_dict({"site_a": (x, y), ...})``); then inspect who holds what
(``format_label_stats``). Nothing here downloads anything.
"""

from fedfuse.data._cifar import load_cifar10
from fedfuse.data._csv import load_csv
from fedfuse.data._dataset import ArrayDataset, FederatedDataset, PartyData
from fedfuse.data._emnist import load_federated_emnist
from fedfuse.data._handlers import (
    DATA_HANDLERS,
    DataHandler,
    get_data_handler,
    register_data_handler,
)
from fedfuse.data._keras_handlers import cifar10_keras, mnist_keras
from fedfuse.data._leaf import load_leaf
from fedfuse.data._loaders import (
    DATASETS,
    DEBIAN_FASHION_MNIST_DIR,
    FEDERATED_DATASETS,
    DatasetFormatError,
    DatasetNotFoundError,
    fashion_mnist_dir,
    load_dataset,
    load_federated_dataset,
    load_federated_npz,
    load_idx,
    load_mnist_idx,
    load_party_npz,
    load_sklearn,
)
from fedfuse.data._partition import (
    PARTITIONS,
    by_group,
    class_window,
    classes_per_party,
    dirichlet,
    federate,
    format_label_stats,
    iid,
    partition_defaults,
    partition_indices,
    partition_params,
    quantity_skew,
    shards,
)
from fedfuse.data._spec import DataSpec
from fedfuse.data._text_handlers import (
    load_lee_corpus,
    load_lee_similarity,
    newsgroup_text,
    tokenize,
    wikipedia_text,
)

__all__ = [
    "DataSpec",
    "load_lee_corpus",
    "load_lee_similarity",
    "newsgroup_text",
    "tokenize",
    "wikipedia_text",
    "cifar10_keras",
    "mnist_keras",
    "DATA_HANDLERS",
    "DataHandler",
    "get_data_handler",
    "register_data_handler",
    "DATASETS",
    "DEBIAN_FASHION_MNIST_DIR",
    "FEDERATED_DATASETS",
    "PARTITIONS",
    "ArrayDataset",
    "DatasetFormatError",
    "DatasetNotFoundError",
    "FederatedDataset",
    "PartyData",
    "by_group",
    "class_window",
    "classes_per_party",
    "dirichlet",
    "fashion_mnist_dir",
    "federate",
    "format_label_stats",
    "iid",
    "load_cifar10",
    "load_csv",
    "load_dataset",
    "load_federated_dataset",
    "load_federated_emnist",
    "load_leaf",
    "load_federated_npz",
    "load_idx",
    "load_mnist_idx",
    "load_party_npz",
    "load_sklearn",
    "partition_defaults",
    "partition_indices",
    "partition_params",
    "quantity_skew",
    "shards",
]
