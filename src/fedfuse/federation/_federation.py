"""The federation: a round loop that owns the global model and does not care where parties are."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from fedfuse.federation._checkpoint import load_checkpoint, save_checkpoint
from fedfuse.federation._round import RoundResult, evaluate_parties, train_round
from fedfuse.federation._sampling import check_sampling, sample_parties
from fedfuse.federation._validate import DEFAULT_MAX_UPDATE_RATIO, check_update_bounds
from fedfuse.fusion import FusionTransform, get_fusion
from fedfuse.models import TrainConfig
from fedfuse.runtime import PartyPool
from fedfuse.weights import Weights, check_compatible

__all__ = ["Evaluator", "Federation"]

Evaluator = Callable[[Weights], dict[str, float]]


class Federation:
    """Sample → dispatch → gather → validate → fuse → evaluate → record, round after round.

    Args:
        pool: the transport to the parties (``LocalPool`` in simulation).
        initial_weights: the global model to start from.
        fusion: a fusion name (``"fedavg"``, ``"fedadam"``, ``"median"``, any of
            ``fedfuse.fusion.FUSIONS``) or a ``FusionTransform``.
        config: how parties train locally each round.
        fraction / count: parties sampled per round (all of them by default).
        seed: makes sampling and every party's local training reproducible.
        quorum: the fewest accepted updates for which a round is fused.
        timeout: seconds a round waits for replies (``None``: no deadline).
        central_eval: ``weights -> metrics`` on data the aggregator holds, run each round.
        federated_eval: also ask every party to evaluate the new model on its test split.
        checkpoint_dir: where a checkpoint is written after each round; if it already holds
            one, the federation resumes from it.
        max_update_norm: reject updates whose L2 norm exceeds this (``None``: no limit).
        max_update_ratio: reject updates that would move the global model by more than this
            many times its norm (``||change|| <= r * max(||w||, UPDATE_NORM_FLOOR)``; on by
            default, ``None`` or 0 turns it off). See ``fedfuse.federation._validate``.
    """

    def __init__(
        self,
        pool: PartyPool,
        initial_weights: Weights,
        *,
        fusion: str | FusionTransform = "fedavg",
        config: TrainConfig | None = None,
        fraction: float | None = None,
        count: int | None = None,
        seed: int = 0,
        quorum: int = 1,
        timeout: float | None = None,
        central_eval: Evaluator | None = None,
        federated_eval: bool = False,
        checkpoint_dir: str | os.PathLike | None = None,
        max_update_norm: float | None = None,
        max_update_ratio: float | None = DEFAULT_MAX_UPDATE_RATIO,
    ) -> None:
        self.pool = pool
        self.fusion = get_fusion(fusion) if isinstance(fusion, str) else fusion
        self.config = config or TrainConfig()
        self.fraction = fraction
        self.count = count
        self.seed = seed
        self.quorum = quorum
        self.timeout = timeout
        self.central_eval = central_eval
        self.federated_eval = federated_eval
        self.checkpoint_dir = checkpoint_dir
        self.max_update_norm = max_update_norm
        self.max_update_ratio = max_update_ratio
        self._validate()
        self.round = 0
        self.weights = initial_weights
        self.fusion_state = self.fusion.init(initial_weights)
        self.history: list[dict[str, Any]] = []
        if checkpoint_dir is not None:
            self._resume(initial_weights)

    def _validate(self) -> None:
        self.config.validate()
        check_sampling(self.fraction, self.count)
        if not isinstance(self.quorum, int) or self.quorum < 1:
            raise ValueError(f"quorum must be an integer >= 1, got {self.quorum!r}")
        check_update_bounds(self.max_update_norm, self.max_update_ratio)

    def _resume(self, initial_weights: Weights) -> None:
        checkpoint = load_checkpoint(self.checkpoint_dir)
        if checkpoint is None:
            return
        check_compatible(initial_weights, checkpoint.weights)
        self.round = checkpoint.round
        self.weights = checkpoint.weights
        self.fusion_state = checkpoint.fusion_state
        self.history = checkpoint.history

    def run_round(self) -> dict[str, Any]:
        """Run the next round; returns its history record."""
        round_num = self.round + 1
        party_ids = sample_parties(
            self.pool.party_ids(),
            round_num,
            fraction=self.fraction,
            count=self.count,
            seed=self.seed,
        )
        result = train_round(
            round_num,
            self.weights,
            self.fusion,
            self.fusion_state,
            self.pool,
            party_ids,
            self.config,
            seed=self.seed,
            quorum=self.quorum,
            timeout=self.timeout,
            max_update_norm=self.max_update_norm,
            max_update_ratio=self.max_update_ratio,
        )
        self.round = round_num
        self.weights = result.weights
        self.fusion_state = result.fusion_state
        record = self._record(result, party_ids)
        self.history.append(record)
        if self.checkpoint_dir is not None:
            save_checkpoint(
                self.checkpoint_dir, self.round, self.weights, self.fusion_state, self.history
            )
        return record

    def _record(self, result: RoundResult, sampled: list[str]) -> dict[str, Any]:
        record: dict[str, Any] = {
            "round": result.round,
            "sampled": sampled,
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
        if self.central_eval is not None:
            record["central"] = self.central_eval(self.weights)
        if self.federated_eval:
            record["federated"] = evaluate_parties(
                self.pool,
                self.pool.party_ids(),
                self.weights,
                round_num=result.round,
                timeout=self.timeout,
            )
        return record

    def run(
        self, rounds: int, on_round: Callable[[dict[str, Any]], None] | None = None
    ) -> list[dict[str, Any]]:
        """Run until round ``rounds`` is complete (a resumed federation continues where it was)."""
        if not isinstance(rounds, int) or rounds < 1:
            raise ValueError(f"rounds must be an integer >= 1, got {rounds!r}")
        while self.round < rounds:
            record = self.run_round()
            if on_round is not None:
                on_round(record)
        return self.history
