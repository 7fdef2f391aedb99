"""fedfuse: federated and decentralized learning.

The names most users need are re-exported here; each layer (``fedfuse.weights``,
``fedfuse.data``, ``fedfuse.models``, ``fedfuse.fusion``, ``fedfuse.party``,
``fedfuse.runtime``, ``fedfuse.federation``, ``fedfuse.recipes``) lists the rest of its public
API in ``__all__``.

Importing fedfuse makes Keras 3 default to its PyTorch backend (``KERAS_BACKEND=torch``, only
if the variable is unset), so ``import fedfuse`` then ``import keras`` needs no set-up; a user
who imports Keras first sets ``KERAS_BACKEND=torch`` before that import.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "torch")  # before anything can import keras

from fedfuse.data import ArrayDataset, FederatedDataset, PartyData, federate, load_dataset
from fedfuse.federation import Aggregation, Federation, Privacy, Sampling, SecureAggregation
from fedfuse.fusion import FusionTransform, Update, chain, fedavg, iter_avg
from fedfuse.models import TorchAdapter, TrainConfig, build_model
from fedfuse.party import Party
from fedfuse.recipes import (
    FederationSpec,
    ServerState,
    SimulationResult,
    build_fedavg_process,
    build_federated_evaluation,
    simulate,
)
from fedfuse.runtime import LocalPool
from fedfuse.weights import Weights, load_weights, save_weights

__version__ = "0.1.0"

__all__ = [
    "Aggregation",
    "ArrayDataset",
    "FederatedDataset",
    "Federation",
    "FederationSpec",
    "FusionTransform",
    "LocalPool",
    "Party",
    "PartyData",
    "Privacy",
    "ServerState",
    "Sampling",
    "SecureAggregation",
    "SimulationResult",
    "TorchAdapter",
    "TrainConfig",
    "Update",
    "Weights",
    "__version__",
    "build_fedavg_process",
    "build_federated_evaluation",
    "build_model",
    "chain",
    "fedavg",
    "federate",
    "iter_avg",
    "load_dataset",
    "load_weights",
    "save_weights",
    "simulate",
]
