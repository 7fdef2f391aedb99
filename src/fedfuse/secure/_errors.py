"""The one error of the secure aggregation protocol."""

from __future__ import annotations

__all__ = ["SecAggError"]


class SecAggError(ValueError):
    """A protocol violation or an abort; the message says which party and why."""
