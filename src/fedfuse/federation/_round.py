"""One round, written once for every transport: dispatch, gather, validate, fuse."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedfuse.federation._metrics import WeightedMetrics
from fedfuse.federation._sampling import derive_seed
from fedfuse.federation._validate import (
    DEFAULT_MAX_UPDATE_RATIO,
    check_metrics,
    check_num_examples,
    validate_update,
)
from fedfuse.fusion import FusionError, FusionTransform, Update, apply_update, fuse, with_info
from fedfuse.models import TrainConfig
from fedfuse.party import (
    EvaluateTask,
    Evaluation,
    Malformed,
    Reply,
    Skipped,
    TaskError,
    TrainTask,
)
from fedfuse.runtime import PartyPool
from fedfuse.weights import Codec, CodecError, Weights, get_codec, global_norm, num_bytes

__all__ = [
    "RefusedUpdate",
    "RoundResult",
    "Stopwatch",
    "add_training_time",
    "evaluate_parties",
    "fold_replies",
    "fuse_safely",
    "pool_train_seconds",
    "screen_reply",
    "train_round",
]


@dataclass
class RoundResult:
    """What one training round produced.

    ``seconds`` is the round's wall time, split three ways: ``train_seconds``, the wall-clock
    share of the parties' training (their summed time over the pool's ``parallelism``);
    ``fusion_seconds``, the loop's own work (building tasks, screening, decoding, validating
    and fusing updates); and ``transport_seconds``, the rest (serialization, the network,
    waiting). Each is >= 0 and they add up to ``seconds``.
    """

    round: int
    weights: Weights
    fusion_state: Any
    train_metrics: dict[str, float]
    participants: list[str] = field(default_factory=list)
    rejected: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    fused: bool = False
    not_fused: str = ""
    seconds: float = 0.0
    skipped: list[str] = field(default_factory=list)
    bytes_up: int = 0
    bytes_dense: int = 0
    bytes_down: int = 0  # the global weights sent out with training tasks (dense arrays)
    staleness: list[int] = field(default_factory=list)
    secure: dict[str, Any] = field(default_factory=dict)
    train_seconds: float = 0.0
    transport_seconds: float = 0.0
    fusion_seconds: float = 0.0


class Stopwatch:
    """The seconds a loop spends blocked on the iterators it ``wrap``s (``waited``).

    With a pool that trains lazily (``LocalPool``), waiting for the next reply is the party's
    training and transport; everything else the loop does in that time is its own work.
    """

    def __init__(self) -> None:
        self.waited = 0.0

    def wrap(self, items: Iterable[Any]) -> Iterator[Any]:
        """Yield what ``items`` yields, adding the time each ``next`` took to ``waited``."""
        clock = time.perf_counter
        iterator = iter(items)
        while True:
            begin = clock()
            try:
                item = next(iterator)
            except StopIteration:
                self.waited += clock() - begin
                return
            self.waited += clock() - begin
            yield item

    def split(self, result: RoundResult, seconds: float) -> None:
        """Set ``result``'s wall time to ``seconds``: the part not spent waiting is the
        loop's own work (``fusion_seconds``), the waiting is transport until
        ``add_training_time`` moves the training out of it."""
        result.seconds = seconds
        result.fusion_seconds = max(0.0, seconds - self.waited)
        result.transport_seconds = seconds - result.fusion_seconds
        result.train_seconds = 0.0


@dataclass(frozen=True)
class RefusedUpdate:
    """An update a transport refused while it arrived, for the ``reason`` that
    ``validate_update`` gives it (e.g. a NaN in a parameter, seen before the rest of the body
    was read). ``nbytes``: its arrays' bytes, counted in ``bytes_up`` as a received update's."""

    reason: str
    nbytes: int


def pool_train_seconds(pool: object) -> float:
    """The pool's running total of seconds its parties spent training (``train_seconds``),
    0 for a pool that does not count them."""
    return float(getattr(pool, "train_seconds", 0.0) or 0.0)


def add_training_time(result: RoundResult, pool: object, train_before: float) -> None:
    """Move the parties' training out of ``result.transport_seconds`` into
    ``train_seconds``: the growth of ``pool.train_seconds`` since ``train_before``, over
    ``pool.parallelism`` parties at once (1 if the pool does not say). Training that ran
    while the loop did its own work (a parallel pool) cannot be told apart from it and stays
    counted there, so the three parts still add up to the wall time."""
    parallelism = getattr(pool, "parallelism", 1) or 1
    trained = max(0.0, pool_train_seconds(pool) - train_before) / max(int(parallelism), 1)
    result.train_seconds = min(trained, result.transport_seconds)
    result.transport_seconds -= result.train_seconds


def train_round(
    round_num: int,
    weights: Weights,
    fusion: FusionTransform,
    fusion_state: Any,
    pool: PartyPool,
    party_ids: Sequence[str],
    config: TrainConfig,
    *,
    seed: int = 0,
    quorum: int = 1,
    timeout: float | None = None,
    max_update_norm: float | None = None,
    max_update_ratio: float | None = DEFAULT_MAX_UPDATE_RATIO,
) -> RoundResult:
    """Run one synchronous round ``round_num`` from global ``weights`` with ``party_ids``.

    The parties' tasks go out through ``pool.dispatch`` and what comes back is folded by
    ``fold_replies`` (see there for validation, quorum and the reasons a round is not fused).
    """
    start, train_before = time.perf_counter(), pool_train_seconds(pool)
    tasks = {
        pid: TrainTask(round_num, weights, config.with_seed(derive_seed(seed, round_num, pid)))
        for pid in party_ids
    }
    replies = ((pid, reply, 0) for pid, reply in pool.dispatch(tasks, timeout=timeout))
    sent = len(tasks) * num_bytes(weights)
    result = fold_replies(
        RoundResult(round_num, weights, fusion_state, {}, bytes_down=sent),
        replies,
        fusion,
        get_codec(config.compression, topk_fraction=config.topk_fraction),
        quorum=quorum,
        max_update_norm=max_update_norm,
        max_update_ratio=max_update_ratio,
        start=start,
    )
    add_training_time(result, pool, train_before)
    return result


def fold_replies(
    result: RoundResult,
    replies: Iterable[tuple[str, Reply, int]],
    fusion: FusionTransform,
    codec: Codec,
    *,
    quorum: int = 1,
    max_update_norm: float | None = None,
    max_update_ratio: float | None = DEFAULT_MAX_UPDATE_RATIO,
    expect_delta: bool | None = True,
    start: float | None = None,
) -> RoundResult:
    """Screen ``(party_id, reply, staleness)`` arrivals into ``result`` and fuse the accepted.

    Every update is decoded (``codec``) and validated against ``result.weights``
    (``screen_reply``); rejected updates, failed parties and parties that skipped sending are
    recorded and left out. An accepted update carries its ``staleness`` in ``info`` for the
    transforms. Replies are folded as they arrive (memory O(model) for a mean). The global
    weights and the fusion state stay as they were (``fused`` False, ``not_fused`` says why)
    when fewer than ``quorum`` updates are accepted (none at all when every party skipped),
    when the fusion cannot fuse what arrived (a ``FusionError``) or when the fused model is not
    finite. No reply ends the round with an exception.

    ``result.seconds`` is the wall time from ``start`` (a ``time.perf_counter()`` value; by
    default the call) to the end; the time spent waiting for ``replies`` is set apart from
    the loop's own work (see ``RoundResult`` and ``add_training_time``).
    """
    start = time.perf_counter() if start is None else start
    weights, fusion_state = result.weights, result.fusion_state
    metrics = WeightedMetrics()
    stopwatch = Stopwatch()
    reference_norm = global_norm(weights) if max_update_ratio else None

    def accepted() -> Iterator[Update]:
        for pid, reply, staleness in stopwatch.wrap(replies):
            update = screen_reply(
                pid,
                reply,
                weights,
                codec,
                result,
                metrics,
                max_update_norm=max_update_norm,
                max_update_ratio=max_update_ratio,
                expect_delta=expect_delta,
                reference_norm=reference_norm,
            )
            if update is not None:
                result.staleness.append(staleness)
                yield with_info(update, staleness=staleness) if staleness else update

    updates = accepted()
    first = next(updates, None)
    if first is None:
        result.not_fused = result.not_fused or "no update was accepted"
    else:
        head = _prepend(first, updates)
        del first  # the reducer lets each update go once folded; this frame must too
        fused = fuse_safely(fusion, head, fusion_state, weights)
        for _ in updates:  # a fusion that raised early leaves replies to gather and record
            pass
        if isinstance(fused, str):
            result.not_fused = fused
        elif result.not_fused:  # the arrivals ended the step short (buffered: its deadline)
            pass
        elif len(result.participants) < quorum:
            result.not_fused = (
                f"{len(result.participants)} accepted updates, fewer than the quorum {quorum}"
            )
        else:
            new_weights, new_state = fused
            result.weights, result.fusion_state, result.fused = new_weights, new_state, True
    result.train_metrics = metrics.result()
    stopwatch.split(result, time.perf_counter() - start)
    return result


def fuse_safely(
    fusion: FusionTransform, updates: Iterator[Update], state: Any, weights: Weights
) -> tuple[Weights, Any] | str:
    """Fuse ``updates`` into new global weights and state, or say why they cannot be used.

    A ``FusionError`` (too few updates for the rule, deltas mixed with full weights) and a
    fused model that is not finite are both "not fused this round": the caller keeps the old
    model and records the reason, and the federation goes on.
    """
    try:
        with np.errstate(over="ignore", invalid="ignore"):  # judged by the finite check below
            fused, new_state = fuse(fusion, updates, state, weights)
            new_weights = apply_update(weights, fused)
    except FusionError as exc:
        return f"fusion failed: {exc}"
    for name, arr in new_weights.items():
        if not np.isfinite(arr).all():
            return f"the fused model is not finite (parameter {name!r}); it was not installed"
    return new_weights, new_state


def screen_reply(
    party_id: str,
    reply: Reply,
    reference: Weights,
    codec: Codec,
    result: RoundResult,
    metrics: WeightedMetrics,
    *,
    max_update_norm: float | None = None,
    max_update_ratio: float | None = DEFAULT_MAX_UPDATE_RATIO,
    expect_delta: bool | None = True,
    reference_norm: float | None = None,
) -> Update | None:
    """Sort one party's reply into ``result`` (failed, skipped, rejected or a participant).

    A delta is decoded with ``codec`` before it is validated against ``reference`` (see
    ``validate_update`` for ``max_update_norm``, ``max_update_ratio`` and ``expect_delta``,
    what the task asked for; ``reference_norm``, ``||reference||`` if the caller has it). A
    reply the wire could not read (``Malformed``) or a transport refused while it arrived
    (``RefusedUpdate``, its bytes counted) is rejected with its reason, like a Skipped
    reply with a bad count or metrics. Counts the bytes of update arrays received
    (``bytes_up``) and what every party that trained would have sent as dense, uncompressed
    deltas (``bytes_dense``). Returns the decoded update if it is accepted, else ``None``.
    """
    if isinstance(reply, TaskError):
        result.failed[party_id] = reply.message
        return None
    if isinstance(reply, Malformed):
        result.rejected[party_id] = reply.reason
        return None
    if isinstance(reply, RefusedUpdate):
        result.bytes_up += reply.nbytes
        result.bytes_dense += num_bytes(reference)
        result.rejected[party_id] = reply.reason
        return None
    if isinstance(reply, Skipped):
        reason = check_num_examples(reply.num_examples) or check_metrics(reply.metrics)
        if reason is not None:
            result.rejected[party_id] = reason
            return None
        metrics.add(reply.metrics, reply.num_examples)
        result.skipped.append(party_id)
        result.bytes_dense += num_bytes(reference)
        return None
    if not isinstance(reply, Update):
        result.failed[party_id] = f"expected an update, got {type(reply).__name__}"
        return None
    if not isinstance(reply.weights, Mapping) or not all(
        isinstance(arr, np.ndarray) for arr in reply.weights.values()
    ):
        result.rejected[party_id] = "the update's weights are not named arrays"
        return None
    result.bytes_up += num_bytes(reply.weights)
    result.bytes_dense += num_bytes(reference)
    if reply.is_delta and codec.name != "none":
        try:
            reply = dataclasses.replace(reply, weights=codec.decode(reply.weights, reference))
        except CodecError as exc:
            result.rejected[party_id] = f"cannot decode the {codec.name} update: {exc}"
            return None
    reason = validate_update(
        reply,
        reference,
        max_norm=max_update_norm,
        max_ratio=max_update_ratio,
        expect_delta=expect_delta,
        reference_norm=reference_norm,
    )
    if reason is not None:
        result.rejected[party_id] = reason
        return None
    metrics.add(reply.metrics, reply.num_examples)
    result.participants.append(party_id)
    return reply


def _prepend(first: Update, rest: Iterator[Update]) -> Iterator[Update]:
    yield first
    del first  # folded: kept here it would pin a whole update for the rest of the round
    yield from rest


def evaluate_parties(
    pool: PartyPool,
    party_ids: Sequence[str],
    weights: Weights,
    *,
    round_num: int = 0,
    split: str = "test",
    timeout: float | None = None,
    failed: dict[str, str] | None = None,
) -> dict[str, float]:
    """Federated evaluation: each party evaluates ``weights`` on its own data.

    Returns metrics averaged weighted by ``num_examples``. Parties without data, and
    evaluations with a bad count or metrics that are not finite numbers, are left out; their
    reasons go into ``failed`` (party -> reason) when it is given.
    """
    task = EvaluateTask(round_num, weights, split)  # type: ignore[arg-type]
    metrics = WeightedMetrics()
    for pid, reply in pool.dispatch(dict.fromkeys(party_ids, task), timeout=timeout):
        if isinstance(reply, Evaluation):
            reason = check_num_examples(reply.num_examples) or check_metrics(reply.metrics)
            if reason is None:
                metrics.add(reply.metrics, reply.num_examples)
                continue
        else:
            reason = getattr(reply, "message", None) or getattr(reply, "reason", None)
            reason = reason or f"expected an evaluation, got {type(reply).__name__}"
        if failed is not None:
            failed[pid] = reason
    return metrics.result()
