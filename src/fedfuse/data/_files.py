"""What every file loader shares: its two errors and the size check made before reading."""

from __future__ import annotations

from pathlib import Path

from fedfuse.weights import SizeLimits

__all__ = ["DatasetFormatError", "DatasetNotFoundError", "checked_size"]


class DatasetFormatError(ValueError):
    """A file that exists but is not in the expected format (truncated, wrong magic, bad keys)."""


class DatasetNotFoundError(FileNotFoundError):
    """A dataset that is not on this machine; the message says how to provide it."""


def checked_size(path: Path, limits: SizeLimits, what: str) -> int:
    """The size of the file at ``path`` in bytes, once it passes ``limits.max_bytes``.

    Raises:
        DatasetNotFoundError: ``path`` is not a file.
        SizeLimitError: the file is larger than ``limits.max_bytes``.
    """
    if not path.is_file():
        raise DatasetNotFoundError(f"{path}: no such file ({what})")
    size = path.stat().st_size
    limits.check_bytes(size, f"{path}: {what}")
    return size
