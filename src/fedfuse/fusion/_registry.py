"""Fusion algorithms by the names users write (``"fedavg"``, ``"iter_avg"``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fedfuse.fusion._base import FusionTransform
from fedfuse.fusion._mean import fedavg, iter_avg

__all__ = ["FUSIONS", "get_fusion"]

_FACTORIES: dict[str, Callable[..., FusionTransform]] = {"fedavg": fedavg, "iter_avg": iter_avg}
FUSIONS: tuple[str, ...] = tuple(sorted(_FACTORIES))


def get_fusion(name: str, **params: Any) -> FusionTransform:
    """Build the fusion transform called ``name`` with ``params``."""
    try:
        factory = _FACTORIES[name]
    except KeyError:
        raise ValueError(f"unknown fusion {name!r}; choose one of: {', '.join(FUSIONS)}") from None
    try:
        return factory(**params)
    except TypeError as exc:
        raise ValueError(f"bad parameters for fusion {name!r}: {exc}") from None
