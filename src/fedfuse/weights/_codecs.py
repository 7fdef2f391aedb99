"""Compression codecs for deltas on the wire: fp16, int8 with a per-tensor scale, top-k.

A codec turns a delta into *encoded* named arrays that safetensors can carry, and back::

    codec = get_codec("int8")
    encoded = codec.encode(delta)              # {"fc.weight/q": int8, "fc.weight/scale": f32, ...}
    delta ≈ codec.decode(encoded, reference)   # names, shapes and dtypes of ``reference``

``decode`` trusts nothing: it checks that every expected array is there with the right dtype
and size (and nothing else), so a malformed upload raises ``CodecError`` and is rejected before
it reaches fusion. Lossy codecs lose less with *error feedback*: a party adds what compression
dropped last time to its next delta (``encode_with_feedback``), so nothing is lost for good.

Encoded sizes per tensor of ``n`` float32 values: fp16 ``2n`` bytes, int8 ``n + 4`` bytes,
top-k ``8k`` bytes (int32 index and float32 value per kept entry, ``k = ceil(fraction * n)``).

References:
    Seide et al., "1-Bit Stochastic Gradient Descent and its Application to Data-Parallel
    Distributed Training of Speech DNNs", Interspeech 2014 (error feedback).
    Aji and Heafield, "Sparse Communication for Distributed Gradient Descent", EMNLP 2017
    (top-k sparsification); Stich et al., "Sparsified SGD with Memory", NeurIPS 2018.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import NamedTuple

import numpy as np

from fedfuse.weights._named import Weights, subtract

__all__ = ["CODECS", "Codec", "CodecError", "encode_with_feedback", "get_codec"]

CODECS: tuple[str, ...] = ("none", "fp16", "int8", "topk")


class CodecError(ValueError):
    """Encoded arrays that do not decode to the expected delta (missing, extra, wrong size)."""


class Codec(NamedTuple):
    """``encode(delta) -> encoded`` and ``decode(encoded, reference) -> delta``."""

    name: str
    encode: Callable[[Mapping[str, np.ndarray]], Weights]
    decode: Callable[[Mapping[str, np.ndarray], Mapping[str, np.ndarray]], Weights]


def _expect(
    encoded: Mapping[str, np.ndarray], key: str, dtype: np.dtype, size: int | None
) -> np.ndarray:
    if key not in encoded:
        raise CodecError(f"missing encoded array {key!r}")
    arr = np.asarray(encoded[key])
    if arr.dtype != dtype:
        raise CodecError(f"encoded array {key!r} has dtype {arr.dtype}, expected {dtype}")
    if size is not None and arr.size != size:
        raise CodecError(f"encoded array {key!r} has {arr.size} values, expected {size}")
    return arr


def _check_keys(encoded: Mapping[str, np.ndarray], expected: set[str]) -> None:
    unexpected = sorted(set(encoded) - expected)
    if unexpected:
        raise CodecError(f"unexpected encoded arrays {unexpected[:5]}")


def _identity() -> Codec:
    def encode(delta: Mapping[str, np.ndarray]) -> Weights:
        return dict(delta)

    def decode(encoded: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray]) -> Weights:
        return dict(encoded)

    return Codec("none", encode, decode)


def _fp16() -> Codec:
    def encode(delta: Mapping[str, np.ndarray]) -> Weights:
        return {name: arr.astype(np.float16) for name, arr in delta.items()}

    def decode(encoded: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray]) -> Weights:
        _check_keys(encoded, set(reference))
        return {
            name: _expect(encoded, name, np.dtype(np.float16), ref.size)
            .reshape(ref.shape)
            .astype(ref.dtype)
            for name, ref in reference.items()
        }

    return Codec("fp16", encode, decode)


def _int8() -> Codec:
    """Symmetric linear quantization: ``q = round(x / s)``, ``s = max|x| / 127`` per tensor."""

    def encode(delta: Mapping[str, np.ndarray]) -> Weights:
        out: Weights = {}
        for name, arr in delta.items():
            peak = float(np.max(np.abs(arr))) if arr.size else 0.0
            if not math.isfinite(peak):  # decodes to NaN, so validation rejects it
                out[f"{name}/q"] = np.zeros(arr.shape, dtype=np.int8)
                out[f"{name}/scale"] = np.array([np.nan], dtype=np.float32)
                continue
            scale = peak / 127.0 if peak > 0 else 1.0
            out[f"{name}/q"] = np.rint(arr / scale).astype(np.int8)
            out[f"{name}/scale"] = np.array([scale], dtype=np.float32)
        return out

    def decode(encoded: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray]) -> Weights:
        _check_keys(encoded, {f"{n}/{part}" for n in reference for part in ("q", "scale")})
        out: Weights = {}
        for name, ref in reference.items():
            q = _expect(encoded, f"{name}/q", np.dtype(np.int8), ref.size)
            scale = _expect(encoded, f"{name}/scale", np.dtype(np.float32), 1)
            out[name] = (q.reshape(ref.shape).astype(ref.dtype) * scale.reshape(())).astype(
                ref.dtype, copy=False
            )
        return out

    return Codec("int8", encode, decode)


def _topk(fraction: float) -> Codec:
    """Keep the ``ceil(fraction * n)`` entries of largest magnitude of each tensor."""
    if not (isinstance(fraction, int | float) and 0 < fraction <= 1):
        raise ValueError(f"topk_fraction must be in (0, 1], got {fraction!r}")

    def kept(size: int) -> int:
        return min(size, max(1, math.ceil(fraction * size)))

    def encode(delta: Mapping[str, np.ndarray]) -> Weights:
        out: Weights = {}
        for name, arr in delta.items():
            flat = arr.ravel()
            k = kept(flat.size)
            idx = np.argpartition(np.abs(flat), flat.size - k)[flat.size - k :] if k else flat[:0]
            idx = np.sort(idx).astype(np.int32)
            out[f"{name}/idx"] = idx
            out[f"{name}/val"] = flat[idx].astype(np.float32)
        return out

    def decode(encoded: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray]) -> Weights:
        _check_keys(encoded, {f"{n}/{part}" for n in reference for part in ("idx", "val")})
        out: Weights = {}
        for name, ref in reference.items():
            idx = _expect(encoded, f"{name}/idx", np.dtype(np.int32), None)
            val = _expect(encoded, f"{name}/val", np.dtype(np.float32), idx.size)
            if idx.size > kept(ref.size):
                raise CodecError(
                    f"{name!r}: {idx.size} entries sent, at most {kept(ref.size)} allowed"
                )
            if idx.size and (idx.min() < 0 or idx.max() >= ref.size):
                raise CodecError(f"{name!r}: index out of range for {ref.size} values")
            flat = np.zeros(ref.size, dtype=ref.dtype)
            flat[idx] = val
            out[name] = flat.reshape(ref.shape)
        return out

    return Codec("topk", encode, decode)


def get_codec(name: str, *, topk_fraction: float = 0.01) -> Codec:
    """The codec called ``name`` (one of ``CODECS``); ``topk_fraction`` is used by ``topk``."""
    if name == "none":
        return _identity()
    if name == "fp16":
        return _fp16()
    if name == "int8":
        return _int8()
    if name == "topk":
        return _topk(topk_fraction)
    raise ValueError(f"unknown compression {name!r}; choose one of: {', '.join(CODECS)}")


def encode_with_feedback(
    codec: Codec, delta: Mapping[str, np.ndarray], residual: Mapping[str, np.ndarray] | None
) -> tuple[Weights, Weights]:
    """Encode ``delta + residual``; return the encoded arrays and the new residual.

    The residual is what compression dropped: ``(delta + residual) - decode(encoded)``. Keeping
    it and adding it to the next delta (error feedback) sends every coordinate eventually.
    """
    corrected = dict(delta) if residual is None else {n: delta[n] + residual[n] for n in delta}
    encoded = codec.encode(corrected)
    return encoded, subtract(corrected, codec.decode(encoded, corrected))
