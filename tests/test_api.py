"""Each package declares what it exports; these lists are the public API."""

import importlib

import pytest

import fedfuse

LAYERS = [
    "weights", "data", "models", "fusion", "party", "runtime", "federation", "service", "cli",
]  # fmt: skip
LAYERS.append("consensus")


def test_top_level_public_names():
    assert sorted(fedfuse.__all__) == sorted(
        [
            "ArrayDataset",
            "FederatedDataset",
            "Federation",
            "FusionTransform",
            "LocalPool",
            "Party",
            "PartyData",
            "ServerState",
            "SimulationConfig",
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
    )


@pytest.mark.parametrize("layer", LAYERS)
def test_every_exported_name_exists(layer):
    module = importlib.import_module(f"fedfuse.{layer}")
    assert module.__all__, layer
    for name in module.__all__:
        assert hasattr(module, name), f"fedfuse.{layer} exports missing {name}"
