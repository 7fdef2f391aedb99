"""The transport contract: carry tasks to parties and bring their replies back."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Protocol

from fedfuse.party import Reply, Task

__all__ = ["PartyPool"]


class PartyPool(Protocol):
    """Parties reachable through one transport.

    Synchronous rounds use ``dispatch``: it sends each party its task and yields
    ``(party_id, reply)`` as replies arrive; a party that fails, or does not answer within
    ``timeout`` seconds, yields a ``TaskError``.

    Buffered aggregation uses the three others: ``start`` hands one party a task and returns at
    once; ``next_arrival`` is the next reply of any started task (``None`` if none arrived within
    ``timeout`` seconds: of simulated time in ``LocalPool``, real time in ``RemotePool``);
    ``cancel`` forgets a party's task (its reply, if it ever comes, is refused).
    """

    def party_ids(self) -> list[str]: ...

    def dispatch(
        self, tasks: Mapping[str, Task], timeout: float | None = None
    ) -> Iterator[tuple[str, Reply]]: ...

    def start(self, party_id: str, task: Task) -> None: ...

    def next_arrival(self, timeout: float | None = None) -> tuple[str, Reply] | None: ...

    def cancel(self, party_id: str) -> None: ...
