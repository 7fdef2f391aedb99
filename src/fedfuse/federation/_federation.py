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

Federated evaluation (``federated_eval``) asks the parties for the metrics of each new global
model, by default with a second broadcast after the round (every idle party gets an
``EvaluateTask``). With ``piggyback_eval`` the next round's training tasks, which carry that
model anyway, ask for it instead (``TrainTask.evaluate``): no second copy of the model goes
out and no extra round trip is waited for. Round ``r``'s record then gets its ``federated``
metrics late, once round ``r + 1``'s replies are in, with ``federated_with_round: r + 1``; the
parties that evaluate are round ``r + 1``'s sample (every party when all are sampled: then
the metrics equal the broadcast's). Round ``r + 1``'s ``seconds`` include the parties'
evaluation, done before they train. The last round's model, with no next task, is evaluated
by a broadcast (``evaluate_pending``, which ``run`` calls at its end). Buffered mode and secure
aggregation keep the broadcast (a buffered party's next task starts at another time; a
secure round's tasks are its protocol's stages).

Privacy (``Privacy``, ``SecureAggregation``) changes what is fused, not the loop: differential
privacy replaces the fusion's mean with a clipped, noised sum and a ``PrivacyAccountant``
records each step (epsilon, delta and sigma go into the record; a step that would exceed
``max_epsilon`` is not run); secure aggregation runs a synchronous round as the stages of
SecAgg+ (``secure_round``), so the aggregator sees only the sum.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

from fedfuse.federation._accountant import PrivacyAccountant
from fedfuse.federation._checkpoint import load_checkpoint, save_checkpoint
from fedfuse.federation._evaluation import CarriedEvaluations, broadcast, fold_evaluations
from fedfuse.federation._policy import Aggregation, Sampling
from fedfuse.federation._privacy import (
    Privacy,
    SecureAggregation,
    central_noise,
    expected_per_round,
    privacy_problem,
    private_fusion,
    server_optimizer,
)
from fedfuse.federation._round import (
    RoundResult,
    Stopwatch,
    add_training_time,
    fold_replies,
    pool_train_seconds,
)
from fedfuse.federation._sampling import derive_seed, sample_parties, sampled_count
from fedfuse.federation._secure_round import secure_round
from fedfuse.fusion import (
    FusionSpec,
    FusionTransform,
    chain,
    scale_by_staleness,
    staleness_weight,
)
from fedfuse.models import TrainConfig
from fedfuse.party import (
    Reply,
    SecureEncoding,
    SecureReply,
    Skipped,
    Task,
    TaskError,
    TrainTask,
)
from fedfuse.runtime import PartyPool
from fedfuse.weights import Weights, check_compatible, get_codec, num_bytes

__all__ = ["Evaluator", "Federation", "PrivacyBudgetExceeded"]

Evaluator = Callable[[Weights], dict[str, float]]


