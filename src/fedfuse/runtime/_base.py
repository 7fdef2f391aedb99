"""The transport contract: carry tasks to parties and bring their replies back."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Protocol

from fedfuse.party import Reply, Task

__all__ = ["PartyPool"]


class PartyPool(Protocol):
    """Parties reachable through one transport.

    ``dispatch`` sends each party its task and yields ``(party_id, reply)`` as replies arrive.
    A party that fails, or does not answer within ``timeout`` seconds, yields a ``TaskError``.
    """

    def party_ids(self) -> list[str]: ...

    def dispatch(
        self, tasks: Mapping[str, Task], timeout: float | None = None
    ) -> Iterator[tuple[str, Reply]]: ...
