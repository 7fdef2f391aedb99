"""Validation of every update before it reaches fusion."""

from __future__ import annotations

import numpy as np

from fedfuse.fusion import Update
from fedfuse.weights import Weights, WeightsMismatchError, check_compatible, global_norm

__all__ = ["validate_update"]


def check_num_examples(n: object) -> str | None:
    """Why ``n`` is not a valid example count (a positive integer), or ``None``."""
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n <= 0:
        return f"num_examples must be a positive integer, got {n!r}"
    return None


def validate_update(
    update: Update, reference: Weights, *, max_norm: float | None = None
) -> str | None:
    """Return why ``update`` must be rejected, or ``None`` if it may be fused.

    Checks: a positive integer ``num_examples``; the same parameter names, shapes and dtypes as
    the global weights; only finite values; and, if ``max_norm`` is set, an L2 norm of at most
    ``max_norm``.
    """
    reason = check_num_examples(update.num_examples)
    if reason is not None:
        return reason
    try:
        check_compatible(reference, update.weights)
    except WeightsMismatchError as exc:
        return str(exc)
    for name, arr in update.weights.items():
        if not np.isfinite(arr).all():
            return f"parameter {name!r} contains NaN or infinite values"
    if max_norm is not None:
        norm = global_norm(update.weights)
        if norm > max_norm:
            return f"update norm {norm:.4g} exceeds the limit {max_norm:.4g}"
    return None
