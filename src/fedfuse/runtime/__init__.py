"""Transports that carry tasks to parties: local (in-process) now; HTTP with the service."""

from fedfuse.runtime._base import PartyPool
from fedfuse.runtime._local import LocalPool

__all__ = ["LocalPool", "PartyPool"]
