"""The federation: one round loop that owns the global model and does not care where parties are.

Each step is sample → dispatch → gather → validate → fuse → evaluate → record → checkpoint. The
aggregation policy decides only where arrivals come from and when they are fused:

- ``sync``: the sampled parties get a task; the step gathers their replies until all arrived
  or the deadline passed (``pool.dispatch``).
- ``buffered`` (FedBuff): a sample of parties is always training; each arrival joins the
  buffer and its party starts again from the newest model; every ``buffer_size`` accepted
  arrivals are fused, staleness-weighted by a fusion transform (``pool.start`` and
  ``pool.next_arrival``; the simulated clock lives in ``LocalPool``, real time in the
  service's ``RemotePool``).

Everything else, validation, fusion, records and checkpoints, is the same code for both.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from fedfuse.federation._checkpoint import load_checkpoint, save_checkpoint
from fedfuse.federation._policy import Aggregation, Sampling
from fedfuse.federation._round import RoundResult, evaluate_parties, fold_replies
from fedfuse.federation._sampling import derive_seed, sample_parties, sampled_count
from fedfuse.fusion import FusionSpec, FusionTransform, chain, scale_by_staleness
from fedfuse.models import TrainConfig
from fedfuse.party import Reply, TrainTask
from fedfuse.runtime import PartyPool
from fedfuse.weights import Weights, check_compatible, get_codec

__all__ = ["Evaluator", "Federation"]

Evaluator = Callable[[Weights], dict[str, float]]


class Federation:
    """The round loop (see the module docstring).

    Args:
        pool: the transport to the parties (``LocalPool`` in simulation).
        initial_weights: the global model to start from.
        fusion: a fusion name (``"fedavg"``, any of ``fedfuse.fusion.FUSIONS``), a
            ``FusionSpec`` or a ``FusionTransform``.
        config: how parties train locally (``TrainConfig``).
        sampling: how many parties work at a time (``Sampling``; all by default).
        aggregation: synchronous or buffered, quorum, deadline and update bounds
            (``Aggregation``; synchronous by default).
        seed: makes sampling and every party's local training reproducible.
        central_eval: ``weights -> metrics`` on data the aggregator holds, run each step.
        federated_eval: also ask every party to evaluate the new model on its test split
            (in buffered mode, the parties not training at that moment).
        checkpoint_dir: where a checkpoint is written after each step; if it already holds
            one, the federation resumes from it.

    ``round`` counts steps (rounds, or buffers in buffered mode); ``history`` has one record
    per step.
    """

    def __init__(
        self,
        pool: PartyPool,
        initial_weights: Weights,
        *,
        fusion: str | FusionSpec | FusionTransform = "fedavg",
        config: TrainConfig | None = None,
        sampling: Sampling | None = None,
        aggregation: Aggregation | None = None,
        seed: int = 0,
        central_eval: Evaluator | None = None,
        federated_eval: bool = False,
        checkpoint_dir: str | os.PathLike | None = None,
    ) -> None:
        self.pool = pool
        self.config = config or TrainConfig()
        self.sampling = sampling or Sampling()
        self.aggregation = aggregation or Aggregation()
        self.seed = seed
        self.central_eval = central_eval
        self.federated_eval = federated_eval
        self.checkpoint_dir = checkpoint_dir
        spec = FusionSpec(fusion) if isinstance(fusion, str) else fusion
        self._check(spec)
        transform = spec.build() if isinstance(spec, FusionSpec) else spec
        if self.aggregation.mode == "buffered":
            transform = chain(scale_by_staleness(self.aggregation.staleness_exponent), transform)
        self.fusion = transform
        self.round = 0
        self.version = 0  # fused steps: an update's staleness counts them
        self.weights = initial_weights
        self.fusion_state = self.fusion.init(initial_weights)
        self.history: list[dict[str, Any]] = []
        self._codec = get_codec(self.config.compression, topk_fraction=self.config.topk_fraction)
        self._started: dict[str, int] = {}  # buffered: party in flight -> version it started at
        self._tasks = 0
        self._rng = np.random.default_rng([seed, 0xFEDB0FF])
        if checkpoint_dir is not None:
            self._resume(initial_weights)

    def _check(self, fusion: FusionSpec | FusionTransform) -> None:
        self.config.check("config.")
        self.sampling.check("sampling.")
        self.aggregation.check("aggregation.")
        if not isinstance(fusion, FusionSpec):
            return
        fusion.check("fusion.")
        per_step = self.aggregation.updates_per_step
        if self.pool.party_ids():  # (the service's pool fills as parties join)
            per_round = self._per_round(len(self.pool.party_ids()))  # count <= parties
            per_step = per_step or per_round
        if per_step is not None:  # a fusion that can never fuse would run empty steps forever
            fusion.check_size(per_step)

    def _per_round(self, num_parties: int) -> int:
        return sampled_count(num_parties, self.sampling.fraction, self.sampling.count)

    def _resume(self, initial_weights: Weights) -> None:
        checkpoint = load_checkpoint(self.checkpoint_dir)
        if checkpoint is None:
            return
        check_compatible(initial_weights, checkpoint.weights)
        self.round = checkpoint.round
        self.weights = checkpoint.weights
        self.fusion_state = checkpoint.fusion_state
        self.history = checkpoint.history
        self.version = sum(bool(r.get("fused")) for r in self.history)
        if self.history and "time" in self.history[-1] and hasattr(self.pool, "clock"):
            self.pool.clock = max(self.pool.clock, self.history[-1]["time"])  # time goes on
        self._tasks = sum(len(r.get("participants", ())) for r in self.history)

    def _task(self, step: int, party_id: str) -> TrainTask:
        seed = derive_seed(self.seed, step, party_id)
        if self.aggregation.mode == "buffered":  # one party trains several times per step
            self._tasks += 1
            seed = derive_seed(self.seed, self._tasks, party_id)
        return TrainTask(step, self.weights, self.config.with_seed(seed))

    # ---- one step --------------------------------------------------------------------------
    def run_round(self) -> dict[str, Any]:
        """Run the next step (a round, or one buffer); returns its history record."""
        step = self.round + 1
        result = RoundResult(step, self.weights, self.fusion_state, {})
        if self.aggregation.mode == "buffered":
            sampled = None
            arrivals = self._buffered(result)
        else:
            sampled = sample_parties(
                self.pool.party_ids(),
                step,
                fraction=self.sampling.fraction,
                count=self.sampling.count,
                seed=self.seed,
            )
            tasks = {pid: self._task(step, pid) for pid in sampled}
            arrivals = (
                (pid, reply, 0)
                for pid, reply in self.pool.dispatch(tasks, timeout=self.aggregation.deadline)
            )
        fold_replies(
            result,
            arrivals,
            self.fusion,
            self._codec,
            quorum=self.aggregation.quorum,
            max_update_norm=self.aggregation.max_update_norm,
            max_update_ratio=self.aggregation.max_update_ratio,
        )
        self.round = step
        if result.fused:
            self.version += 1
        self.weights = result.weights
        self.fusion_state = result.fusion_state
        record = self._record(result, sampled)
        self.history.append(record)
        if self.checkpoint_dir is not None:
            save_checkpoint(
                self.checkpoint_dir, self.round, self.weights, self.fusion_state, self.history
            )
        return record

    def _buffered(self, result: RoundResult) -> Iterator[tuple[str, Reply, int]]:
        """Arrivals for one buffer: keep the sampled number of parties training, yield each
        arrival with its staleness, until ``buffer_size`` updates were accepted."""
        buffer_size, deadline = self.aggregation.buffer_size, self.aggregation.deadline
        clock = self._clock()
        start = clock()
        self._keep_training(result.round)
        while len(result.participants) < buffer_size:
            if not self._started:
                result.not_fused = "no party is training; nothing can arrive"
                return
            left = None if deadline is None else max(0.0, deadline - (clock() - start))
            arrival = self.pool.next_arrival(timeout=left)
            if arrival is None:
                result.not_fused = (
                    f"{len(result.participants)} of {buffer_size} updates arrived within the "
                    f"deadline of {deadline} s"
                )
                return
            pid, reply = arrival
            started = self._started.pop(pid, None)
            if started is None:  # a task this loop no longer waits for (e.g. before a resume)
                continue
            yield pid, reply, self.version - started
            if len(result.participants) < buffer_size:
                self._keep_training(result.round)

    def _clock(self) -> Callable[[], float]:
        """The pool's clock: simulated time in ``LocalPool``, else real time."""
        if hasattr(self.pool, "clock"):
            return lambda: self.pool.clock  # type: ignore[attr-defined]
        return time.monotonic

    def _keep_training(self, step: int) -> None:
        live = self.pool.party_ids()
        for pid in [p for p in self._started if p not in live]:  # gone: its task is lost
            del self._started[pid]
            self.pool.cancel(pid)
        if not live:
            return
        idle = [p for p in live if p not in self._started]
        while idle and len(self._started) < self._per_round(len(live)):
            pid = idle.pop(int(self._rng.integers(len(idle))))
            self._started[pid] = self.version
            self.pool.start(pid, self._task(step, pid))

    def _record(self, result: RoundResult, sampled: list[str] | None) -> dict[str, Any]:
        record: dict[str, Any] = {
            "round": result.round,
            "sampled": sampled if sampled is not None else list(result.participants),
            "participants": result.participants,
            "rejected": result.rejected,
            "failed": result.failed,
            "fused": result.fused,
            "not_fused": result.not_fused,
            "train": result.train_metrics,
            "seconds": result.seconds,
            "skipped": result.skipped,
            "bytes_up": result.bytes_up,
            "bytes_dense": result.bytes_dense,
        }
        if self.aggregation.mode == "buffered":
            record["staleness"] = result.staleness
        clock = getattr(self.pool, "clock", None)
        if clock is not None:
            record["time"] = clock
        if self.central_eval is not None:
            record["central"] = self.central_eval(self.weights)
        if self.federated_eval:
            not_evaluated: dict[str, str] = {}
            # a party still training (buffered) keeps its task: only idle parties evaluate
            idle = [p for p in self.pool.party_ids() if p not in self._started]
            record["federated"] = evaluate_parties(
                self.pool,
                idle,
                self.weights,
                round_num=result.round,
                timeout=self.aggregation.deadline,
                failed=not_evaluated,
            )
            if not_evaluated:  # e.g. a party without a test split: say so, do not hide it
                record["not_evaluated"] = not_evaluated
        return record

    def run(
        self,
        rounds: int,
        on_round: Callable[[dict[str, Any]], None] | None = None,
        *,
        until: float | None = None,
    ) -> list[dict[str, Any]]:
        """Run until step ``rounds`` is complete (a resumed federation continues where it was),
        or, with ``until``, until the pool's clock (simulated seconds in ``LocalPool``) has
        reached ``until``: a time budget, to compare policies at equal time."""
        if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
            raise ValueError(f"rounds must be an integer >= 1, got {rounds!r}")
        clock = self._clock()
        while self.round < rounds and (until is None or clock() < until):
            record = self.run_round()
            if on_round is not None:
                on_round(record)
        return self.history
