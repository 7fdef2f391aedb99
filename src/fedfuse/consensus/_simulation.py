"""Asynchronous exchanges on a simulated clock: an event queue, no global barrier.

Every node runs at its own seeded pace: node i's rate ``r_i`` is drawn from
``U[1 - speed_spread, 1 + speed_spread]`` and each of its minibatch steps takes
``U[1 - jitter, 1 + jitter] / r_i`` time units, so the average node does one step per unit.
When a step closes a local round the node picks its partners (the algorithm's seeded draw) and
sends each of them its message right then; a two-way algorithm's neighbour answers with what it
holds at that moment (its state after its own last step). That is the only synchronisation
there is. A neighbour that is
not running (dead, or not yet joined) fails the exchange; the node drops the edge after
``max_failures`` failures in a row. A message the receiver refuses (``ConsensusNode.check``: not
finite, or far larger than what it holds, as a diverging neighbour's is) changes nothing, is
counted by the receiver and logged, and the run goes on. A node that joins late starts from
the model of its lowest-numbered running neighbour.

Events at the same instant run in a fixed order (failures, joins, steps by node id, then
checkpoints), and all randomness comes from the seed, so a run is exactly reproducible.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from fedfuse.consensus._node import ConsensusNode

__all__ = ["AsyncSimulator", "ExchangeEvent"]

_FAIL, _JOIN, _STEP, _CHECKPOINT = range(4)


@dataclass(frozen=True)
class ExchangeEvent:
    """One attempted exchange (a message from ``initiator`` to ``peer``) at simulated ``time``."""

    time: float
    initiator: int
    peer: int
    ok: bool
    dropped: bool = False
    refused: bool = False


@dataclass
class AsyncSimulator:
    """Drives ``ConsensusNode``s with an event-driven clock.

    Args:
        nodes: node id -> node.
        seed: seeds the rates and step durations.
        speed_spread: rates are ``U[1 - speed_spread, 1 + speed_spread]`` (0: all equal).
        jitter: each step lasts ``U[1 - jitter, 1 + jitter] / rate``.
        join_at: node id -> time the node starts (later than 0: it joins late).
        fail_at: node id -> time the node dies (stops stepping and answering).
    """

    nodes: Mapping[int, ConsensusNode]
    seed: int = 0
    speed_spread: float = 0.5
    jitter: float = 0.5
    join_at: Mapping[int, float] = field(default_factory=dict)
    fail_at: Mapping[int, float] = field(default_factory=dict)
    log: list[ExchangeEvent] = field(default_factory=list, init=False)
    joined_from: dict[int, int | None] = field(default_factory=dict, init=False)
    time: float = field(default=0.0, init=False)

    def __post_init__(self) -> None:
        if not 0 <= self.speed_spread < 1:
            raise ValueError(f"speed_spread must be in [0, 1), got {self.speed_spread}")
        if not 0 <= self.jitter < 1:
            raise ValueError(f"jitter must be in [0, 1), got {self.jitter}")
        unknown = sorted((set(self.join_at) | set(self.fail_at)) - set(self.nodes))
        if unknown:
            raise ValueError(f"join_at/fail_at name unknown nodes {unknown}")
        self._rng = np.random.default_rng([self.seed, 11])
        ids = sorted(self.nodes)
        spread = self.speed_spread
        self.rates = dict(
            zip(ids, self._rng.uniform(1 - spread, 1 + spread, len(ids)), strict=True)
        )
        self.running: set[int] = set()
        self._queue: list[tuple[float, int, int, int]] = []
        self._seq = itertools.count()
        for i in ids:
            start = float(self.join_at.get(i, 0.0))
            self._push(start, _JOIN, i)
            if i in self.fail_at:
                self._push(float(self.fail_at[i]), _FAIL, i)

    def _push(self, time: float, kind: int, node: int) -> None:
        heapq.heappush(self._queue, (time, kind, node, next(self._seq)))

    def _step_duration(self, node: int) -> float:
        return float(self._rng.uniform(1 - self.jitter, 1 + self.jitter)) / self.rates[node]

    def _join(self, i: int) -> None:
        node = self.nodes[i]
        if self.time > 0:
            donors = [j for j in node.configured_peers if j in self.running]
            self.joined_from[i] = donors[0] if donors else None
            if donors:
                node.start_from(self.nodes[donors[0]].weights())
        self.running.add(i)
        self._push(self.time + self._step_duration(i), _STEP, i)

    def _exchange(self, i: int, j: int) -> None:
        node = self.nodes[i]
        if j not in self.running:
            dropped = node.exchange_failed(j)
            self.log.append(ExchangeEvent(self.time, i, j, ok=False, dropped=dropped))
            return
        message = node.message(j)
        try:
            reply, degree_j = self.nodes[j].answer(i, message, node.degree)
        except ValueError:  # j refused it (and counted it); nothing changed at either end
            self.log.append(ExchangeEvent(self.time, i, j, ok=False, refused=True))
            return
        node.delivered(j, message)
        if reply is not None:
            try:
                node.receive(j, reply, degree_j)
            except ValueError:  # i refused j's reply: j's half stands, i's does not
                self.log.append(ExchangeEvent(self.time, i, j, ok=False, refused=True))
                return
            self.nodes[j].delivered(i, reply)
        self.log.append(ExchangeEvent(self.time, i, j, ok=True))

    def _step(self, i: int) -> None:
        node = self.nodes[i]
        node.step()
        if node.round_done:
            for j in node.partners():
                self._exchange(i, j)
        self._push(self.time + self._step_duration(i), _STEP, i)

    def run(
        self,
        until: float,
        checkpoints: Sequence[float] = (),
        on_checkpoint: Callable[[float], None] | None = None,
    ) -> None:
        """Advance the clock to ``until``, calling ``on_checkpoint(t)`` at each checkpoint time.

        Can be called again to continue from where the last call stopped.
        """
        for t in checkpoints:
            if self.time <= t <= until:
                self._push(float(t), _CHECKPOINT, -1)
        while self._queue and self._queue[0][0] <= until:
            self.time, kind, i, _ = heapq.heappop(self._queue)
            if kind == _CHECKPOINT:
                if on_checkpoint is not None:
                    on_checkpoint(self.time)
            elif kind == _JOIN:
                self._join(i)
            elif kind == _FAIL:
                self.running.discard(i)
            elif i in self.running:
                self._step(i)
        self.time = until
