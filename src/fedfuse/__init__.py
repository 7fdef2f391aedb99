"""fedfuse: federated and decentralized learning.

The names most users need are re-exported here; each layer (``fedfuse.weights``,
``fedfuse.data``, ``fedfuse.models``, ``fedfuse.fusion``, ``fedfuse.party``,
``fedfuse.runtime``, ``fedfuse.federation``, ``fedfuse.recipes``) lists the rest of its public
API in ``__all__``.

``import fedfuse`` is cheap: it imports none of the layers (nor torch). A name is imported
from its layer the first time it is used (``fedfuse.simulate``, ``from fedfuse import Privacy``),
and a layer the first time it is named (``fedfuse.federation``), through the module
``__getattr__`` of PEP 562. The block under ``TYPE_CHECKING`` shows the same names to type
checkers and IDEs.

Importing fedfuse makes Keras 3 default to its PyTorch backend (``KERAS_BACKEND=torch``, only
if the variable is unset), so ``import fedfuse`` then ``import keras`` needs no set-up; a user
who imports Keras first sets ``KERAS_BACKEND=torch`` before that import.
"""

import importlib
import os
from typing import TYPE_CHECKING, Any

os.environ.setdefault("KERAS_BACKEND", "torch")  # before anything can import keras

if TYPE_CHECKING:
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

_LAYER_OF = {
    "fedfuse.data": ("ArrayDataset", "FederatedDataset", "PartyData", "federate", "load_dataset"),
    "fedfuse.federation": (
        "Aggregation",
        "Federation",
        "Privacy",
        "Sampling",
        "SecureAggregation",
    ),
    "fedfuse.fusion": ("FusionTransform", "Update", "chain", "fedavg", "iter_avg"),
    "fedfuse.models": ("TorchAdapter", "TrainConfig", "build_model"),
    "fedfuse.party": ("Party",),
    "fedfuse.recipes": (
        "FederationSpec",
        "ServerState",
        "SimulationResult",
        "build_fedavg_process",
        "build_federated_evaluation",
        "simulate",
    ),
    "fedfuse.runtime": ("LocalPool",),
    "fedfuse.weights": ("Weights", "load_weights", "save_weights"),
}
_EXPORTS = {name: layer for layer, names in _LAYER_OF.items() for name in names}
_SUBPACKAGES = ("cli", "consensus", "data", "federation", "fusion", "models", "party", "recipes",
                "runtime", "secure", "service", "weights")  # fmt: skip

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


def __getattr__(name: str) -> Any:
    """A public name, imported from its layer on first use (then kept here), or a layer."""
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value  # the next lookup finds it without calling this again
        return value
    if name in _SUBPACKAGES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__, *_SUBPACKAGES})
