"""Small pieces the service's routes share: uploads read with a limit, thread-to-loop calls."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from fastapi import UploadFile

__all__ = ["RequestTooLarge", "call_soon", "read_upload"]


class RequestTooLarge(ValueError):
    """A request carries more than the service accepts (413)."""


async def read_upload(upload: UploadFile | None, name: str, limit: int) -> bytes | None:
    if upload is None:
        return None
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise RequestTooLarge(f"file {name!r} exceeds the limit of {limit} bytes")
    return data


def call_soon(loop: asyncio.AbstractEventLoop, callback: Callable[[], Any]) -> None:
    """``callback`` on ``loop`` from another thread; nothing once the loop has closed."""
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(callback)
