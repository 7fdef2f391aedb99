"""``simulate()``: a whole federation in one call, from plain configuration."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from fedfuse._settings import Settings
from fedfuse.data import FederatedDataset, federate, load_dataset
from fedfuse.federation._baseline import train_centralized
from fedfuse.federation._federation import Federation
from fedfuse.federation._report import plot_accuracy, write_history
from fedfuse.federation._sampling import sampled_count
from fedfuse.federation._uses import run_use
from fedfuse.federation._validate import DEFAULT_MAX_UPDATE_RATIO, check_update_bounds
from fedfuse.fusion import check_fusion_size, get_fusion
from fedfuse.models import TorchAdapter, TrainConfig, build_model, resolve_optimizer, torch_seed
from fedfuse.runtime import LocalPool
from fedfuse.weights import Weights

__all__ = ["SimulationConfig", "SimulationResult", "simulate"]

_PARTITION_PARAMS = {
    "iid": (),
    "dirichlet": ("alpha",),
    "classes": ("classes_per_party",),
    "shards": ("shards_per_party",),
    "quantity": ("alpha",),
}


_FUSION_PARAMS = (
    "server_learning_rate",
    "server_momentum",
    "server_beta2",
    "server_epsilon",
    "trim_fraction",
    "num_byzantine",
    "num_selected",
    "clip_norm",
)


@dataclass(frozen=True)
class SimulationConfig(Settings):
    """Everything ``simulate`` needs, as plain data (it is what a TOML file holds).

    ``partition`` is one of ``iid``, ``dirichlet`` (uses ``alpha``), ``classes`` (uses
    ``classes_per_party``), ``shards`` (uses ``shards_per_party``), ``quantity`` (uses
    ``alpha``). Give ``fraction`` or ``count`` of parties per round, not both.

    ``fusion`` names any algorithm of ``fedfuse.fusion.get_fusion``; its parameters
    (``server_learning_rate``, ``server_momentum``, ``server_beta2``, ``server_epsilon``,
    ``trim_fraction``, ``num_byzantine``, ``num_selected``, ``clip_norm``) are passed to it when
    set. ``proximal_mu``, ``compression``, ``topk_fraction``, ``error_feedback``,
    ``skip_relative_norm``, ``skip_cosine``, ``skip_cosine_to`` and
    ``max_consecutive_skips`` go to the parties
    (see ``TrainConfig``); ``max_update_norm`` makes the aggregator reject updates with a
    larger L2 norm, ``max_update_ratio`` those that would move the global model by more than
    that many times its norm (10 by default; 0 or ``None`` turns it off).

    ``use`` picks one of the Model Fusion API's three uses: ``aggregate`` (the default: one
    federation), or a comparison on the same parties: ``personalize`` (local-only, global,
    fine-tuned for ``finetune_epochs``, and ``personal_layers`` kept by each party: ``head`` or
    parameter names), ``ensemble`` (FedAvg vs an ensemble of edge models, weighted by
    ``ensemble_weighting``, distilled for ``distill_epochs``), ``oneshot`` (independently
    initialized edge models fused once by neuron matching). Their report is
    ``SimulationResult.report`` (and ``report.json``).
    """

    kind: ClassVar[str] = "simulation"

    model: str = "mlp"
    dataset: str = "digits"
    data_dir: str | None = None
    partition: str = "dirichlet"
    alpha: float = 0.5
    classes_per_party: int = 2
    shards_per_party: int = 2
    num_parties: int = 10
    fraction: float | None = None
    count: int | None = None
    rounds: int = 20
    epochs: int = 1
    batch_size: int = 32
    optimizer: str = "sgd"
    learning_rate: float = 0.05
    fusion: str = "fedavg"
    seed: int = 0
    local_test_fraction: float = 0.2
    centralized: bool = True
    federated_eval: bool = True
    proximal_mu: float = 0.0
    compression: str = "none"
    topk_fraction: float = 0.01
    error_feedback: bool = True
    skip_relative_norm: float = 0.0
    skip_cosine: float | None = None
    skip_cosine_to: str = "last_sent"
    max_consecutive_skips: int = 3
    max_update_norm: float | None = None
    max_update_ratio: float | None = DEFAULT_MAX_UPDATE_RATIO
    server_learning_rate: float | None = None
    server_momentum: float | None = None
    server_beta2: float | None = None
    server_epsilon: float | None = None
    trim_fraction: float | None = None
    num_byzantine: int | None = None
    num_selected: int | None = None
    clip_norm: float | None = None
    use: str = "aggregate"
    personal_layers: str = "head"
    finetune_epochs: int = 5
    ensemble_weighting: str = "classwise"
    distill_epochs: int = 50

    def train_config(self) -> TrainConfig:
        return TrainConfig(
            self.epochs,
            self.batch_size,
            self.optimizer,
            self.learning_rate,
            proximal_mu=self.proximal_mu,
            compression=self.compression,
            topk_fraction=self.topk_fraction,
            error_feedback=self.error_feedback,
            skip_relative_norm=self.skip_relative_norm,
            skip_cosine=self.skip_cosine,
            skip_cosine_to=self.skip_cosine_to,
            max_consecutive_skips=self.max_consecutive_skips,
        )

    def fusion_params(self) -> dict[str, Any]:
        """The fusion parameters that are set, for ``get_fusion(self.fusion, **params)``."""
        values = {name: getattr(self, name) for name in _FUSION_PARAMS}
        return {name: value for name, value in values.items() if value is not None}

    def partition_params(self) -> dict[str, Any]:
        try:
            names = _PARTITION_PARAMS[self.partition]
        except KeyError:
            raise ValueError(
                f"unknown partition {self.partition!r}; choose one of: "
                f"{', '.join(_PARTITION_PARAMS)}"
            ) from None
        params = {name: getattr(self, name) for name in names}
        if "classes_per_party" in params:
            params["k"] = params.pop("classes_per_party")
        return params


@dataclass
class SimulationResult:
    """What a simulation produced: per-round history, final weights and the baseline curve."""

    config: SimulationConfig
    history: list[dict[str, Any]]
    weights: Weights
    dataset: FederatedDataset
    centralized: list[dict[str, float]] = field(default_factory=list)
    files: dict[str, Path] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)


def build_federated_dataset(config: SimulationConfig) -> FederatedDataset:
    """Load ``config.dataset`` and partition it among ``config.num_parties`` parties."""
    train, test = load_dataset(config.dataset, data_dir=config.data_dir, seed=config.seed)
    return federate(
        train,
        test,
        config.num_parties,
        config.partition,
        seed=config.seed,
        local_test_fraction=config.local_test_fraction,
        **config.partition_params(),
    )


def _check_parties_per_round(config: SimulationConfig, num_parties: int) -> None:
    """Raise ``ValueError`` if ``config``'s sampling or fusion can never run with
    ``num_parties`` parties (e.g. Krum with ``2f + 2 >= parties per round``)."""
    per_round = sampled_count(num_parties, config.fraction, config.count)
    check_fusion_size(config.fusion, config.fusion_params(), per_round)


def _simulate_use(
    config: SimulationConfig,
    fed: FederatedDataset,
    model_fn: Callable[[], torch.nn.Module],
    out_dir: str | os.PathLike | None,
) -> SimulationResult:
    report = run_use(config, fed, model_fn)
    history = report.pop("history", [])
    result = SimulationResult(config, history, {}, fed, report=report)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        path = out / "report.json"
        document = {"config": dataclasses.asdict(config), "report": report, "history": history}
        path.write_text(json.dumps(document, indent=1, default=_plain))
        result.files["report"] = path
    return result


def _plain(value: Any) -> Any:
    return value.tolist() if hasattr(value, "tolist") else str(value)


def simulate(
    config: SimulationConfig | None = None,
    *,
    out_dir: str | os.PathLike | None = None,
    on_round: Callable[[dict[str, Any]], None] | None = None,
    federated_data: FederatedDataset | None = None,
    **overrides: Any,
) -> SimulationResult:
    """Run a simulated federation end to end.

    ``simulate(rounds=5, num_parties=10, partition="iid")`` uses the defaults of
    ``SimulationConfig`` for everything not given. If ``out_dir`` is set, ``history.json`` and
    ``accuracy.png`` are written there. ``on_round`` is called with each round's record.
    ``federated_data`` replaces the dataset the config names with one you built yourself.
    """
    config = (config or SimulationConfig()).replace(**overrides)
    config.train_config().validate()
    resolve_optimizer(config.optimizer)  # simulations train torch models
    check_update_bounds(config.max_update_norm, config.max_update_ratio)
    fusion = get_fusion(config.fusion, **config.fusion_params())
    if federated_data is None:
        _check_parties_per_round(config, config.num_parties)
    fed = federated_data if federated_data is not None else build_federated_dataset(config)
    _check_parties_per_round(config, len(fed.party_ids))
    if fed.test is None:
        raise ValueError("the federated dataset needs a central test set (FederatedDataset.test)")
    input_shape = fed[fed.party_ids[0]].train.x.shape[1:]

    def model_fn() -> torch.nn.Module:
        return build_model(config.model, input_shape, fed.num_classes)

    if config.use != "aggregate":
        return _simulate_use(config, fed, model_fn, out_dir)
    with torch_seed(config.seed):
        adapter = TorchAdapter(model_fn())
        central = TorchAdapter(model_fn())

    def central_eval(weights: Weights) -> dict[str, float]:
        central.set_weights(weights)
        return central.evaluate(fed.test)

    federation = Federation(
        LocalPool.from_dataset(fed, adapter),
        adapter.get_weights(),
        fusion=fusion,
        config=config.train_config(),
        fraction=config.fraction,
        count=config.count,
        seed=config.seed,
        central_eval=central_eval,
        federated_eval=config.federated_eval and bool(fed.test_data()),
        max_update_norm=config.max_update_norm,
        max_update_ratio=config.max_update_ratio,
    )
    history = federation.run(config.rounds, on_round=on_round)
    result = SimulationResult(config, history, federation.weights, fed)
    if config.centralized:
        result.centralized = train_centralized(
            model_fn,
            fed.pooled_train(),
            fed.test,
            config.train_config(),
            config.rounds * config.epochs,
            seed=config.seed,
        )
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        result.files["history"] = write_history(
            out / "history.json",
            dataclasses.asdict(config),
            history,
            result.centralized,
            fed.label_stats(),
        )
        result.files["plot"] = plot_accuracy(
            out / "accuracy.png", history, result.centralized, epochs_per_round=config.epochs
        )
    return result
