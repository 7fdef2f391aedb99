"""The errors the service's parts raise; the app maps each to one HTTP status."""

from __future__ import annotations

import errno
import sqlite3

__all__ = ["Conflict", "NotFound", "StorageError", "Unauthorized", "storage_error"]


class NotFound(LookupError):
    """No such federation or party."""


class Conflict(RuntimeError):
    """The request does not fit the federation's state (training twice, stopping twice...)."""


class Unauthorized(PermissionError):
    """A missing or wrong token."""


class StorageError(OSError):
    """The service could not store what it was given (a full disk, a read-only folder...);
    nothing half-written is left behind. ``errno`` is the cause's (``ENOSPC``: disk full)."""

    def __str__(self) -> str:
        return self.strerror or super().__str__()


def storage_error(action: str, exc: OSError | sqlite3.Error) -> StorageError:
    code = exc.errno if isinstance(exc, OSError) else None
    if isinstance(exc, sqlite3.OperationalError) and "full" in str(exc):
        code = errno.ENOSPC  # SQLite's "database or disk is full"
    if code in (errno.ENOSPC, errno.EDQUOT):
        return StorageError(code, f"{action}: the disk is full")
    return StorageError(code or errno.EIO, f"{action}: {getattr(exc, 'strerror', None) or exc}")
