"""Transports that carry tasks to parties: in-process, worker processes, Ray actors, cohorts
of vectorized parties, and mailboxes fed by the service.

The HTTP party client (``PartyClient``, ``run_party``...) is imported on first use: httpx
brings its own command-line tool (rich, pygments, click) that a simulation does not need.
"""

from typing import TYPE_CHECKING, Any

from fedfuse.runtime._backend import BACKENDS, Backend, make_pool
from fedfuse.runtime._base import PartyPool
from fedfuse.runtime._cohort import CohortPool
from fedfuse.runtime._local import LocalPool, MockPool, spread_task_seconds
from fedfuse.runtime._processes import ProcessPool, available_cores
from fedfuse.runtime._ray import RayPool
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

if TYPE_CHECKING:
    from fedfuse.runtime._http_party import (
        PartyClient,
        PartyRunSummary,
        ProtocolError,
        create_federation,
        run_party,
    )
    from fedfuse.runtime._party_builder import party_from_join

_LAZY = {
    "PartyClient": "fedfuse.runtime._http_party",
    "PartyRunSummary": "fedfuse.runtime._http_party",
    "ProtocolError": "fedfuse.runtime._http_party",
    "create_federation": "fedfuse.runtime._http_party",
    "run_party": "fedfuse.runtime._http_party",
    "party_from_join": "fedfuse.runtime._party_builder",
}

__all__ = [
    "BACKENDS",
    "Backend",
    "CohortPool",
    "LocalPool",
    "MockPool",
    "PartyClient",
    "PartyPool",
    "PartyRunSummary",
    "PendingTask",
    "ProcessPool",
    "ProtocolError",
    "RayPool",
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


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'fedfuse.runtime' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
