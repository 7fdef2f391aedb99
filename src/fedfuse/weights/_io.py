"""safetensors (de)serialization of ``Weights``: zero-copy, no pickle, safe on untrusted bytes."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load, load_file, save, save_file

from fedfuse.weights._named import Weights, as_weights

__all__ = [
    "WeightsFormatError",
    "from_buffer",
    "from_bytes",
    "load_weights",
    "save_weights",
    "to_bytes",
]


class WeightsFormatError(ValueError):
    """Bytes or a file that are not valid safetensors weights."""


def _contiguous(w: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    # not np.ascontiguousarray: it turns 0-d arrays into 1-d ones
    return {
        name: arr if arr.flags.c_contiguous else arr.copy(order="C")
        for name, arr in as_weights(w).items()
    }


def to_bytes(w: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None) -> bytes:
    """Serialize weights (and optional string metadata) to safetensors bytes."""
    return save(_contiguous(w), metadata=dict(metadata) if metadata else None)


def from_bytes(data: bytes) -> Weights:
    """Parse safetensors bytes; anything else raises ``WeightsFormatError``."""
    try:
        return as_weights(load(data))
    except (SafetensorError, ValueError, TypeError) as exc:
        raise WeightsFormatError(f"not valid safetensors data: {exc}") from exc


_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8,
    "U64": np.uint64, "U32": np.uint32, "U16": np.uint16, "U8": np.uint8, "BOOL": np.bool_,
}  # fmt: skip


def from_buffer(buffer: bytes | bytearray | memoryview) -> Weights:
    """Parse safetensors data without copying: the arrays are views into ``buffer``.

    This is the hot path of the aggregator (every update it receives). The format is checked
    as strictly as safetensors itself does: a JSON header of known dtypes and shapes whose byte
    ranges tile the data section exactly. Views into ``bytes`` are read-only.
    """
    view = memoryview(buffer).cast("B")
    if len(view) < 8:
        raise WeightsFormatError("not valid safetensors data: shorter than its 8-byte header size")
    size = int.from_bytes(view[:8], "little")
    if size > len(view) - 8 or size > 100_000_000:
        raise WeightsFormatError(f"not valid safetensors data: header size {size} is too large")
    try:
        header = json.loads(bytes(view[8 : 8 + size]))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WeightsFormatError(f"not valid safetensors data: bad header ({exc})") from None
    if not isinstance(header, dict):
        raise WeightsFormatError("not valid safetensors data: the header is not a JSON object")
    header.pop("__metadata__", None)
    data = view[8 + size :]
    spans, weights = [], {}
    for name, info in header.items():
        try:
            dtype = np.dtype(_DTYPES[info["dtype"]])
            shape = tuple(int(d) for d in info["shape"])
            begin, end = (int(o) for o in info["data_offsets"])
        except (KeyError, TypeError, ValueError) as exc:
            raise WeightsFormatError(
                f"not valid safetensors data: tensor {name!r}: {exc}"
            ) from None
        count = math.prod(shape)
        if min(shape, default=0) < 0 or not 0 <= begin <= end <= len(data):
            raise WeightsFormatError(f"not valid safetensors data: tensor {name!r} is out of range")
        if end - begin != count * dtype.itemsize:
            raise WeightsFormatError(
                f"not valid safetensors data: tensor {name!r} has {end - begin} bytes for shape "
                f"{shape} of {dtype}"
            )
        spans.append((begin, end))
        weights[name] = np.frombuffer(data, dtype, count, begin).reshape(shape)
    position = 0
    for begin, end in sorted(spans):
        if begin != position:
            raise WeightsFormatError("not valid safetensors data: tensors overlap or leave gaps")
        position = end
    if position != len(data):
        raise WeightsFormatError("not valid safetensors data: trailing bytes after the tensors")
    return as_weights(weights)


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
