"""One round under secure aggregation: the SecAgg+ stages as dispatches, then one fused sum.

Each stage of ``fedfuse.secure.SecAggServer`` (advertise, share, mask, unmask) is one
``pool.dispatch`` of ``SecureTask`` to the parties still in, so the same code runs over
``LocalPool`` in simulation and the service's ``RemotePool`` with real party processes; a
party that fails, times out or sends a message the protocol refuses has dropped out at that
stage, and the round goes on while every neighbourhood keeps its threshold. The parties train
at the first stage. The aggregator only ever holds the running sum of masked vectors, then
the unmasked total: ``sum_k w_k delta_k`` and ``sum_k w_k``, which it divides (or, under
differential privacy, divides by the expected count) into one fused delta. What follows the
mean in the fusion (central noise, a server optimizer) runs on that one update, and the fused
model must pass the same magnitude bound and finiteness check as any update: a hostile party
can spoil the sum it hides in, never install it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from fedfuse.federation._metrics import WeightedMetrics
from fedfuse.federation._round import RoundResult, fuse_safely
from fedfuse.federation._validate import check_metrics, update_bound
from fedfuse.fusion import FusionTransform, Update
from fedfuse.models import TrainConfig
from fedfuse.party import (
    SecureEncoding,
    SecureReply,
    SecureTask,
    Skipped,
    TaskError,
    decode_sum,
    vector_size,
)
from fedfuse.runtime import PartyPool
from fedfuse.secure import SecAggError, SecAggServer, pack
from fedfuse.weights import Weights, global_norm, num_bytes

__all__ = ["secure_round"]


def secure_round(
    result: RoundResult,
    pool: PartyPool,
    configs: Mapping[str, TrainConfig],
    encoding: SecureEncoding,
    after_mean: FusionTransform,
    *,
    dropout_rate: float,
    corruption_rate: float,
    denominator: float | None = None,
    scale: Callable[[str], float] | None = None,
    use_held: bool = False,
    deadline: float | None = None,
    quorum: int = 1,
    max_update_norm: float | None = None,
    max_update_ratio: float | None = None,
) -> RoundResult:
    """Run one secure round with the parties of ``configs`` (party -> its train config) from
    ``result.weights``; fills ``result`` as ``fold_replies`` does (participants = the parties
    whose masked update is in the sum) and adds ``result.secure`` (degree, threshold, who
    dropped at which stage).

    ``after_mean``: what follows the mean (noise, a server optimizer; ``chain()`` for nothing).
    ``denominator``: divide the sum by this (differential privacy's expected count) instead of
    the unmasked total weight. ``scale``: a public factor per party the aggregator asks it to
    multiply its weight by (buffered aggregation's staleness weight). ``use_held``: the parties
    already trained (``TrainTask.hold``) and use the update they hold instead of training.
    """
    weights = result.weights
    metrics = WeightedMetrics()
    party_ids: Sequence[str] = list(configs)
    secure = result.secure
    try:
        server = SecAggServer(
            party_ids,
            vector_size(weights),
            dropout_rate=dropout_rate,
            corruption_rate=corruption_rate,
        )
    except (SecAggError, ValueError) as exc:
        result.not_fused = f"secure aggregation could not start: {exc}"
        return result
    try:
        while server.stage != "done":
            stage = server.stage
            tasks = {
                pid: _task(
                    result.round,
                    stage,
                    request,
                    None if use_held else weights,
                    configs[pid],
                    encoding,
                    None if scale is None else scale(pid),
                )
                for pid, request in server.requests().items()
            }
            for pid, reply in pool.dispatch(tasks, timeout=deadline):
                _receive(server, stage, pid, reply, result, metrics, weights)
            server.advance()
            if stage == "share":
                secure["degree"], secure["threshold"] = server.degree, server.threshold
        total = server.result()
    except SecAggError as exc:
        result.not_fused = f"secure aggregation aborted: {exc}"
        return result
    finally:
        secure["dropped"] = {p: str(r) for p, r in server.dropped.items()}
        result.train_metrics = metrics.result()
    result.participants = list(server.survivors)
    sums, weight_sum = decode_sum(total, weights, encoding)
    divide_by = denominator if denominator is not None else weight_sum
    if len(result.participants) < quorum:
        result.not_fused = (
            f"{len(result.participants)} masked updates, fewer than the quorum {quorum}"
        )
        return result
    if not divide_by > 0:
        result.not_fused = f"the unmasked total weight is {weight_sum:.4g}; nothing to divide by"
        return result
    mean = {n: (arr / divide_by).astype(weights[n].dtype) for n, arr in sums.items()}
    limit = update_bound(weights, max_norm=max_update_norm, max_ratio=max_update_ratio)
    norm = global_norm(mean)
    if limit is not None and not norm <= limit:
        result.not_fused = f"the unmasked mean's norm {norm:.4g} exceeds the limit {limit:.4g}"
        return result
    fused = Update(mean, len(result.participants), {}, True, "fused")
    outcome = fuse_safely(after_mean, iter([fused]), result.fusion_state, weights)
    if isinstance(outcome, str):
        result.not_fused = outcome
    else:
        result.weights, result.fusion_state = outcome
        result.fused = True
    return result


def _task(
    round_num: int,
    stage: str,
    request: dict[str, Any],
    weights: Weights | None,
    config: TrainConfig,
    encoding: SecureEncoding,
    scale: float | None,
) -> SecureTask:
    if stage != "advertise":
        return SecureTask(round_num, stage, request)
    if scale is not None:
        encoding = encoding.replace(scale=scale)
    return SecureTask(round_num, stage, request, weights, config, encoding)


def _receive(
    server: SecAggServer,
    stage: str,
    party_id: str,
    reply: Any,
    result: RoundResult,
    metrics: WeightedMetrics,
    weights: Weights,
) -> None:
    if isinstance(reply, TaskError):
        result.failed[party_id] = f"{stage}: {reply.message}"
        return
    if not isinstance(reply, SecureReply | Skipped) or getattr(reply, "stage", stage) != stage:
        result.rejected[party_id] = f"{stage}: expected a secure aggregation message"
        return
    reason = check_metrics(reply.metrics)  # (the only numbers a party sends in plain text)
    if reason is not None:
        result.rejected[party_id] = f"{stage}: {reason}"
        return
    if isinstance(reply, Skipped):
        result.skipped.append(party_id)
        metrics.add(reply.metrics, 1)
        return
    try:
        server.receive(party_id, reply.message)
    except SecAggError as exc:
        result.rejected[party_id] = f"{stage}: {exc}"
        return
    if stage == "advertise":
        metrics.add(reply.metrics, 1)  # the example count stays masked: parties count alike
        result.bytes_dense += num_bytes(weights)
    masked = reply.message.get("masked")
    small = {k: v for k, v in reply.message.items() if k != "masked"}
    result.bytes_up += len(pack(small)) + (masked.nbytes if isinstance(masked, np.ndarray) else 0)
