"""Optimizers by the names users write: ``"optim.Adadelta"``, ``"Adadelta"``, ``"sgd"``."""

from __future__ import annotations

from collections.abc import Iterable

import torch

__all__ = ["OPTIMIZERS", "make_optimizer", "resolve_optimizer"]


def _optimizer_classes() -> dict[str, type[torch.optim.Optimizer]]:
    classes = {}
    for name in dir(torch.optim):
        obj = getattr(torch.optim, name)
        is_optimizer = isinstance(obj, type) and issubclass(obj, torch.optim.Optimizer)
        if is_optimizer and obj is not torch.optim.Optimizer:
            classes[name.lower()] = obj
    return classes


_CLASSES = _optimizer_classes()
OPTIMIZERS: tuple[str, ...] = tuple(sorted(_CLASSES))


def resolve_optimizer(name: str) -> type[torch.optim.Optimizer]:
    """The ``torch.optim`` class for ``name``, case-insensitive, with or without ``optim.``."""
    key = str(name).strip()
    for prefix in ("torch.optim.", "optim."):
        if key.lower().startswith(prefix):
            key = key[len(prefix) :]
    try:
        return _CLASSES[key.lower()]
    except KeyError:
        raise ValueError(
            f"unknown optimizer {name!r}; choose one of: {', '.join(OPTIMIZERS)} "
            "(as written in torch, e.g. 'optim.Adadelta', 'Adam' or 'sgd')"
        ) from None


def make_optimizer(
    name: str, params: Iterable[torch.nn.Parameter], learning_rate: float
) -> torch.optim.Optimizer:
    return resolve_optimizer(name)(params, lr=learning_rate)
