"""Validation of every update before it reaches fusion.

Everything a party sends is checked here, once, for every transport: the example count that
weights it, the metrics that are averaged into the round's record, the names, shapes and
dtypes of its arrays, finite values, and how far it would move the global model.

The magnitude bound is relative, ``||change|| <= max_ratio * max(||w||, UPDATE_NORM_FLOOR)``,
where ``change`` is the delta (or ``w_new - w`` for full weights) and ``w`` the global model.
It is on by default (``DEFAULT_MAX_UPDATE_RATIO`` = 10): honest local runs in this repository's
tests and examples move a model by at most 3.6x its norm (most by well under 1x), while a party
scaling its update by 100 or sending 1e30 in every entry lands far above 10x. The floor (a norm
of 10) keeps the bound meaningful for a zero-initialized or tiny model, whose own norm says
nothing about the size of a first honest step: a linear SVM trained from zeros on the digits
moves 11.5 in its first round, inside the floor's bound of 100.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import numpy as np

from fedfuse.fusion import Update
from fedfuse.weights import Weights, WeightsMismatchError, check_compatible, global_norm

__all__ = [
    "DEFAULT_MAX_UPDATE_RATIO",
    "MAX_NUM_EXAMPLES",
    "UPDATE_NORM_FLOOR",
    "check_metrics",
    "check_num_examples",
    "check_update_bounds",
    "update_bound",
    "validate_update",
]

MAX_NUM_EXAMPLES = 10**12
"""The largest ``num_examples`` accepted: more than any one party holds, small enough that a
round's sum of example counts stays exact in float64 (FedAvg weights by it)."""

DEFAULT_MAX_UPDATE_RATIO = 10.0
"""Default ``max_update_ratio``: an update may move the global model by at most 10x its norm."""

UPDATE_NORM_FLOOR = 10.0
"""The global norm used in the relative bound when the model's own norm is smaller."""


def check_num_examples(n: object) -> str | None:
    """Why ``n`` is not a valid example count (an integer in [1, MAX_NUM_EXAMPLES]), or ``None``."""
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n <= 0:
        return f"num_examples must be a positive integer, got {_short(n)}"
    if n > MAX_NUM_EXAMPLES:
        return f"num_examples {_short(n)} exceeds the limit {MAX_NUM_EXAMPLES}"
    return None


def check_metrics(metrics: object) -> str | None:
    """Why ``metrics`` is not a mapping of names to finite numbers, or ``None``."""
    if not isinstance(metrics, Mapping):
        return f"metrics must map names to numbers, got {type(metrics).__name__}"
    for name, value in metrics.items():
        if not isinstance(name, str):
            return f"metric names must be strings, got {_short(name)}"
        if isinstance(value, bool) or not isinstance(value, int | float | np.number):
            return f"metric {name[:64]!r} is not a number: {_short(value)}"
        if not math.isfinite(float(value)):
            return f"metric {name[:64]!r} is not finite: {value!r}"
    return None


def check_update_bounds(max_norm: object, max_ratio: object) -> None:
    """Raise ``ValueError`` unless ``max_update_norm`` and ``max_update_ratio`` are each
    ``None`` or a finite number >= 0 (0 turns a bound off)."""
    for name, value in (("max_update_norm", max_norm), ("max_update_ratio", max_ratio)):
        if value is None:
            continue
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not (math.isfinite(value) and value >= 0)
        ):
            raise ValueError(f"{name} must be a finite number >= 0 or None, got {value!r}")


