"""Transports that carry tasks to parties: in-process, worker processes, Ray actors, cohorts
of vectorized parties, and mailboxes fed by the service."""

from fedfuse.runtime._backend import BACKENDS, Backend, make_pool
from fedfuse.runtime._base import PartyPool
from fedfuse.runtime._http_party import (
    PartyClient,
    PartyRunSummary,
    ProtocolError,
    create_federation,
    run_party,
)
from fedfuse.runtime._local import LocalPool, MockPool, spread_task_seconds
from fedfuse.runtime._party_builder import party_from_join
from fedfuse.runtime._processes import ProcessPool, available_cores
from fedfuse.runtime._remote import PendingTask, RemotePool, UnexpectedReplyError
from fedfuse.runtime._sharded import ShardedPool
from fedfuse.runtime._wire import (
    WireFormatError,
    decode_meta,
    reply_from_wire,
    reply_to_wire,
    task_from_wire,
    task_to_wire,
)

__all__ = [
    "BACKENDS",
    "Backend",
    "LocalPool",
    "MockPool",
    "PartyClient",
    "PartyPool",
    "PartyRunSummary",
    "PendingTask",
    "ProcessPool",
    "ProtocolError",
    "RemotePool",
    "ShardedPool",
    "UnexpectedReplyError",
    "WireFormatError",
    "available_cores",
    "create_federation",
    "party_from_join",
    "decode_meta",
    "make_pool",
    "reply_from_wire",
    "reply_to_wire",
    "run_party",
    "spread_task_seconds",
    "task_from_wire",
    "task_to_wire",
]
