"""Named arrays: the one representation of model parameters that crosses every layer.

``Weights`` is a plain ``dict`` of parameter name -> ``numpy.ndarray`` whose keys are kept in
sorted order, so two parties that hold the same model always list the same names in the same
order. Functions here never mutate their inputs unless their name ends with an underscore.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

Weights = dict[str, np.ndarray]

__all__ = [
    "Weights",
    "WeightsMismatchError",
    "add",
    "add_scaled_",
    "as_weights",
    "check_compatible",
    "global_norm",
    "num_bytes",
    "scale",
    "subtract",
    "zeros_like",
]


class WeightsMismatchError(ValueError):
    """Two sets of weights do not describe the same model (names, shapes or dtypes differ)."""


def as_weights(mapping: Mapping[str, object]) -> Weights:
    """Return ``mapping`` as ``Weights``: sorted names, numpy array values (no copy if possible)."""
    return {name: np.asarray(mapping[name]) for name in sorted(mapping)}


def check_compatible(reference: Mapping[str, np.ndarray], other: Mapping[str, np.ndarray]) -> None:
    """Raise ``WeightsMismatchError`` naming the first parameter where ``other`` differs.

    Names must be the same set; each array must have the reference's shape and dtype.
    """
    if reference.keys() != other.keys():  # (cheap, and this runs for every update)
        missing = sorted(set(reference) - set(other))
        unexpected = sorted(set(other) - set(reference))
        if missing or unexpected:
            raise WeightsMismatchError(
                f"parameter names differ: missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
    for name, ref in reference.items():
        arr = other[name]
        if arr.shape != ref.shape:
            raise WeightsMismatchError(
                f"parameter {name!r} has shape {tuple(arr.shape)}, expected {tuple(ref.shape)}"
            )
        if arr.dtype != ref.dtype:
            raise WeightsMismatchError(
                f"parameter {name!r} has dtype {arr.dtype}, expected {ref.dtype}"
            )


def add(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> Weights:
    """``a + b``, name by name (the result keeps ``a``'s dtypes)."""
    return {name: (a[name] + b[name]).astype(a[name].dtype, copy=False) for name in a}


def subtract(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> Weights:
    """``a - b``, name by name: ``subtract(new, old)`` is the delta a party sends."""
    return {name: (a[name] - b[name]).astype(a[name].dtype, copy=False) for name in a}


def scale(w: Mapping[str, np.ndarray], factor: float) -> Weights:
    """``factor * w``, keeping each array's dtype."""
    return {name: (arr * factor).astype(arr.dtype, copy=False) for name, arr in w.items()}


def zeros_like(w: Mapping[str, np.ndarray], dtype: np.dtype | None = None) -> Weights:
    """All-zero weights with ``w``'s names and shapes (and ``dtype`` if given)."""
    return {name: np.zeros_like(arr, dtype=dtype) for name, arr in w.items()}


_CHUNK = 16384  # elements: the scaled temporary stays small, in cache and off the mmap path


def add_scaled_(acc: Weights, w: Mapping[str, np.ndarray], factor: float) -> Weights:
    """``acc += factor * w`` in place (the fold step of every mean); returns ``acc``.

    Large arrays are folded in chunks, so no model-sized temporary is ever allocated.
    """
    for name, arr in acc.items():
        src = w[name]
        if factor == 1.0:
            arr += src
        elif arr.size <= _CHUNK or not (arr.flags.c_contiguous and src.flags.c_contiguous):
            arr += factor * src
        else:
            out, inp = arr.reshape(-1), src.reshape(-1)
            for start in range(0, out.size, _CHUNK):
                out[start : start + _CHUNK] += factor * inp[start : start + _CHUNK]
    return acc


def global_norm(w: Mapping[str, np.ndarray]) -> float:
    """The L2 norm of all arrays taken together: each array's sum of squares in its own dtype
    (a float32 dot: fast, and accurate to about 1e-7 relative, plenty for clipping and bounds),
    the arrays' sums added in float64."""
    total = 0.0
    for arr in w.values():
        flat = arr.ravel()
        total += float(np.dot(flat, flat)) if flat.dtype.kind == "f" else float(np.sum(flat**2))
    return total**0.5


def num_bytes(w: Mapping[str, np.ndarray]) -> int:
    """Bytes taken by the arrays' data (what a dense fp32 transfer would carry)."""
    return int(sum(arr.nbytes for arr in w.values()))
