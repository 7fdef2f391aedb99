"""Composable fusion transforms (optax style): reducers, and the ``chain`` that composes them."""

from fedfuse.fusion._base import FusionError, FusionTransform, Update, chain, fuse, stateless
from fedfuse.fusion._mean import fedavg, iter_avg, weighted_mean
from fedfuse.fusion._registry import FUSIONS, get_fusion

__all__ = [
    "FUSIONS",
    "FusionError",
    "FusionTransform",
    "Update",
    "chain",
    "fedavg",
    "fuse",
    "get_fusion",
    "iter_avg",
    "stateless",
    "weighted_mean",
]
