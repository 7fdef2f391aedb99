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
from fedfuse.weights import Codec, CodecError, Weights, get_codec, num_bytes

__all__ = [
    "RoundResult",
    "evaluate_parties",
    "fold_replies",
    "fuse_safely",
    "screen_reply",
    "train_round",
]


@dataclass
class RoundResult:
    """What one training round produced."""

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
    staleness: list[int] = field(default_factory=list)
    secure: dict[str, Any] = field(default_factory=dict)


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
    tasks = {
        pid: TrainTask(round_num, weights, config.with_seed(derive_seed(seed, round_num, pid)))
        for pid in party_ids
    }
    replies = ((pid, reply, 0) for pid, reply in pool.dispatch(tasks, timeout=timeout))
    return fold_replies(
        RoundResult(round_num, weights, fusion_state, {}),
        replies,
        fusion,
        get_codec(config.compression, topk_fraction=config.topk_fraction),
        quorum=quorum,
        max_update_norm=max_update_norm,
        max_update_ratio=max_update_ratio,
    )


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
    """
    start = time.perf_counter()
    weights, fusion_state = result.weights, result.fusion_state
    metrics = WeightedMetrics()

    def accepted() -> Iterator[Update]:
        for pid, reply, staleness in replies:
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
            )
            if update is not None:
                result.staleness.append(staleness)
                yield with_info(update, staleness=staleness) if staleness else update

    updates = accepted()
    first = next(updates, None)
    if first is None:
        result.not_fused = result.not_fused or "no update was accepted"
    else:
        fused = fuse_safely(fusion, _prepend(first, updates), fusion_state, weights)
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
    result.seconds = time.perf_counter() - start
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
) -> Update | None:
    """Sort one party's reply into ``result`` (failed, skipped, rejected or a participant).

    A delta is decoded with ``codec`` before it is validated against ``reference`` (see
    ``validate_update`` for ``max_update_norm``, ``max_update_ratio`` and ``expect_delta``,
    what the task asked for). A reply the wire could not read (``Malformed``) is rejected with
    its reason, like a Skipped reply with a bad count or metrics. Counts the bytes of update
    arrays received (``bytes_up``) and what every party that trained would have sent as dense,
    uncompressed deltas (``bytes_dense``). Returns the decoded update if it is accepted, else
    ``None``.
    """
    if isinstance(reply, TaskError):
        result.failed[party_id] = reply.message
        return None
    if isinstance(reply, Malformed):
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
    )
    if reason is not None:
        result.rejected[party_id] = reason
        return None
    metrics.add(reply.metrics, reply.num_examples)
    result.participants.append(party_id)
    return reply


def _prepend(first: Update, rest: Iterator[Update]) -> Iterator[Update]:
    yield first
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
