"""Optional dependencies, imported only where they are used, with a message naming the extra."""

from __future__ import annotations

import importlib
import os
from types import ModuleType

__all__ = ["MissingExtraError", "import_extra", "import_keras"]


class MissingExtraError(ImportError):
    """An optional dependency that a feature needs is not installed."""


def import_extra(module: str, extra: str, feature: str) -> ModuleType:
    """Import ``module`` or raise ``MissingExtraError`` saying ``feature`` needs ``extra``."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtraError(
            f"{feature} needs the {extra} extra: pip install 'fedfuse[{extra}]'"
        ) from None


def import_keras(feature: str = "model_type 'keras'") -> ModuleType:
    """Keras 3 on the PyTorch backend (``KERAS_BACKEND=torch`` unless the user chose already)."""
    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = import_extra("keras", "keras", feature)
    if keras.backend.backend() != "torch":
        raise MissingExtraError(
            f"{feature} runs Keras on the torch backend, but Keras was started with the "
            f"{keras.backend.backend()!r} backend: set KERAS_BACKEND=torch before importing keras"
        )
    return keras
