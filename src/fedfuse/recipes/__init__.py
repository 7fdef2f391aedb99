"""Recipes built on the round loop (torch may live here): the federation spec, one-call
``simulate``, the TFF-style process, the Model Fusion API's three uses, baselines and plots."""

from fedfuse.recipes._ensemble import (
    ENSEMBLE_WEIGHTINGS,
    Ensemble,
    compare_ensemble,
    distill,
    train_edge_models,
    validation_weights,
)
from fedfuse.recipes._oneshot import (
    OneShotResult,
    compare_oneshot,
    hidden_activations,
    independent_inits,
    oneshot_fusion,
)
from fedfuse.recipes._personalize import (
    PERSONALIZATION_MODELS,
    compare_personalization,
    resolve_personal,
)
from fedfuse.recipes._process import (
    FederatedData,
    FederatedProcess,
    ServerState,
    build_fedavg_process,
    build_federated_evaluation,
)
from fedfuse.recipes._report import plot_accuracy, write_history
from fedfuse.recipes._simulate import (
    SIMULATION_DEFAULTS,
    SimulationResult,
    build_federated_dataset,
    simulate,
)
from fedfuse.recipes._spec import (
    EvaluationSpec,
    FederationSpec,
    UseSpec,
    coerce_flat,
    field_types,
    flat_names,
    flat_table,
    load_spec,
    parse_json_object,
    use_params,
)
from fedfuse.recipes._uses import USES, format_use_report, run_use

__all__ = [
    "ENSEMBLE_WEIGHTINGS",
    "PERSONALIZATION_MODELS",
    "SIMULATION_DEFAULTS",
    "USES",
    "Ensemble",
    "EvaluationSpec",
    "FederatedData",
    "FederatedProcess",
    "FederationSpec",
    "OneShotResult",
    "ServerState",
    "SimulationResult",
    "UseSpec",
    "build_fedavg_process",
    "build_federated_dataset",
    "build_federated_evaluation",
    "coerce_flat",
    "field_types",
    "compare_ensemble",
    "compare_oneshot",
    "compare_personalization",
    "distill",
    "flat_names",
    "flat_table",
    "load_spec",
    "parse_json_object",
    "format_use_report",
    "hidden_activations",
    "independent_inits",
    "oneshot_fusion",
    "plot_accuracy",
    "resolve_personal",
    "run_use",
    "simulate",
    "train_edge_models",
    "use_params",
    "validation_weights",
    "write_history",
]
