"""A strict, pickle-free encoding of the small protocol messages: JSON with bytes as
``{"$b": "<base64>"}``. The masked vector travels separately (raw ``uint32`` safetensors)."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from fedfuse.secure._errors import SecAggError

__all__ = ["pack", "unpack"]

MAX_DEPTH = 6
_TAG = "$b"


def _encode(value: Any, depth: int) -> Any:
    if depth > MAX_DEPTH:
        raise SecAggError(f"pack: message nested deeper than {MAX_DEPTH}")
    if isinstance(value, bytes):
        return {_TAG: base64.b64encode(value).decode("ascii")}
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str) or key.startswith("$"):
                raise SecAggError(f"pack: keys must be strings not starting with '$', got {key!r}")
            out[key] = _encode(item, depth + 1)
        return out
    if isinstance(value, list | tuple):
        return [_encode(item, depth + 1) for item in value]
    if value is None or isinstance(value, bool | int | str):
        return value
    raise SecAggError(f"pack: cannot encode a {type(value).__name__} (arrays travel separately)")


def pack(message: dict) -> bytes:
    """``message`` (str keys; values str, int, bool, None, bytes, lists and dicts) as JSON."""
    if not isinstance(message, dict):
        raise SecAggError(f"pack: a message is a dict, got {type(message).__name__}")
    return json.dumps(_encode(message, 0), separators=(",", ":")).encode()


def _decode(value: Any, depth: int) -> Any:
    if depth > MAX_DEPTH:
        raise SecAggError(f"unpack: message nested deeper than {MAX_DEPTH}")
    if isinstance(value, dict):
        if any(key.startswith("$") for key in value):
            if set(value) != {_TAG} or not isinstance(value[_TAG], str):
                raise SecAggError(f"unpack: unknown tag in {sorted(value)}")
            try:
                return base64.b64decode(value[_TAG], validate=True)
            except (binascii.Error, ValueError) as e:
                raise SecAggError("unpack: bad base64") from e
        return {key: _decode(item, depth + 1) for key, item in value.items()}
    if isinstance(value, list):
        return [_decode(item, depth + 1) for item in value]
    if isinstance(value, float):
        raise SecAggError("unpack: no floats in protocol messages")
    return value


def _no_constant(name: str) -> None:
    raise SecAggError(f"unpack: {name} is not JSON")


def unpack(data: bytes, max_bytes: int = 1 << 20) -> dict:
    """Inverse of ``pack``; refuses more than ``max_bytes``, anything but a dict at the top,
    nesting deeper than a few levels, unknown ``$`` tags, floats and non-JSON constants."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise SecAggError(f"unpack: data must be bytes, got {type(data).__name__}")
    if len(data) > max_bytes:
        raise SecAggError(f"unpack: {len(data)} bytes, more than max_bytes={max_bytes}")
    try:
        raw = json.loads(bytes(data), parse_constant=_no_constant)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise SecAggError(f"unpack: not a JSON message ({type(e).__name__})") from e
    if not isinstance(raw, dict):
        raise SecAggError(f"unpack: a message is a JSON object, got {type(raw).__name__}")
    return _decode(raw, 0)