class PrivacyBudgetExceeded(RuntimeError):
    """The next step would take epsilon past ``Privacy.max_epsilon``; it was not run."""


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
        piggyback_eval: with ``federated_eval``, carry the evaluation of each model with the
            next round's training tasks instead of a second broadcast (see the module
            docstring; synchronous rounds without secure aggregation only).
        checkpoint_dir: where a checkpoint is written after each step; if it already holds
            one, the federation resumes from it.
        privacy: differential privacy (``Privacy``; off by default).
        secure: secure aggregation (``SecureAggregation``; off by default).
        population: how many parties the federation has, for the privacy accountant and the
            expected number per round (default: the pool's parties now).

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
        piggyback_eval: bool = False,
        checkpoint_dir: str | os.PathLike | None = None,
        privacy: Privacy | None = None,
        secure: SecureAggregation | None = None,
        population: int | None = None,
    ) -> None:
        self.pool = pool
        self.config = config or TrainConfig()
        self.sampling = sampling or Sampling()
        self.aggregation = aggregation or Aggregation()
        self.privacy = privacy or Privacy()
        self.secure = secure or SecureAggregation()
        self.seed = seed
        self.central_eval = central_eval
        self.federated_eval = federated_eval
        self.piggyback_eval = piggyback_eval
        self.checkpoint_dir = checkpoint_dir
        self.population = population or len(pool.party_ids())
        spec = FusionSpec(fusion) if isinstance(fusion, str) else fusion
        self._fusion_name = spec.name if isinstance(spec, FusionSpec) else None
        self._check(spec)
        self.fusion = self._build_fusion(spec)
        self.accountant: PrivacyAccountant | None = None
        if self.privacy.enabled:
            self.accountant = PrivacyAccountant(
                self.privacy.accountant,
                "none" if self.aggregation.mode == "buffered" else self.sampling.method,
                max(self.population, 1),
                self.privacy.delta,
            )
        self.stop_reason = ""
        self.round = 0
        self.version = 0  # fused steps: an update's staleness counts them
        self.weights = initial_weights
        self.fusion_state = self.fusion.init(initial_weights)
        self.history: list[dict[str, Any]] = []
        self._codec = get_codec(self.config.compression, topk_fraction=self.config.topk_fraction)
        self._started: dict[str, int] = {}  # buffered: party in flight -> version it started at
        self._holding: dict[str, int] = {}  # buffered secagg: parties holding an update
        self._tasks = 0
        self._rng = np.random.default_rng([seed, 0xFEDB0FF])
        self._pending: int | None = None  # the round whose model's evaluation is still to come
        if checkpoint_dir is not None:
            self._resume(initial_weights)

    def _check(self, fusion: FusionSpec | FusionTransform) -> None:
        self.config.check("config.")
        self.sampling.check("sampling.")
        self.aggregation.check("aggregation.")
        self.privacy.check("privacy.")
        self.secure.check("secure.")
        problem = privacy_problem(
            fusion,
            self.privacy,
            self.secure,
            self.sampling,
            self.aggregation,
            self.config.compression,
        )
        if problem is not None:
            raise ValueError(problem)
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

    @property
    def expected_count(self) -> float:
        """Updates one step is expected to fuse: DP's fixed denominator."""
        if self.aggregation.mode == "buffered":
            return float(self.aggregation.buffer_size)
        return expected_per_round(
            max(self.population, 1), self.sampling.fraction, self.sampling.count
        )

    def _build_fusion(self, spec: FusionSpec | FusionTransform) -> FusionTransform:
        """The chain the loop folds updates with; under secure aggregation, what follows the
        mean (the loop sums securely)."""
        if self.secure.secagg:
            assert isinstance(spec, FusionSpec)  # (checked)
            parts = [central_noise(self.privacy, self.expected_count), server_optimizer(spec)]
            return chain(*[p for p in parts if p is not None])
        if self.privacy.enabled:
            assert isinstance(spec, FusionSpec)
            transform = private_fusion(spec, self.privacy, self.expected_count)
        else:
            transform = spec.build() if isinstance(spec, FusionSpec) else spec
        if self.aggregation.mode == "buffered":
            transform = chain(scale_by_staleness(self.aggregation.staleness_exponent), transform)
        return transform

    def _encoding(self, num_parties: int) -> SecureEncoding:
        """How the parties of a secure round of ``num_parties`` encode their update."""
        privacy, secure = self.privacy, self.secure
        weighting = "examples"
        if privacy.enabled or self._fusion_name == "iter_avg":
            weighting = "uniform"
        noise = 0.0
        if privacy.enabled and privacy.noise == "distributed":
            # enough that the parties expected to survive dropout_rate carry z C together
            survivors = max(1, math.floor(self.expected_count * (1 - secure.dropout_rate)))
            noise = float(privacy.noise_multiplier) * privacy.l2_norm_clip / math.sqrt(survivors)
        return SecureEncoding(
            weighting=weighting,
            weight_cap=secure.weight_cap,
            clip_norm=privacy.l2_norm_clip if privacy.enabled else None,
            noise_stddev=noise,
            clip_range=secure.clip_range,
            max_summands=max(1, num_parties),
        )

    def _resume(self, initial_weights: Weights) -> None:
        checkpoint = load_checkpoint(self.checkpoint_dir)
        if checkpoint is None:
            return
        check_compatible(initial_weights, checkpoint.weights)
        self.round = checkpoint.round
        self.weights = checkpoint.weights
        self.fusion_state = checkpoint.fusion_state
        self.history = checkpoint.history
        if self.accountant is not None and "accountant" in checkpoint.meta:
            self.accountant = PrivacyAccountant.from_state(checkpoint.meta["accountant"])
        self.version = sum(bool(r.get("fused")) for r in self.history)
        if self.history and "time" in self.history[-1] and hasattr(self.pool, "clock"):
            self.pool.clock = max(self.pool.clock, self.history[-1]["time"])  # time goes on
        self._tasks = sum(len(r.get("participants", ())) for r in self.history)
        if self.federated_eval and self.history and "federated" not in self.history[-1]:
            self._pending = self.round  # (checkpointed before the next round carried it)

    def _task(self, step: int, party_id: str, *, evaluate: bool = False) -> TrainTask:
        seed = derive_seed(self.seed, step, party_id)
        if self.aggregation.mode == "buffered":  # one party trains several times per step
            self._tasks += 1
            seed = derive_seed(self.seed, self._tasks, party_id)
        hold = self.secure.secagg and self.aggregation.mode == "buffered"
        return TrainTask(
            step,
            self.weights,
            self.config.with_seed(seed),
            hold=hold,
            evaluate="test" if evaluate else None,
        )

    @property
    def piggybacks(self) -> bool:
        """Whether federated evaluation travels with the next round's training tasks."""
        return (
            self.federated_eval
            and self.piggyback_eval
            and self.aggregation.mode == "sync"
            and not self.secure.secagg
        )

    # ---- one step --------------------------------------------------------------------------
    def run_round(self) -> dict[str, Any]:
        """Run the next step (a round, or one buffer); returns its history record.

        Raises ``PrivacyBudgetExceeded`` instead of running a step that would take epsilon
        past ``privacy.max_epsilon`` (``stop_reason`` says so).

        With ``piggybacks``, the record has no ``federated`` metrics yet: the next round's
        tasks bring them into it (and into ``history[-2]`` seen from there), or
        ``evaluate_pending`` does after the last round."""
        step = self.round + 1
        self._check_budget()
        result = RoundResult(step, self.weights, self.fusion_state, {})
        sampled = None
        if self.aggregation.mode == "buffered":
            arrivals = self._buffered(result)
        else:
            sampled = sample_parties(
                self.pool.party_ids(),
                step,
                fraction=self.sampling.fraction,
                count=self.sampling.count,
                seed=self.seed,
                poisson=self.sampling.poisson,
            )
        carried = None
        if self._pending is not None and self.piggybacks and sampled:
            carried = CarriedEvaluations(self._pending)
        elif self._pending is not None:  # no task goes out that could carry it
            self.evaluate_pending()
        start, train_before = time.perf_counter(), pool_train_seconds(self.pool)
        if self.secure.secagg:
            stopwatch = Stopwatch()
            if sampled is None:
                self._secure_buffer(result, arrivals, stopwatch)
            else:
                self._secure_round(result, sampled, stopwatch)
            stopwatch.split(result, time.perf_counter() - start)
        else:
            if sampled is not None:
                tasks = {pid: self._task(step, pid, evaluate=bool(carried)) for pid in sampled}
                result.bytes_down += len(tasks) * num_bytes(self.weights)
                dispatched = self.pool.dispatch(tasks, timeout=self.aggregation.deadline)
                if carried is not None:
                    dispatched = carried.unwrap(dispatched)
                arrivals = ((pid, reply, 0) for pid, reply in dispatched)
            fold_replies(
                result,
                arrivals,
                self.fusion,
                self._codec,
                quorum=self.aggregation.quorum,
                max_update_norm=self.aggregation.max_update_norm,
                max_update_ratio=self.aggregation.max_update_ratio,
                start=start,
            )
        add_training_time(result, self.pool, train_before)
        if carried is not None:
            self._complete_carried(carried, sampled or [], step)
        self.round = step
        if result.fused:
            self.version += 1
        self.weights = result.weights
        self.fusion_state = result.fusion_state
        if self.accountant is not None:
            self._account(result, sampled)
        record = self._record(result, sampled)
        self.history.append(record)
        self._save()
        return record

    def _save(self) -> None:
        if self.checkpoint_dir is not None:
            meta = {"accountant": self.accountant.to_state()} if self.accountant else None
            save_checkpoint(
                self.checkpoint_dir,
                self.round,
                self.weights,
                self.fusion_state,
                self.history,
                meta,
            )

    # ---- federated evaluation --------------------------------------------------------------
    def _complete_carried(self, carried: CarriedEvaluations, sampled: list[str], step: int) -> None:
        """Fill the pending round's record with the evaluations round ``step``'s tasks carried
        (of ``self.weights``, still the model those tasks started from)."""
        record = self.history[-1]
        not_evaluated: dict[str, str] = {}
        record["federated"], sent = carried.finish(
            self.pool,
            sampled,
            self.weights,
            timeout=self.aggregation.deadline,
            failed=not_evaluated,
        )
        record["federated_with_round"] = step
        record["bytes_down"] += sent
        if not_evaluated:
            record["not_evaluated"] = not_evaluated
        self._pending = None

    def _broadcast_evaluation(self, record: dict[str, Any]) -> None:
        """Evaluate the current model with an ``EvaluateTask`` to every idle party, into
        ``record``: ``federated``, ``not_evaluated`` and the model's bytes in ``bytes_down``."""
        # a party still training (buffered) keeps its task: only idle parties evaluate
        idle = [p for p in self.pool.party_ids() if p not in self._started]
        replies: dict[str, Reply] = {}
        record["bytes_down"] += broadcast(
            self.pool,
            idle,
            self.weights,
            round_num=record["round"],
            timeout=self.aggregation.deadline,
            into=replies,
        )
        not_evaluated: dict[str, str] = {}
        record["federated"] = fold_evaluations(replies, not_evaluated)
        if not_evaluated:  # e.g. a party without a test split: say so, do not hide it
            record["not_evaluated"] = not_evaluated

    def evaluate_pending(self) -> dict[str, Any] | None:
        """Evaluate, by a broadcast, the model whose evaluation waits for the next round's
        tasks (with ``piggyback_eval``, the last round's); returns its record, completed, or
        ``None`` when nothing waits. ``run`` calls this when it ends; a caller that runs
        ``run_round`` itself calls it after the last round."""
        if self._pending is None:
            return None
        record = self.history[-1]
        self._broadcast_evaluation(record)
        self._pending = None
        self._save()
        return record

    def _secure_round(
        self,
        result: RoundResult,
        sampled: list[str],
        stopwatch: Stopwatch,
        held: dict[str, int] | None = None,
    ) -> None:
        """A secure round with ``sampled``; with ``held`` (buffered: party -> staleness of the
        update it holds), the parties already trained, and each scales its weight by its
        staleness weight, a public number. The time its stages wait for the parties goes
        into ``stopwatch``."""
        if not sampled:
            result.not_fused = "no party was sampled"
            return
        configs = {pid: self._task(result.round, pid).config for pid in sampled}
        exponent = self.aggregation.staleness_exponent
        secure_round(
            result,
            _WaitedPool(self.pool, stopwatch),  # type: ignore[arg-type]
            configs,
            self._encoding(len(sampled)),
            self.fusion,
            scale=None if held is None else (lambda pid: staleness_weight(held[pid], exponent)),
            use_held=held is not None,
            dropout_rate=self.secure.dropout_rate,
            corruption_rate=self.secure.corruption_rate,
            denominator=self.expected_count if self.privacy.enabled else None,
            deadline=self.aggregation.deadline,
            quorum=self.aggregation.quorum,
            max_update_norm=self.aggregation.max_update_norm,
            max_update_ratio=self.aggregation.max_update_ratio,
        )

    def _secure_buffer(
        self,
        result: RoundResult,
        arrivals: Iterator[tuple[str, Reply, int]],
        stopwatch: Stopwatch,
    ) -> None:
        """Buffered secure aggregation: parties train at their own pace and hold their update;
        once ``buffer_size`` of them hold one, they run one secure round together (and train
        again only after it)."""
        held: dict[str, int] = {}
        self._holding = held
        try:
            for pid, reply, staleness in stopwatch.wrap(arrivals):
                if isinstance(reply, SecureReply) and reply.stage == "trained":
                    held[pid] = staleness
                    result.participants.append(pid)  # counts the buffer; reset below
                elif isinstance(reply, TaskError):
                    result.failed[pid] = reply.message
                elif isinstance(reply, Skipped):
                    result.skipped.append(pid)
                else:
                    result.rejected[pid] = f"expected a held update, got {type(reply).__name__}"
            result.participants = []
            if result.not_fused:  # the buffer did not fill in time: the holders train again
                return
            self._secure_round(result, list(held), stopwatch, held)
            result.staleness = [held[p] for p in result.participants]
        finally:
            self._holding = {}

    # ---- differential privacy --------------------------------------------------------------
    def _round_event(self, sample_size: int, participants: list[str]) -> dict[str, Any]:
        """What the accountant records for a step: the noise multiplier and the sampler's
        numbers. In buffered mode a party may arrive twice in one buffer: the sensitivity is
        then that many clip norms, so the multiplier is divided by it (no amplification)."""
        z = float(self.privacy.noise_multiplier)
        event: dict[str, Any] = {"noise_multiplier": z}
        if self.aggregation.mode == "buffered":
            most = max((participants.count(p) for p in set(participants)), default=1)
            event["noise_multiplier"] = z / most
        elif self.sampling.method == "poisson":
            event["sample_rate"] = self.sampling.fraction
        elif self.sampling.method == "fixed":
            event["sample_size"] = sample_size
        if self.privacy.clipping == "adaptive":
            event["count_stddev"] = self.privacy.count_stddev(self.expected_count)
        return event

    def _check_budget(self) -> None:
        limit = self.privacy.max_epsilon
        if self.accountant is None or limit is None:
            return
        if self.privacy.noise == "tree":
            upcoming = self._tree_event(extra_round=True)
            exceeded = self.accountant.would_exceed_tree(limit, **upcoming)
        else:
            size = self._per_round(max(len(self.pool.party_ids()), 1))
            upcoming = self._round_event(size, [])
            exceeded = self.accountant.would_exceed(limit, **upcoming)
        if exceeded:
            self.stop_reason = (
                f"one more step would take epsilon past privacy.max_epsilon={limit:g} "
                f"(now {self.accountant.epsilon():.4g} at delta={self.privacy.delta:g})"
            )
            raise PrivacyBudgetExceeded(self.stop_reason)

    def _tree_event(
        self, current: list[str] | None = None, *, extra_round: bool = False
    ) -> dict[str, Any]:
        """DP-FTRL's event: the rounds so far and the most rounds any party took part in
        (with ``extra_round``, as if the next round had every party once more)."""
        counts: dict[str, int] = {}
        for participants in [*(r.get("participants", ()) for r in self.history), current or ()]:
            for pid in participants:
                counts[pid] = counts.get(pid, 0) + 1
        most = max(counts.values(), default=0) + (1 if extra_round else 0)
        return {
            "noise_multiplier": float(self.privacy.noise_multiplier),
            "rounds": self.round + (1 if extra_round else 0),
            "max_participations": max(most, 1),
        }

    def _clip_norm(self) -> float:
        """The clip the next round uses (adaptive clipping moves it each round)."""
        if self.privacy.clipping != "adaptive" or self.secure.secagg:
            return self.privacy.l2_norm_clip
        state = self.fusion_state
        if self.aggregation.mode == "buffered":  # chain(scale_by_staleness, the DP chain)
            state = state[1]
        return float(state[0]["clip_norm"])

    def _account(self, result: RoundResult, sampled: list[str] | None) -> None:
        assert self.accountant is not None
        if self.privacy.noise == "tree":
            self.accountant.record_tree(**self._tree_event(result.participants))
        else:
            self.accountant.record(**self._round_event(len(sampled or ()), result.participants))

    def _buffered(self, result: RoundResult) -> Iterator[tuple[str, Reply, int]]:
        """Arrivals for one buffer: keep the sampled number of parties training, yield each
        arrival with its staleness, until ``buffer_size`` updates were accepted."""
        buffer_size, deadline = self.aggregation.buffer_size, self.aggregation.deadline
        clock = self._clock()
        start = clock()
        result.bytes_down += self._keep_training(result.round) * num_bytes(self.weights)
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
                result.bytes_down += self._keep_training(result.round) * num_bytes(self.weights)

    def _clock(self) -> Callable[[], float]:
        """The pool's clock: simulated time in ``LocalPool``, else real time."""
        if hasattr(self.pool, "clock"):
            return lambda: self.pool.clock  # type: ignore[attr-defined]
        return time.monotonic

    def _keep_training(self, step: int) -> int:
        """Start tasks until the sampled number of parties is training; how many started."""
        live, started = self.pool.party_ids(), 0
        for pid in [p for p in self._started if p not in live]:  # gone: its task is lost
            del self._started[pid]
            self.pool.cancel(pid)
        if not live:
            return 0
        idle = [p for p in live if p not in self._started and p not in self._holding]
        while idle and len(self._started) < self._per_round(len(live)):
            pid = idle.pop(int(self._rng.integers(len(idle))))
            self._started[pid] = self.version
            self.pool.start(pid, self._task(step, pid))
            started += 1
        return started

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
            "train_seconds": result.train_seconds,
            "transport_seconds": result.transport_seconds,
            "fusion_seconds": result.fusion_seconds,
            "skipped": result.skipped,
            "bytes_up": result.bytes_up,
            "bytes_dense": result.bytes_dense,
            "bytes_down": result.bytes_down,
        }
        if self.aggregation.mode == "buffered":
            record["staleness"] = result.staleness
        if result.secure:
            record["secure"] = result.secure
        if self.accountant is not None:
            record["epsilon"] = self.accountant.epsilon()
            record["delta"] = self.privacy.delta
            record["sigma"] = float(self.privacy.noise_multiplier)
            record["clip_norm"] = self._clip_norm()
        clock = getattr(self.pool, "clock", None)
        if clock is not None:
            record["time"] = clock
        if self.central_eval is not None:
            record["central"] = self.central_eval(self.weights)
        if self.federated_eval and self.piggybacks:
            self._pending = result.round  # the next round's tasks carry its evaluation
        elif self.federated_eval:
            self._broadcast_evaluation(record)
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
        reached ``until``: a time budget, to compare policies at equal time. It stops early
        when the next step would exceed ``privacy.max_epsilon`` (``stop_reason`` says so).

        ``on_round`` is called with each step's record once it is complete: with
        ``piggyback_eval``, round ``r``'s after round ``r + 1`` brought its evaluation, and the
        last one's after the final evaluation (``evaluate_pending``)."""
        if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
            raise ValueError(f"rounds must be an integer >= 1, got {rounds!r}")
        clock = self._clock()
        told = self.round if self._pending is None else self._pending - 1

        def tell_completed() -> int:
            done = self.round if self._pending is None else self._pending - 1
            for record in self.history:
                if on_round is not None and told < record["round"] <= done:
                    on_round(record)
            return done

        while self.round < rounds and (until is None or clock() < until):
            try:
                self.run_round()
            except PrivacyBudgetExceeded:
                break  # stop_reason says why
            told = tell_completed()
        self.evaluate_pending()
        tell_completed()
        return self.history


class _WaitedPool:
    """``pool`` whose ``dispatch`` iterators count their waiting into ``stopwatch`` (so a
    secure round's stages, which dispatch on their own, split their time like a plain one)."""

    def __init__(self, pool: PartyPool, stopwatch: Stopwatch) -> None:
        self._pool, self._stopwatch = pool, stopwatch

    def dispatch(
        self, tasks: Mapping[str, Task], timeout: float | None = None
    ) -> Iterator[tuple[str, Reply]]:
        return self._stopwatch.wrap(self._pool.dispatch(tasks, timeout=timeout))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pool, name)
