"""``simulate()``: a whole federation in one call, from one ``FederationSpec``."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fedfuse._events import logging_events
from fedfuse.data import FederatedDataset
from fedfuse.federation import Federation
from fedfuse.models import (
    TorchAdapter,
    TrainConfig,
    build_model,
    resolve_optimizer,
    torch_seed,
    train_centralized,
)
from fedfuse.recipes._report import plot_accuracy, write_history
from fedfuse.recipes._spec import FederationSpec, load_spec
from fedfuse.recipes._uses import run_use
from fedfuse.runtime import PartyPool, make_pool
from fedfuse.weights import Weights

__all__ = ["SIMULATION_DEFAULTS", "SimulationResult", "build_federated_dataset", "simulate"]

DEFAULT_MODEL = "mlp"
#: What ``simulate()`` starts from when given no spec: the spec's defaults, with the local
#: learning rate that suits the small zoo models on the bundled datasets.
SIMULATION_DEFAULTS = FederationSpec(training=TrainConfig(learning_rate=0.05))


@dataclass
class SimulationResult:
    """What a simulation produced: per-round history, final weights and the baseline curve;
    ``stop_reason`` says why it ended before ``spec.rounds`` (a spent privacy budget)."""

    spec: FederationSpec
    history: list[dict[str, Any]]
    weights: Weights
    dataset: FederatedDataset
    centralized: list[dict[str, float]] = field(default_factory=list)
    files: dict[str, Path] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)
    stop_reason: str = ""


def build_federated_dataset(spec: FederationSpec) -> FederatedDataset:
    """Load ``spec.data``'s dataset and partition it among ``spec.num_parties`` parties."""
    return spec.data.build(spec.num_parties, spec.seed)


def _plain(value: Any) -> Any:
    return value.tolist() if hasattr(value, "tolist") else str(value)


def simulate(
    spec: FederationSpec | str | os.PathLike | None = None,
    *,
    out_dir: str | os.PathLike | None = None,
    on_round: Callable[[dict[str, Any]], None] | None = None,
    federated_data: FederatedDataset | None = None,
    task_seconds: Mapping[str, float] | None = None,
    **flat: Any,
) -> SimulationResult:
    """Run a simulated federation end to end.

    ``spec`` is a ``FederationSpec``, or the path of a TOML/JSON file holding one; flat settings
    are applied on top (``simulate(rounds=5, num_parties=10, partition="iid")``, see
    ``FederationSpec.from_flat``). The model is ``spec.model.name`` (``mlp`` if none) built for
    the data's shape. If ``out_dir`` is set, ``history.json`` and ``accuracy.png`` are written
    there at the end, and ``events.jsonl`` gets each round's record as it ends (for
    ``fedfuse dashboard``). ``on_round`` is called with each round's record.
    ``federated_data`` replaces the dataset the spec names with one you built yourself (e.g.
    ``FederatedDataset.from_dict``).
    ``task_seconds`` gives each party's simulated seconds per task (buffered aggregation).
    """
    if spec is None:
        base = SIMULATION_DEFAULTS
    elif isinstance(spec, FederationSpec):
        base = spec
    else:
        base = load_spec(spec, base=SIMULATION_DEFAULTS)
    spec = FederationSpec.from_flat(flat, base=base)
    if federated_data is not None:  # the parties are the user's: as many as they brought
        spec = spec.replace(num_parties=len(federated_data.party_ids))
    spec.validate()
    resolve_optimizer(spec.training.optimizer)  # simulations train torch models
    fed = federated_data if federated_data is not None else build_federated_dataset(spec)
    if fed.test is None and not fed.test_data():
        raise ValueError(
            "the federated dataset has no test data: give it a central test set "
            "(FederatedDataset.test) or local test splits"
        )
    input_shape = fed[fed.party_ids[0]].train.x.shape[1:]

    def model_fn() -> torch.nn.Module:
        return build_model(spec.model.name or DEFAULT_MODEL, input_shape, fed.num_classes)

    if spec.use.name != "aggregate":
        return _simulate_use(spec, fed, model_fn, out_dir)
    with torch_seed(spec.seed):
        adapter = TorchAdapter(model_fn())
        central = TorchAdapter(model_fn())

    def central_eval(weights: Weights) -> dict[str, float]:
        central.set_weights(weights)
        return central.evaluate(fed.test)

    with make_pool(spec.backend, fed, adapter, task_seconds) as pool:
        federation = _federation(spec, fed, pool, adapter, central_eval)
        history = federation.run(spec.rounds, on_round=logging_events(out_dir, on_round))
    result = SimulationResult(
        spec, history, federation.weights, fed, stop_reason=federation.stop_reason
    )
    if spec.evaluation.centralized and fed.test is not None:
        result.centralized = train_centralized(
            model_fn,
            fed.pooled_train(),
            fed.test,
            spec.training,
            spec.rounds * spec.training.epochs,
            seed=spec.seed,
        )
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        result.files["history"] = write_history(
            out / "history.json", spec.to_dict(), history, result.centralized, fed.label_stats()
        )
        result.files["plot"] = plot_accuracy(
            out / "accuracy.png", history, result.centralized, epochs_per_round=spec.training.epochs
        )
    return result


def _federation(
    spec: FederationSpec,
    fed: FederatedDataset,
    pool: PartyPool,
    adapter: TorchAdapter,
    central_eval: Callable[[Weights], dict[str, float]],
) -> Federation:
    return Federation(
        pool,
        adapter.get_weights(),
        fusion=spec.fusion,
        config=spec.training,
        sampling=spec.sampling,
        aggregation=spec.aggregation,
        seed=spec.seed,
        central_eval=central_eval if fed.test is not None else None,
        federated_eval=spec.evaluation.federated and bool(fed.test_data()),
        piggyback_eval=spec.evaluation.piggyback,
        privacy=spec.privacy,
        secure=spec.secure,
        population=spec.num_parties,
    )


def _simulate_use(
    spec: FederationSpec,
    fed: FederatedDataset,
    model_fn: Callable[[], torch.nn.Module],
    out_dir: str | os.PathLike | None,
) -> SimulationResult:
    report = run_use(spec, fed, model_fn)
    history = report.pop("history", [])
    result = SimulationResult(spec, history, {}, fed, report=report)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        path = out / "report.json"
        document = {"spec": spec.to_dict(), "report": report, "history": history}
        path.write_text(json.dumps(document, indent=1, default=_plain))
        result.files["report"] = path
    return result
