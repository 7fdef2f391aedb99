"""In-process transport: a simulation is a deployment whose network is a function call.

The simulated clock lives here: each party takes ``task_seconds[party]`` of simulated time per
task (1 s by default). A synchronous round lasts as long as its slowest party; in buffered
aggregation, replies arrive in the order their tasks would finish.
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Self

import numpy as np

from fedfuse.data import FederatedDataset
from fedfuse.party import ModelAdapter, Party, Reply, Task, TaskError

__all__ = ["LocalPool", "MockPool", "dataset_parties", "handle_safely", "spread_task_seconds"]


class LocalPool:
    """Runs parties one after another in this process.

    Replies of ``dispatch`` are produced lazily, as the caller iterates, so the round loop folds
    each update before the next party trains: memory stays O(model) however many parties there
    are. A started task (buffered aggregation) runs at once and its reply waits until the
    simulated clock reaches its finish time, so the pool holds one reply per party in flight.

    Args:
        parties: party id -> anything with ``handle(task) -> reply``.
        task_seconds: simulated seconds one task takes on each party (1 s for parties not
            listed); see ``spread_task_seconds``.

    ``train_seconds`` counts the real seconds parties spent answering tasks (summed over
    parties) and ``parallelism`` how many answer at once (1 here): the round loop splits a
    round's wall time with them. ``close()`` (or ``with``) releases what a pool holds; nothing
    here.
    """

    parallelism = 1

    def __init__(
        self, parties: Mapping[str, Party], task_seconds: Mapping[str, float] | None = None
    ) -> None:
        self._parties = dict(parties)
        self.task_seconds = dict(task_seconds or {})
        bad = [p for p, s in self.task_seconds.items() if not (math.isfinite(s) and s > 0)]
        if bad:
            raise ValueError(f"task_seconds must be finite and > 0; not for {bad[:5]}")
        self.clock = 0.0
        self.train_seconds = 0.0
        self._in_flight: list[tuple[float, int, str, Reply]] = []
        self._started = 0

    @classmethod
    def from_dataset(
        cls,
        dataset: FederatedDataset,
        adapter: ModelAdapter,
        task_seconds: Mapping[str, float] | None = None,
        **options: Any,
    ) -> Self:
        """One party per entry of ``dataset``, all sharing ``adapter`` (one model in memory;
        a pool with workers copies it into each). ``options`` are the pool's own keyword
        arguments (``ProcessPool``: ``workers``, ``threads``; ``RayPool``: also ``address``)."""
        return cls(dataset_parties(dataset, adapter), task_seconds=task_seconds, **options)

    def party_ids(self) -> list[str]:
        return list(self._parties)

    def seconds(self, party_id: str) -> float:
        return self.task_seconds.get(party_id, 1.0)

    def dispatch(
        self, tasks: Mapping[str, Task], timeout: float | None = None
    ) -> Iterator[tuple[str, Reply]]:
        deadline = None if timeout is None else time.monotonic() + timeout
        round_start = self.clock
        for party_id, task in tasks.items():
            party = self._parties.get(party_id)
            if party is None:
                yield party_id, TaskError(f"unknown party {party_id!r}")
                continue
            self.clock = max(self.clock, round_start + self.seconds(party_id))
            if deadline is not None and time.monotonic() > deadline:
                yield party_id, TaskError("deadline passed before the party was reached")
            else:
                yield party_id, self._timed(party, task)

    def start(self, party_id: str, task: Task) -> None:
        party = self._parties.get(party_id)
        reply = (
            TaskError(f"unknown party {party_id!r}") if party is None else self._timed(party, task)
        )
        self._started += 1
        finish = self.clock + self.seconds(party_id)
        heapq.heappush(self._in_flight, (finish, self._started, party_id, reply))

    def next_arrival(self, timeout: float | None = None) -> tuple[str, Reply] | None:
        """The reply that finishes first; the clock moves to its finish time. ``None`` when
        nothing is in flight, or nothing finishes within ``timeout`` simulated seconds."""
        if not self._in_flight:
            return None
        if timeout is not None and self._in_flight[0][0] > self.clock + timeout:
            self.clock += timeout
            return None
        finish, _, party_id, reply = heapq.heappop(self._in_flight)
        self.clock = max(self.clock, finish)
        return party_id, reply

    def cancel(self, party_id: str) -> None:
        self._in_flight = [entry for entry in self._in_flight if entry[2] != party_id]
        heapq.heapify(self._in_flight)

    def close(self) -> None:
        """Nothing to release in-process; pools with workers stop them here."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _timed(self, party: Party, task: Task) -> Reply:
        start = time.perf_counter()
        try:
            return handle_safely(party, task)
        finally:
            self.train_seconds += time.perf_counter() - start


class _FunctionParty:
    def __init__(self, handler: Callable[[str, Task], Reply], party_id: str) -> None:
        self.handler, self.party_id = handler, party_id

    def handle(self, task: Task) -> Reply:
        return self.handler(self.party_id, task)


class MockPool(LocalPool):
    """An in-memory pool whose parties are one function: ``handler(party_id, task) -> reply``.

    The round loop's test double (httpx's ``MockTransport`` idea): no model, no data, replies
    computed by hand::

        pool = MockPool(["a", "b"], lambda pid, task: Update({"w": np.ones(1)}, 1))
    """

    def __init__(
        self,
        party_ids: Sequence[str],
        handler: Callable[[str, Task], Reply],
        task_seconds: Mapping[str, float] | None = None,
    ) -> None:
        super().__init__({pid: _FunctionParty(handler, pid) for pid in party_ids}, task_seconds)


def dataset_parties(dataset: FederatedDataset, adapter: ModelAdapter) -> dict[str, Party]:
    """One ``Party`` per entry of ``dataset``, in its order, all sharing ``adapter``: what
    every pool's ``from_dataset`` holds (a pool with workers copies the adapter into each)."""
    return {pid: Party(adapter, dataset[pid], pid) for pid in dataset.party_ids}


def spread_task_seconds(
    party_ids: Sequence[str], *, fastest: float = 1.0, spread: float = 10.0, seed: int = 0
) -> dict[str, float]:
    """Seconds per local task for each party, from ``fastest`` to ``spread`` times slower.

    The values are evenly spaced on a log scale (so the slowest party takes exactly ``spread``
    times as long as the fastest) and handed to the parties in a seeded random order.
    """
    n = len(party_ids)
    if n == 0:
        raise ValueError("there are no parties")
    if not (fastest > 0 and spread >= 1):
        raise ValueError(f"need fastest > 0 and spread >= 1, got {fastest!r}, {spread!r}")
    seconds = fastest * spread ** (np.arange(n) / max(n - 1, 1))
    order = np.random.default_rng(seed).permutation(n)
    return {pid: float(seconds[i]) for pid, i in zip(party_ids, order, strict=True)}


def handle_safely(party: Party, task: Task) -> Reply:
    """``party.handle(task)``; an exception it lets out becomes that party's ``TaskError``, so
    one party (a custom ``Party``-like object among them) cannot end the round for all."""
    try:
        return party.handle(task)
    except Exception as exc:  # whatever one party raises is its own failure
        return TaskError(f"{type(exc).__name__}: {str(exc)[:2000]}")
