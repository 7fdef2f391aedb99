"""Shared fixtures: tiny offline datasets so every test runs in seconds on 2 cores."""

from __future__ import annotations

import pytest
import torch

from fedfuse.data import ArrayDataset, FederatedDataset, federate, load_dataset


@pytest.fixture(autouse=True)
def _few_threads():
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def digits() -> tuple[ArrayDataset, ArrayDataset]:
    return load_dataset("digits")


@pytest.fixture
def small_federation(digits) -> FederatedDataset:
    train, test = digits
    return federate(train, test, num_parties=4, scheme="dirichlet", alpha=0.5, seed=0)
