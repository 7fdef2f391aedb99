"""dp-accounting's Rényi DP warnings, kept out of the user's log while it computes."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

__all__ = ["quiet_rdp"]


@contextlib.contextmanager
def quiet_rdp() -> Iterator[None]:
    """Drop dp-accounting's "failed to converge ... excluding this order" warnings while it
    runs (dozens per call, every round). The orders left out only loosen the RDP bound, which
    stays valid: with large epsilon (e.g. q = 0.1, z = 0.5) RDP then reports more than
    Opacus's RDP does (see benchmarks/results/dp_accounting.md); PLD, the default, is not
    affected. Only this filter on absl's logger is added, and removed afterwards."""

    def keep(record: logging.LogRecord) -> bool:
        return "failed to converge" not in str(record.msg)

    logger = logging.getLogger("absl")
    logger.addFilter(keep)
    try:
        yield
    finally:
        logger.removeFilter(keep)
