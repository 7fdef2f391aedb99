"""Transports that carry tasks to parties: in-process, and mailboxes fed by the service."""

from fedfuse.runtime._base import PartyPool
from fedfuse.runtime._http_party import (
    PartyClient,
    PartyRunSummary,
    ProtocolError,
    create_federation,
    run_party,
)
from fedfuse.runtime._local import LocalPool, MockPool, spread_task_seconds
from fedfuse.runtime._remote import PendingTask, RemotePool, UnexpectedReplyError

__all__ = [
    "LocalPool",
    "MockPool",
    "PartyClient",
    "PartyPool",
    "PartyRunSummary",
    "PendingTask",
    "ProtocolError",
    "RemotePool",
    "UnexpectedReplyError",
    "create_federation",
    "run_party",
    "spread_task_seconds",
]
