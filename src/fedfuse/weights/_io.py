"""safetensors (de)serialization of ``Weights``: zero-copy, no pickle, safe on untrusted bytes."""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load, load_file, save, save_file

from fedfuse.weights._named import Weights, as_weights

__all__ = ["WeightsFormatError", "from_bytes", "load_weights", "save_weights", "to_bytes"]


class WeightsFormatError(ValueError):
    """Bytes or a file that are not valid safetensors weights."""


def _contiguous(w: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {name: np.ascontiguousarray(arr) for name, arr in as_weights(w).items()}


def to_bytes(w: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None) -> bytes:
    """Serialize weights (and optional string metadata) to safetensors bytes."""
    return save(_contiguous(w), metadata=dict(metadata) if metadata else None)


def from_bytes(data: bytes) -> Weights:
    """Parse safetensors bytes; anything else raises ``WeightsFormatError``."""
    try:
        return as_weights(load(data))
    except (SafetensorError, ValueError, TypeError) as exc:
        raise WeightsFormatError(f"not valid safetensors data: {exc}") from exc


def save_weights(
    path: str | os.PathLike, w: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None
) -> None:
    """Write weights to ``path`` atomically (a crash never leaves a half-written file)."""
    tmp = f"{os.fspath(path)}.tmp"
    save_file(_contiguous(w), tmp, metadata=dict(metadata) if metadata else None)
    os.replace(tmp, path)


def load_weights(path: str | os.PathLike) -> Weights:
    """Read weights written by ``save_weights`` (or any safetensors file of numeric arrays)."""
    try:
        return as_weights(load_file(os.fspath(path)))
    except (SafetensorError, ValueError, TypeError) as exc:
        raise WeightsFormatError(f"{os.fspath(path)}: not a valid safetensors file: {exc}") from exc
