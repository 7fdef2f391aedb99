"""What the messages of SecAgg+ look like: stages, sizes and the checks both sides share."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from fedfuse.secure._crypto import NONCE_BYTES, TAG_BYTES
from fedfuse.secure._errors import SecAggError
from fedfuse.secure._shamir import PRIME, SHARE_BYTES

__all__ = [
    "CIPHERTEXT_BYTES",
    "INDEX_BYTES",
    "KEY_FIELDS",
    "SESSION_BYTES",
    "STAGES",
    "WIRE_SHARE_BYTES",
    "check_bytes",
    "check_ids",
    "check_keys",
    "check_message",
    "decode_share",
    "encode_share",
]

STAGES = ("advertise", "share", "mask", "unmask")
KEY_FIELDS = ("c_pk", "s_pk", "b_commit")
SESSION_BYTES = 16
INDEX_BYTES = 4
WIRE_SHARE_BYTES = INDEX_BYTES + SHARE_BYTES
# plaintext: share index, then the share of s_sk and the share of b
PLAINTEXT_BYTES = INDEX_BYTES + 2 * SHARE_BYTES
CIPHERTEXT_BYTES = NONCE_BYTES + PLAINTEXT_BYTES + TAG_BYTES


def check_message(
    who: str, message: Any, stage: str, session: bytes | None, fields: Collection[str]
) -> None:
    """``message`` is a dict of exactly ``stage``, ``session`` and ``fields``, for this stage and
    session (``session=None``: any 16 bytes, for the first request)."""
    if not isinstance(message, dict):
        raise SecAggError(f"{who}: a message must be a dict, got {type(message).__name__}")
    if message.get("stage") != stage:
        raise SecAggError(f"{who}: expected stage {stage!r}, got {message.get('stage')!r}")
    got = message.get("session")
    if session is None:
        check_bytes(who, "session", got, SESSION_BYTES)
    elif got != session:
        raise SecAggError(f"{who}: message of another session")
    extra = set(message) - {"stage", "session", *fields}
    missing = {"stage", "session", *fields} - set(message)
    if extra or missing:
        raise SecAggError(
            f"{who}: {stage} message with unexpected fields {sorted(extra)} or missing "
            f"{sorted(missing)}"
        )


def check_bytes(who: str, name: str, value: Any, size: int) -> bytes:
    if not (isinstance(value, bytes) and len(value) == size):
        raise SecAggError(f"{who}: {name} must be {size} bytes")
    return value


def check_ids(who: str, name: str, value: Any) -> list[str]:
    """A sorted list of distinct party ids."""
    if not (isinstance(value, list) and all(isinstance(p, str) for p in value)):
        raise SecAggError(f"{who}: {name} must be a list of party ids")
    if value != sorted(set(value)):
        raise SecAggError(f"{who}: {name} must be sorted and without repeats")
    return value


def check_keys(who: str, name: str, value: Any, expected: set[str]) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise SecAggError(f"{who}: {name} must be a dict")
    if set(value) != expected:
        raise SecAggError(
            f"{who}: {name} for {sorted(map(str, value))}, expected {sorted(expected)}"
        )
    return value


def encode_share(x: int, y: int) -> bytes:
    return x.to_bytes(INDEX_BYTES, "big") + y.to_bytes(SHARE_BYTES, "big")


def decode_share(who: str, data: Any) -> tuple[int, int]:
    check_bytes(who, "a share", data, WIRE_SHARE_BYTES)
    x = int.from_bytes(data[:INDEX_BYTES], "big")
    y = int.from_bytes(data[INDEX_BYTES:], "big")
    if x == 0 or y >= PRIME:
        raise SecAggError(f"{who}: a share is not a point of the field")
    return x, y
