"""In-process transport: a simulation is a deployment whose network is a function call."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping

from fedfuse.data import FederatedDataset
from fedfuse.party import ModelAdapter, Party, Reply, Task, TaskError

__all__ = ["LocalPool"]


class LocalPool:
    """Runs parties one after another in this process.

    Replies are produced lazily, as the caller iterates, so the round loop folds each update
    before the next party trains: memory stays O(model) however many parties there are.
    """

    def __init__(self, parties: Mapping[str, Party]) -> None:
        self._parties = dict(parties)

    @classmethod
    def from_dataset(cls, dataset: FederatedDataset, adapter: ModelAdapter) -> LocalPool:
        """One party per entry of ``dataset``, all sharing ``adapter`` (one model in memory)."""
        return cls({pid: Party(adapter, dataset[pid], pid) for pid in dataset.party_ids})

    def party_ids(self) -> list[str]:
        return list(self._parties)

    def dispatch(
        self, tasks: Mapping[str, Task], timeout: float | None = None
    ) -> Iterator[tuple[str, Reply]]:
        deadline = None if timeout is None else time.monotonic() + timeout
        for party_id, task in tasks.items():
            party = self._parties.get(party_id)
            if party is None:
                yield party_id, TaskError(f"unknown party {party_id!r}")
            elif deadline is not None and time.monotonic() > deadline:
                yield party_id, TaskError("deadline passed before the party was reached")
            else:
                yield party_id, _handle(party, task)


def _handle(party: Party, task: Task) -> Reply:
    """``party.handle(task)``; an exception it lets out becomes that party's ``TaskError``, so
    one party (a custom ``Party``-like object among them) cannot end the round for all."""
    try:
        return party.handle(task)
    except Exception as exc:  # whatever one party raises is its own failure
        return TaskError(f"{type(exc).__name__}: {str(exc)[:2000]}")
