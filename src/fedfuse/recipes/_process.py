"""The iterative-process API of TensorFlow Federated, re-told: ``initialize()`` / ``next()``.

    process = build_fedavg_process(model_fn, optimizer="sgd", learning_rate=0.1)
    state = process.initialize()
    for _ in range(10):
        state, metrics = process.next(state, federated_train_data)
    evaluation = build_federated_evaluation(model_fn)
    evaluation(state.weights, federated_test_data)

It runs the same ``train_round`` as ``Federation`` over an in-process ``LocalPool``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from fedfuse.data import ArrayDataset, FederatedDataset, PartyData
from fedfuse.federation import evaluate_parties, train_round
from fedfuse.fusion import FusionTransform, get_fusion
from fedfuse.models import LossFn, TorchAdapter, TrainConfig, resolve_optimizer, torch_seed
from fedfuse.runtime import LocalPool
from fedfuse.weights import Weights

__all__ = [
    "FederatedData",
    "FederatedProcess",
    "ServerState",
    "build_fedavg_process",
    "build_federated_evaluation",
]

FederatedData = FederatedDataset | Mapping[str, Any] | Sequence[ArrayDataset]
ModelFn = Callable[[], nn.Module]


@dataclass(frozen=True)
class ServerState:
    """The aggregator's state between rounds: global weights, round count, fusion state."""

    weights: Weights
    round: int
    fusion_state: Any


def _local_pool(data: FederatedData, adapter: TorchAdapter) -> LocalPool:
    """A pool of the parties in ``data``: a ``FederatedDataset``, a mapping ``id -> data``
    (anything ``FederatedDataset.from_dict`` takes: ``(x, y)``, ``{"x", "y"}``, ``ArrayDataset``,
    ``PartyData``), or a list of datasets (ids ``party_0``, ...). A party given one dataset is
    evaluated on it too (as TFF evaluates on the data it is given)."""
    if isinstance(data, FederatedDataset):
        return LocalPool.from_dataset(data, adapter)
    mapping = data if isinstance(data, Mapping) else {f"party_{i}": d for i, d in enumerate(data)}
    if not mapping:
        raise ValueError("federated data must hold at least one party's dataset")
    fed = FederatedDataset.from_dict(mapping)
    parties = {
        pid: fed[pid] if fed[pid].test is not None else PartyData(fed[pid].train, fed[pid].train)
        for pid in fed.party_ids
    }
    return LocalPool.from_dataset(FederatedDataset(parties), adapter)


class FederatedProcess:
    """A federated training algorithm as a pair ``initialize()`` / ``next(state, data)``."""

    def __init__(
        self,
        model_fn: ModelFn,
        fusion: FusionTransform,
        config: TrainConfig,
        *,
        seed: int = 0,
        loss: LossFn | None = None,
    ) -> None:
        self.fusion = fusion
        self.config = config
        self.seed = seed
        with torch_seed(seed):
            self.adapter = TorchAdapter(model_fn(), loss)
        self._initial = self.adapter.get_weights()

    def initialize(self) -> ServerState:
        """The state before round 1: the model's initial weights (seeded)."""
        return ServerState(self._initial, 0, self.fusion.init(self._initial))

    def next(self, state: ServerState, federated_data: FederatedData) -> tuple[ServerState, dict]:
        """One round on ``federated_data`` (one dataset per participating party).

        Returns the new state and the training metrics averaged weighted by ``num_examples``.
        """
        pool = _local_pool(federated_data, self.adapter)
        result = train_round(
            state.round + 1,
            state.weights,
            self.fusion,
            state.fusion_state,
            pool,
            pool.party_ids(),
            self.config,
            seed=self.seed,
        )
        metrics: dict[str, Any] = dict(result.train_metrics)
        if result.rejected or result.failed:
            metrics["rejected"] = len(result.rejected)
            metrics["failed"] = len(result.failed)
            metrics["failures"] = {**result.failed, **result.rejected}  # party -> reason
        if result.skipped:
            metrics["skipped"] = len(result.skipped)
        return ServerState(result.weights, result.round, result.fusion_state), metrics


def build_fedavg_process(
    model_fn: ModelFn,
    *,
    optimizer: str = "sgd",
    learning_rate: float = 0.1,
    epochs: int = 1,
    batch_size: int = 32,
    fusion: str | FusionTransform = "fedavg",
    seed: int = 0,
    loss: LossFn | None = None,
) -> FederatedProcess:
    """Federated averaging built from a function that returns a fresh ``nn.Module``.

    Each party trains ``epochs`` local epochs with ``optimizer`` (named as in torch:
    ``"sgd"``, ``"Adam"``, ``"optim.Adadelta"``) at ``learning_rate``.
    """
    resolve_optimizer(optimizer)
    config = TrainConfig(epochs, batch_size, optimizer, learning_rate)
    config.validate()
    transform = get_fusion(fusion) if isinstance(fusion, str) else fusion
    return FederatedProcess(model_fn, transform, config, seed=seed, loss=loss)


def build_federated_evaluation(
    model_fn: ModelFn, *, loss: LossFn | None = None
) -> Callable[[Weights, FederatedData], dict[str, float]]:
    """``evaluation(weights, federated_data)`` -> metrics weighted by each party's examples."""
    adapter = TorchAdapter(model_fn(), loss)

    def evaluation(weights: Weights, federated_data: FederatedData) -> dict[str, float]:
        pool = _local_pool(federated_data, adapter)
        failed: dict[str, str] = {}
        metrics = evaluate_parties(pool, pool.party_ids(), weights, failed=failed)
        if not metrics:
            reasons = "; ".join(f"{pid}: {why}" for pid, why in list(failed.items())[:5])
            raise ValueError(f"no party could evaluate the model ({reasons})")
        if failed:
            metrics["failures"] = failed  # type: ignore[assignment]
        return metrics

    return evaluation
