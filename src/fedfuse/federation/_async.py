"""Buffered asynchronous aggregation (FedBuff) on a simulated clock.

Parties train at their own pace: each takes ``task_seconds[party]`` of simulated time per
local task. Whenever one finishes, its update joins a buffer and the party starts again from
the newest global model; every ``buffer_size`` arrivals the buffer is fused and the global
model advances one *version*. An update that started from version ``v`` and arrives at version
``V`` has staleness ``V - v`` and is scaled by ``(1 + staleness) ** -staleness_exponent``
(``1/√(1+s)`` by default) before fusion, so old news counts less. Nobody waits for the slowest
party, which is where the time goes in synchronous rounds when speeds differ.

Everything else is the synchronous machinery: train tasks go through the pool's ``dispatch``,
every reply through ``screen_reply`` (decoding, validation, skip and byte counts), and the
buffer through the same fusion transforms (``fedavg()``, a server optimizer, robust rules).
Memory: the buffer holds ``buffer_size`` updates and each party in flight one reply, so the
aggregator needs O((buffer_size + concurrency) x model).

References:
    Nguyen et al., "Federated Learning with Buffered Asynchronous Aggregation", AISTATS 2022.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from fedfuse.federation._federation import Evaluator
from fedfuse.federation._metrics import WeightedMetrics
from fedfuse.federation._round import RoundResult, fuse_safely, screen_reply
from fedfuse.federation._sampling import derive_seed
from fedfuse.federation._validate import DEFAULT_MAX_UPDATE_RATIO, check_update_bounds
from fedfuse.fusion import FusionTransform, Update, check_fusion_size, get_fusion
from fedfuse.models import TrainConfig, resolve_optimizer
from fedfuse.party import Reply, TrainTask
from fedfuse.runtime import PartyPool
from fedfuse.weights import Weights, get_codec, scale

__all__ = ["AsyncFederation", "spread_task_seconds"]


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


class AsyncFederation:
    """FedBuff: fuse every ``buffer_size`` arrivals, weighting stale updates down.

    Args:
        pool: the transport to the parties (``LocalPool`` in simulation).
        initial_weights: the global model to start from.
        task_seconds: simulated seconds one local task takes on each party.
        fusion: a fusion name or transform applied to each full buffer.
        config: how parties train locally.
        buffer_size: arrivals per fusion (FedBuff's K).
        concurrency: parties training at any time (all of them by default); when one
            finishes, a party chosen at random (seeded) among the idle ones starts.
        staleness_exponent: an update of staleness ``s`` is scaled by ``(1 + s) ** -a``.
        seed: makes party choice and local training reproducible.
        central_eval: ``weights -> metrics``, run after every fusion.
        max_update_norm: reject updates whose L2 norm exceeds this.
        max_update_ratio: reject updates larger than this many times the global model's norm
            (on by default; see ``Federation``).

    A buffer that cannot be fused (a ``FusionError``, or a fused model that is not finite)
    is dropped: the version does not advance and the record's ``not_fused`` says why.
    """

    def __init__(
        self,
        pool: PartyPool,
        initial_weights: Weights,
        task_seconds: Mapping[str, float],
        *,
        fusion: str | FusionTransform = "fedavg",
        config: TrainConfig | None = None,
        buffer_size: int = 10,
        concurrency: int | None = None,
        staleness_exponent: float = 0.5,
        seed: int = 0,
        central_eval: Evaluator | None = None,
        max_update_norm: float | None = None,
        max_update_ratio: float | None = DEFAULT_MAX_UPDATE_RATIO,
    ) -> None:
        self.pool = pool
        self.fusion = get_fusion(fusion) if isinstance(fusion, str) else fusion
        self._fusion_name = fusion if isinstance(fusion, str) else None
        self.config = config or TrainConfig()
        self.task_seconds = dict(task_seconds)
        self.buffer_size = buffer_size
        self.party_ids = pool.party_ids()
        self.concurrency = len(self.party_ids) if concurrency is None else concurrency
        self.staleness_exponent = staleness_exponent
        self.seed = seed
        self.central_eval = central_eval
        self.max_update_norm = max_update_norm
        self.max_update_ratio = max_update_ratio
        self._validate()
        self.weights = initial_weights
        self.fusion_state = self.fusion.init(initial_weights)
        self.version = 0
        self.clock = 0.0
        self.history: list[dict[str, Any]] = []
        self._codec = get_codec(self.config.compression, topk_fraction=self.config.topk_fraction)
        self._rng = np.random.default_rng([seed, 0xFEDB0FF])
        self._in_flight: list[tuple[float, int, str, int, Reply]] = []
        self._tasks_started = 0
        self._idle = list(self.party_ids)
        self._new_buffer()

    def _new_buffer(self) -> None:
        self._buffer: list[Update] = []
        self._staleness: list[int] = []
        self._step = RoundResult(self.version + 1, self.weights, self.fusion_state, {})
        self._metrics = WeightedMetrics()

    def _validate(self) -> None:
        self.config.validate()
        resolve_optimizer(self.config.optimizer)
        missing = sorted(set(self.party_ids) - set(self.task_seconds))
        if missing:
            raise ValueError(f"task_seconds has no time for parties {missing[:5]}")
        if any(not s > 0 for s in self.task_seconds.values()):
            raise ValueError("task_seconds must all be > 0")
        if not isinstance(self.buffer_size, int) or self.buffer_size < 1:
            raise ValueError(f"buffer_size must be an integer >= 1, got {self.buffer_size!r}")
        if not isinstance(self.concurrency, int) or not 1 <= self.concurrency <= len(
            self.party_ids
        ):
            raise ValueError(
                f"concurrency must be an integer in [1, {len(self.party_ids)}], "
                f"got {self.concurrency!r}"
            )
        if not self.staleness_exponent >= 0:
            raise ValueError(f"staleness_exponent must be >= 0, got {self.staleness_exponent!r}")
        check_update_bounds(self.max_update_norm, self.max_update_ratio)
        if isinstance(self._fusion_name, str):  # a buffer it can never fuse would spin forever
            check_fusion_size(self._fusion_name, {}, self.buffer_size)

    def staleness_weight(self, staleness: int) -> float:
        """``(1 + staleness) ** -staleness_exponent``."""
        return float((1 + staleness) ** -self.staleness_exponent)

    def _start(self, party_id: str) -> None:
        """Hand ``party_id`` a train task on the current model; its reply lands later."""
        self._tasks_started += 1
        config = self.config.with_seed(derive_seed(self.seed, self._tasks_started, party_id))
        task = TrainTask(self.version + 1, self.weights, config)
        _, reply = next(iter(self.pool.dispatch({party_id: task})))
        finish = self.clock + self.task_seconds[party_id]
        heapq.heappush(
            self._in_flight, (finish, self._tasks_started, party_id, self.version, reply)
        )

    def _start_idle(self) -> None:
        while len(self._in_flight) < self.concurrency and self._idle:
            party_id = self._idle.pop(int(self._rng.integers(len(self._idle))))
            self._start(party_id)

    def run(
        self,
        versions: int,
        on_fuse: Callable[[dict[str, Any]], None] | None = None,
        *,
        until: float | None = None,
    ) -> list[dict[str, Any]]:
        """Run until the global model reaches version ``versions`` (that many fusions), or
        until the next arrival would come after simulated time ``until``."""
        if not isinstance(versions, int) or versions < 1:
            raise ValueError(f"versions must be an integer >= 1, got {versions!r}")
        self._start_idle()
        while self.version < versions:
            if not self._in_flight:
                raise RuntimeError("no party is training; nothing can arrive")
            if until is not None and self._in_flight[0][0] > until:
                break
            self.clock, _, party_id, started, reply = heapq.heappop(self._in_flight)
            self._receive(party_id, started, reply)
            if len(self._buffer) >= self.buffer_size:
                record = self._fuse()
                if on_fuse is not None:
                    on_fuse(record)
            self._idle.append(party_id)
            self._start_idle()
        return self.history

    def _receive(self, party_id: str, started: int, reply: Reply) -> None:
        update = screen_reply(
            party_id,
            reply,
            self.weights,
            self._codec,
            self._step,
            self._metrics,
            max_update_norm=self.max_update_norm,
            max_update_ratio=self.max_update_ratio,
        )
        if update is None:
            return
        staleness = self.version - started
        weight = self.staleness_weight(staleness)
        self._staleness.append(staleness)
        self._buffer.append(
            Update(
                scale(update.weights, weight) if weight != 1.0 else update.weights,
                update.num_examples,
                update.metrics,
                update.is_delta,
                party_id,
            )
        )

    def _fuse(self) -> dict[str, Any]:
        fused = fuse_safely(self.fusion, iter(self._buffer), self.fusion_state, self.weights)
        not_fused = fused if isinstance(fused, str) else ""
        if not not_fused:
            self.weights, self.fusion_state = fused
            self.version += 1
        step = self._step
        record: dict[str, Any] = {
            "version": self.version,
            "fused": not not_fused,
            "not_fused": not_fused,
            "time": self.clock,
            "participants": step.participants,
            "staleness": self._staleness,
            "rejected": step.rejected,
            "failed": step.failed,
            "skipped": step.skipped,
            "train": self._metrics.result(),
            "bytes_up": step.bytes_up,
            "bytes_dense": step.bytes_dense,
        }
        if self.central_eval is not None:
            record["central"] = self.central_eval(self.weights)
        self.history.append(record)
        self._new_buffer()
        return record
