"""Natural order for names with numbers: ``layer2`` before ``layer10`` (used by any layer)."""

from __future__ import annotations

import re

__all__ = ["natural_key"]


def natural_key(name: object) -> list[object]:
    """A sort key that compares the digit runs of ``str(name)`` as numbers."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(name))]
