"""Model types by the names the Model Fusion API uses (``pytorch``, ``keras``, ``doc2vec``).

A model type turns the bytes of an uploaded model file into a fresh model adapter (an object
with ``get_weights``, ``set_weights``, ``fit``, ``evaluate``, ``predict``). Optionally it has a
``prepare`` step that runs once, before round 1, over the adapters and training data of the
parties hosted by the service (doc2vec uses it to agree on a vocabulary).

``load`` also takes the operator's caps as the keyword ``limits`` (a ``SizeLimits``; the
defaults when not given) and checks the file against them before it builds anything.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from fedfuse.models._files import load_torch_model
from fedfuse.models._torch import TorchAdapter
from fedfuse.weights import SizeLimits

__all__ = ["MODEL_TYPES", "ModelType", "get_model_type", "register_model_type"]


@dataclass(frozen=True)
class ModelType:
    """``load(file_bytes, allowed_import_paths, *, limits) -> adapter`` and an optional
    ``prepare``."""

    load: Callable[..., Any]
    prepare: Callable[[list[Any], list[Any]], None] | None = None


_LIMITS = SizeLimits()  # the default caps (an immutable value)


def _load_pytorch(
    data: bytes, allowed_import_paths: Sequence[str], *, limits: SizeLimits = _LIMITS
) -> TorchAdapter:
    model = load_torch_model(data, allowed_import_paths=allowed_import_paths, limits=limits)
    return TorchAdapter(model)


MODEL_TYPES: dict[str, ModelType] = {"pytorch": ModelType(_load_pytorch)}


def register_model_type(name: str, model_type: ModelType) -> ModelType:
    """Make ``model_type`` available under ``name``."""
    MODEL_TYPES[name] = model_type
    return model_type


def get_model_type(name: str) -> ModelType:
    try:
        return MODEL_TYPES[name]
    except KeyError:
        raise ValueError(
            f"unknown model type {name!r}; choose one of: {', '.join(sorted(MODEL_TYPES))}"
        ) from None
