"""Fixed-point encoding of float updates into Z_2^32, where the masks of SecAgg+ live."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["Quantizer"]


class Quantizer:
    """Rounds floats in ``[-clip_range, clip_range]`` to multiples of ``step`` and wraps them
    into ``uint32``, so that the sum of up to ``max_summands`` of them fits in ``int32``::

        Q = floor((2**31 - 1) / max_summands),   step = clip_range / Q
          ~= 2 * clip_range * max_summands / 2**32
        encode(x) = round(clip(x, -clip_range, clip_range) / step)  mod 2**32
        decode(s) = int32(s) * step     (two's complement)

    ``step`` is the issue's ``2 c m / 2**32`` made exact: ``clip_range`` maps to the integer
    ``Q``, so ``max_summands`` values of magnitude ``<= Q`` sum to at most ``2**31 - 1``, and
    no rounding can push a clipped value past ``Q``. Each encoded value is off by at most
    ``step / 2``, so a decoded sum of ``count`` values is within ``max_error(count) = count *
    step / 2`` of the float sum of the clipped values, per coordinate.

    References:
        Bonawitz et al., "Practical Secure Aggregation for Privacy-Preserving Machine
        Learning", CCS 2017, section 3 (inputs in Z_R).
    """

    def __init__(self, clip_range: float, max_summands: int) -> None:
        self.clip_range = clip_range
        self.max_summands = max_summands

    @property
    def step(self) -> float:
        if not (
            isinstance(self.clip_range, int | float)
            and math.isfinite(self.clip_range)
            and self.clip_range > 0
        ):
            raise ValueError(
                f"Quantizer: clip_range must be a finite number > 0, got {self.clip_range!r}"
            )
        m = self.max_summands
        if not (isinstance(m, int) and not isinstance(m, bool) and 1 <= m <= 2**31 - 1):
            raise ValueError(f"Quantizer: max_summands must be an integer in 1..2**31-1, got {m!r}")
        return self.clip_range / ((2**31 - 1) // m)

    def encode(self, x: np.ndarray) -> np.ndarray:
        """``round(clip(x) / step) mod 2**32`` as ``uint32`` (same shape)."""
        step = self.step
        x = np.asarray(x, dtype=np.float64)
        if not np.all(np.isfinite(x)):
            raise ValueError("Quantizer.encode: x must be finite (no NaN or infinity)")
        clipped = np.clip(x, -self.clip_range, self.clip_range)
        return np.rint(clipped / step).astype(np.int64).astype(np.uint32)

    def decode(self, total: np.ndarray) -> np.ndarray:
        """A ``uint32`` sum back to floats: two's complement, times ``step``."""
        step = self.step
        total = np.asarray(total)
        if total.dtype != np.uint32:
            raise ValueError(f"Quantizer.decode: total must be uint32, got {total.dtype}")
        return total.view(np.int32).astype(np.float64) * step

    def max_error(self, count: int) -> float:
        """Bound on ``|decode(sum of count encodings) - float sum of the clipped values|``."""
        if not (isinstance(count, int) and 0 <= count <= self.max_summands):
            raise ValueError(
                f"Quantizer.max_error: count must be an integer in 0..max_summands="
                f"{self.max_summands}, got {count!r}"
            )
        return count * self.step / 2

    def __repr__(self) -> str:
        return f"Quantizer(clip_range={self.clip_range!r}, max_summands={self.max_summands!r})"
