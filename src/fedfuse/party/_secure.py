"""A party's update as one vector of integers mod 2^32, for secure aggregation, and back.

The party flattens its delta (parameters in name order), clips it to ``clip_norm`` and adds
its share of the noise when differential privacy asks for it, scales it by its weight ``w``
(``min(num_examples, weight_cap) / weight_cap`` for FedAvg, 1 otherwise; times ``scale``,
a public factor such as buffered aggregation's staleness weight), appends
``w * clip_range`` so the weight is summed too, and quantizes with ``fedfuse.secure.Quantizer``.
The aggregator decodes the unmasked sum into ``sum_k w_k delta_k`` and ``sum_k w_k``.
"""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any, ClassVar

import numpy as np

from fedfuse._settings import Interval, Options, Settings
from fedfuse.secure import Quantizer
from fedfuse.weights import Weights

__all__ = ["SecureEncoding", "decode_sum", "encode_update", "vector_size"]


@dataclass(frozen=True)
class SecureEncoding(Settings):
    """How parties of one secure round encode their update (the aggregator sets it).

    ``weighting``: ``examples`` (FedAvg) or ``uniform``; ``clip_norm``: the L2 clip of
    differential privacy (``None``: none); ``noise_stddev``: the Gaussian noise each party adds
    (distributed DP); ``clip_range`` and ``max_summands``: the quantizer's range per coordinate
    and the most parties summed; ``scale``: a public factor on this party's weight.
    """

    kind: ClassVar[str] = "encoding"
    constraints: ClassVar[dict[str, list[Any]]] = {
        "weighting": [Options(("examples", "uniform"))],
        "weight_cap": [Interval(Integral, 1, 10**9)],
        "clip_norm": [None, Interval(Real, 0, None, closed="neither")],
        "noise_stddev": [Interval(Real, 0)],
        "clip_range": [Interval(Real, 0, None, closed="neither")],
        "max_summands": [Interval(Integral, 1, 10**7)],
        "scale": [Interval(Real, 0, 1, closed="right")],
    }

    weighting: str = "examples"
    weight_cap: int = 10_000
    clip_norm: float | None = None
    noise_stddev: float = 0.0
    clip_range: float = 1.0
    max_summands: int = 1
    scale: float = 1.0

    @property
    def quantizer(self) -> Quantizer:
        return Quantizer(self.clip_range, self.max_summands)


def vector_size(reference: Weights) -> int:
    """Entries of the vector a party sends: every parameter, then the weight."""
    return sum(int(arr.size) for arr in reference.values()) + 1


def encode_update(
    delta: Weights,
    num_examples: int,
    encoding: SecureEncoding,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """``delta`` as the uint32 vector the party masks (see the module docstring)."""
    parts = [np.asarray(delta[n], np.float64).ravel() for n in sorted(delta)]
    vector = np.concatenate([*parts, np.zeros(1)])  # one copy, with room for the weight
    flat = vector[:-1]
    if encoding.clip_norm is not None:
        norm = float(np.sqrt(np.einsum("i,i->", flat, flat)))  # no BLAS: no thread spin-up
        if norm > encoding.clip_norm:
            flat *= encoding.clip_norm / norm
    if encoding.noise_stddev > 0:
        flat += (rng or np.random.default_rng()).normal(0.0, encoding.noise_stddev, flat.size)
    if encoding.weighting == "examples":
        weight = min(num_examples, encoding.weight_cap) / encoding.weight_cap
    else:
        weight = 1.0
    weight *= encoding.scale
    flat *= weight
    vector[-1] = weight * encoding.clip_range
    return encoding.quantizer.encode(vector)


def decode_sum(
    total: np.ndarray, reference: Weights, encoding: SecureEncoding
) -> tuple[Weights, float]:
    """The unmasked sum as ``(sum_k w_k delta_k by parameter in float64, sum_k w_k)``."""
    values = encoding.quantizer.decode(total)
    weights, start = {}, 0
    for name in sorted(reference):
        size = int(reference[name].size)
        weights[name] = values[start : start + size].reshape(reference[name].shape)
        start += size
    return weights, float(values[start]) / encoding.clip_range
