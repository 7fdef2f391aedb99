"""One round, written once for every transport: dispatch, gather, validate, fuse."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from fedfuse.federation._metrics import WeightedMetrics
from fedfuse.federation._sampling import derive_seed
from fedfuse.federation._validate import check_num_examples, validate_update
from fedfuse.fusion import FusionTransform, Update, fuse
from fedfuse.models import TrainConfig
from fedfuse.party import EvaluateTask, Evaluation, Reply, Skipped, TaskError, TrainTask
from fedfuse.runtime import PartyPool
from fedfuse.weights import Codec, CodecError, Weights, add, get_codec, num_bytes

__all__ = ["RoundResult", "evaluate_parties", "screen_reply", "train_round"]


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
    seconds: float = 0.0
    skipped: list[str] = field(default_factory=list)
    bytes_up: int = 0
    bytes_dense: int = 0


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
) -> RoundResult:
    """Run round ``round_num`` from global ``weights`` with ``party_ids`` and fuse the result.

    Every update is decoded (``config.compression``) and validated against ``weights``;
    rejected updates, failed parties and parties that skipped sending are recorded and left
    out. If fewer than ``quorum`` updates are accepted (none at all when every party skipped:
    nothing meaningful arrived), the global weights and the fusion state stay as they were
    (``fused`` is False).
    """
    start = time.perf_counter()
    tasks = {
        pid: TrainTask(round_num, weights, config.with_seed(derive_seed(seed, round_num, pid)))
        for pid in party_ids
    }
    result = RoundResult(round_num, weights, fusion_state, {})
    metrics = WeightedMetrics()
    codec = get_codec(config.compression, topk_fraction=config.topk_fraction)

    def accepted() -> Iterator[Update]:
        for pid, reply in pool.dispatch(tasks, timeout=timeout):
            update = screen_reply(
                pid, reply, weights, codec, result, metrics, max_update_norm=max_update_norm
            )
            if update is not None:
                yield update

    updates = accepted()
    first = next(updates, None)
    if first is not None:
        fused, new_state = fuse(fusion, _prepend(first, updates), fusion_state, weights)
        if len(result.participants) >= quorum:
            result.weights = add(weights, fused.weights) if fused.is_delta else fused.weights
            result.fusion_state = new_state
            result.fused = True
    result.train_metrics = metrics.result()
    result.seconds = time.perf_counter() - start
    return result


def screen_reply(
    party_id: str,
    reply: Reply,
    reference: Weights,
    codec: Codec,
    result: RoundResult,
    metrics: WeightedMetrics,
    *,
    max_update_norm: float | None = None,
) -> Update | None:
    """Sort one party's reply into ``result`` (failed, skipped, rejected or a participant).

    A delta is decoded with ``codec`` before it is validated against ``reference``. Counts the
    bytes of update arrays received (``bytes_up``) and what every party that trained would
    have sent as dense, uncompressed deltas (``bytes_dense``). Returns the decoded update if it
    is accepted, else ``None``.
    """
    if isinstance(reply, TaskError):
        result.failed[party_id] = reply.message
        return None
    if isinstance(reply, Skipped):
        reason = check_num_examples(reply.num_examples)
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
    result.bytes_up += num_bytes(reply.weights)
    result.bytes_dense += num_bytes(reference)
    if reply.is_delta and codec.name != "none":
        try:
            reply = dataclasses.replace(reply, weights=codec.decode(reply.weights, reference))
        except CodecError as exc:
            result.rejected[party_id] = f"cannot decode the {codec.name} update: {exc}"
            return None
    reason = validate_update(reply, reference, max_norm=max_update_norm)
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
) -> dict[str, float]:
    """Federated evaluation: each party evaluates ``weights`` on its own data.

    Returns metrics averaged weighted by ``num_examples`` (parties without data are skipped).
    """
    task = EvaluateTask(round_num, weights, split)  # type: ignore[arg-type]
    metrics = WeightedMetrics()
    for _, reply in pool.dispatch(dict.fromkeys(party_ids, task), timeout=timeout):
        if isinstance(reply, Evaluation):
            metrics.add(reply.metrics, reply.num_examples)
    return metrics.result()
