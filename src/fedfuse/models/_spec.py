"""The model part of a federation's spec: a zoo model by name, or the type of an uploaded one."""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Integral
from typing import Any, ClassVar

from fedfuse._settings import Interval, Options, Rule, Settings
from fedfuse.models._keras import keras_optimizer
from fedfuse.models._optim import resolve_optimizer
from fedfuse.models._registry import MODEL_TYPES
from fedfuse.models._zoo import MODELS

__all__ = ["ModelSpec"]


def _is_shape(value: Any) -> bool:
    return (
        isinstance(value, tuple | list)
        and 0 < len(value) <= 8
        and all(isinstance(d, int) and not isinstance(d, bool) and 1 <= d <= 1 << 20 for d in value)
    )


@dataclass(frozen=True)
class ModelSpec(Settings):
    """Which model the federation trains.

    ``name`` is a zoo model (``MODELS``: ``mlp``, ``cnn``...) built for ``input_shape`` and
    ``num_classes`` (a simulation reads both from its data). Without a name, the model comes
    from an uploaded model file of ``model_type`` (``pytorch``, ``keras``, ``doc2vec``), or from
    uploaded initial weights, with every party bringing its own model.
    """

    kind: ClassVar[str] = "model"
    constraints: ClassVar[dict[str, list[Any]]] = {
        "name": [None, Options(MODELS)],
        "model_type": [
            Rule(
                lambda v: v in MODEL_TYPES,
                lambda: "one of " + ", ".join(repr(t) for t in sorted(MODEL_TYPES)),
            )
        ],
        "input_shape": [None, Rule(_is_shape, "a list of 1 to 8 positive integers")],
        "num_classes": [None, Interval(Integral, 2)],
    }

    name: str | None = None
    model_type: str = "pytorch"
    input_shape: tuple[int, ...] | None = None
    num_classes: int | None = None

    def check_optimizer(self, optimizer: str) -> None:
        """``ValueError`` if this model type cannot train with ``optimizer``."""
        if self.model_type == "keras":
            keras_optimizer(optimizer, 0.01)
        elif self.model_type != "doc2vec":  # gensim trains with its own rule
            resolve_optimizer(optimizer)