def update_bound(
    reference: Weights,
    *,
    max_norm: float | None = None,
    max_ratio: float | None = None,
    reference_norm: float | None = None,
) -> float | None:
    """The largest L2 norm an update of ``reference`` may have, or ``None`` for no bound.

    The smaller of ``max_norm`` and ``max_ratio * max(||reference||, UPDATE_NORM_FLOOR)``;
    ``None`` or 0 turns either off. ``reference_norm``: ``||reference||`` when the caller
    has it already (the round loop measures the global model once per round, not per update).
    """
    bounds = [max_norm] if max_norm else []
    if max_ratio:
        if reference_norm is None:
            reference_norm = global_norm(reference)
        bounds.append(max_ratio * max(reference_norm, UPDATE_NORM_FLOOR))
    return min(bounds) if bounds else None


def validate_update(
    update: Update,
    reference: Weights,
    *,
    max_norm: float | None = None,
    max_ratio: float | None = None,
    expect_delta: bool | None = None,
    reference_norm: float | None = None,
) -> str | None:
    """Return why ``update`` must be rejected, or ``None`` if it may be fused.

    Checks: a delta or full weights as the task asked (``expect_delta``, when given); a sane
    ``num_examples`` (``check_num_examples``); finite numeric metrics; the same parameter
    names, shapes and dtypes as the global weights; only finite values; and a change of the
    global model (the delta, or ``weights - reference``) within ``update_bound`` (which
    ``reference_norm``, ``||reference||``, saves measuring again). Both bounds are off unless
    given here; the round loop passes ``DEFAULT_MAX_UPDATE_RATIO`` by default.
    """
    if expect_delta is not None and bool(update.is_delta) != expect_delta:
        asked, sent = ("a delta", "full weights") if expect_delta else ("full weights", "a delta")
        return f"the task asked for {asked}, the party sent {sent}"
    reason = check_num_examples(update.num_examples) or check_metrics(update.metrics)
    if reason is not None:
        return reason
    try:
        check_compatible(reference, update.weights)
    except WeightsMismatchError as exc:
        return str(exc)
    # One pass over the values for both checks: a sum of squares is finite only if every
    # entry is (the squares are >= 0, so a NaN or an infinity leaves it NaN or infinite);
    # only an array whose sum is not finite is searched entry by entry.
    total = 0.0
    with np.errstate(over="ignore", invalid="ignore"):
        for name, arr in update.weights.items():
            squares = _sum_squares(arr)
            if not math.isfinite(squares) and not np.isfinite(arr).all():
                return f"parameter {name!r} contains NaN or infinite values"
            total += squares
    limit = update_bound(
        reference, max_norm=max_norm, max_ratio=max_ratio, reference_norm=reference_norm
    )
    if limit is not None:
        norm = _change_norm(update, reference, total)
        if not norm <= limit:
            return f"update norm {norm:.4g} exceeds the limit {limit:.4g}"
    return None


def _sum_squares(arr: np.ndarray) -> float:
    """One array's sum of squares in its own dtype, as ``global_norm`` adds them."""
    flat = arr.ravel()
    return float(np.dot(flat, flat)) if flat.dtype.kind == "f" else float(np.sum(flat**2))


def _change_norm(update: Update, reference: Weights, squares: float) -> float:
    """``||delta||`` (``squares``: its sum of squares, in float32 for float32 arrays), or
    ``||weights - reference||`` for full weights."""
    if not update.is_delta:
        return _norm64(
            np.subtract(update.weights[name], ref, dtype=np.float64)
            for name, ref in reference.items()
        )
    # float32 squares overflow from about 1e19 per entry: then measure again in float64
    return squares**0.5 if math.isfinite(squares) else _norm64(update.weights.values())


def _norm64(arrays: Iterable[np.ndarray]) -> float:
    total = 0.0
    for arr in arrays:
        flat = np.asarray(arr, dtype=np.float64).ravel()
        total += float(np.dot(flat, flat))
    return math.sqrt(total)


def _short(value: object) -> str:
    """``repr(value)`` cut to a readable length (an int of 10**400 has 401 digits)."""
    text = repr(value) if not isinstance(value, int) or abs(value) < 10**30 else "a huge integer"
    return text if len(text) <= 80 else text[:77] + "..."
