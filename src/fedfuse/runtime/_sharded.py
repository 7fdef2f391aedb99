"""Parties pinned to shards that train somewhere else: the part every parallel backend shares.

A ``ShardedPool`` hands each party to one shard (worker process, Ray actor) for the pool's life:
the shard holds the party's data and state, loaded once. A round's tasks go out to every shard
at once, grouped per shard (one message each), and the replies come back as the shards finish.
They are yielded in the order of the tasks, each as soon as it and those before it are in: the
round loop folds in the same order as ``LocalPool`` does, so the fused model is the same bit
for bit, while later replies wait, already computed, for their turn.

The simulated clock is ``LocalPool``'s: a synchronous round lasts as long as its slowest party;
a started task (buffered aggregation) goes out at once and arrives at its simulated finish time.
A subclass supplies the transport: ``_send`` (a batch of tasks per shard), ``_receive`` (what
arrived within a timeout) and ``_lost`` (tasks whose shard died, with the reason).
"""

from __future__ import annotations

import abc
import heapq
import time
from collections.abc import Iterator, Mapping

from fedfuse.party import Party, Reply, Task, TaskError
from fedfuse.runtime._local import LocalPool

__all__ = ["Arrival", "Sent", "ShardedPool"]

Sent = tuple[int, str, Task]  # (sequence number, party id, task)
Arrival = tuple[int, Reply, float]  # (sequence number, reply, seconds the party took)

_POLL_SECONDS = 1.0  # how often a wait looks for dead shards when nothing arrives


class ShardedPool(LocalPool, abc.ABC):
    """Parties spread round-robin over ``shards`` shards, in the order ``parties`` lists them.

    Args:
        parties: party id -> party (the subclass moves each to its shard).
        shards: how many shards (at most one per party).
        task_seconds: simulated seconds per task, as in ``LocalPool``.
    """

    def __init__(
        self,
        parties: Mapping[str, Party],
        shards: int,
        task_seconds: Mapping[str, float] | None = None,
    ) -> None:
        super().__init__(parties, task_seconds)
        if shards < 1:
            raise ValueError(f"a sharded pool needs at least one shard, got {shards}")
        self.parallelism = min(shards, max(len(self._parties), 1))
        self.shard_of = {pid: i % self.parallelism for i, pid in enumerate(self._parties)}
        self._seq = 0
        self._waiting: dict[int, tuple[str, int]] = {}  # sent, not answered: seq -> (party, shard)
        self._arrived: dict[int, tuple[Reply, float]] = {}
        self._flight: list[tuple[float, int, str, int]] = []  # (finish, order, party, seq)

    def shard_parties(self, shard: int) -> dict[str, Party]:
        """The parties shard ``shard`` holds."""
        return {pid: self._parties[pid] for pid, s in self.shard_of.items() if s == shard}

    # ---- transport, supplied by the subclass --------------------------------------------------
    @abc.abstractmethod
    def _send(self, batches: Mapping[int, list[Sent]]) -> None:
        """Hand each shard its batch of tasks, without waiting for their replies."""

    @abc.abstractmethod
    def _receive(self, timeout: float) -> list[Arrival]:
        """What arrived within ``timeout`` seconds (nothing when it is up)."""

    @abc.abstractmethod
    def _lost(self, shards: set[int]) -> dict[int, str]:
        """Of ``shards`` (those with tasks out), the ones that died -> why."""

    # ---- the pool -----------------------------------------------------------------------------
    def dispatch(
        self, tasks: Mapping[str, Task], timeout: float | None = None
    ) -> Iterator[tuple[str, Reply]]:
        deadline = None if timeout is None else time.monotonic() + timeout
        round_start = self.clock
        sent = self._submit(tasks)
        try:
            for party_id, seq in sent:
                self.clock = max(self.clock, round_start + self.seconds(party_id))
                yield party_id, seq if isinstance(seq, TaskError) else self._reply(seq, deadline)
        finally:  # a round that stops early: replies still to come are dropped when they do
            for _, seq in sent:
                if isinstance(seq, int):
                    self._forget(seq)

    def start(self, party_id: str, task: Task) -> None:
        [(_, seq)] = self._submit({party_id: task})
        self._started += 1
        finish = self.clock + self.seconds(party_id)
        if isinstance(seq, TaskError):  # unknown party: its error arrives like a reply
            self._seq += 1
            seq, self._arrived[self._seq] = self._seq, (seq, 0.0)
            self._waiting[seq] = (party_id, -1)
        heapq.heappush(self._flight, (finish, self._started, party_id, seq))

    def next_arrival(self, timeout: float | None = None) -> tuple[str, Reply] | None:
        if not self._flight:
            return None
        if timeout is not None and self._flight[0][0] > self.clock + timeout:
            self.clock += timeout
            return None
        finish, _, party_id, seq = heapq.heappop(self._flight)
        self.clock = max(self.clock, finish)
        return party_id, self._reply(seq, None)

    def cancel(self, party_id: str) -> None:
        for entry in [e for e in self._flight if e[2] == party_id]:
            self._forget(entry[3])
        self._flight = [entry for entry in self._flight if entry[2] != party_id]
        heapq.heapify(self._flight)

    def _submit(self, tasks: Mapping[str, Task]) -> list[tuple[str, int | TaskError]]:
        """Send every task to its party's shard, one batch per shard; the sequence number of
        each (or the error of a party no shard holds), in the order of ``tasks``."""
        sent: list[tuple[str, int | TaskError]] = []
        batches: dict[int, list[Sent]] = {}
        for party_id, task in tasks.items():
            shard = self.shard_of.get(party_id)
            if shard is None:
                sent.append((party_id, TaskError(f"unknown party {party_id!r}")))
                continue
            self._seq += 1
            batches.setdefault(shard, []).append((self._seq, party_id, task))
            self._waiting[self._seq] = (party_id, shard)
            sent.append((party_id, self._seq))
        if batches:
            self._send(batches)
        return sent

    def _reply(self, seq: int, deadline: float | None) -> Reply:
        """Task ``seq``'s reply: wait for it until ``deadline`` (``time.monotonic``), keeping
        what else arrives meanwhile for its turn."""
        while seq not in self._arrived:
            wait = _POLL_SECONDS
            if deadline is not None:
                wait = min(wait, deadline - time.monotonic())
                if wait <= 0:
                    self._forget(seq)
                    return TaskError("no reply before the round's deadline")
            for arrived, reply, seconds in self._receive(wait):
                if arrived in self._waiting:  # else a task that was forgotten: dropped
                    self._arrived[arrived] = (reply, seconds)
            out = {shard for _, shard in self._waiting.values() if shard >= 0}
            lost = self._lost(out) if out else {}
            for waiting, (_, shard) in self._waiting.items():
                if shard in lost and waiting not in self._arrived:
                    self._arrived[waiting] = (TaskError(lost[shard]), 0.0)
        reply, seconds = self._arrived.pop(seq)
        del self._waiting[seq]
        self.train_seconds += seconds
        return reply

    def _forget(self, seq: int) -> None:
        self._waiting.pop(seq, None)
        self._arrived.pop(seq, None)
