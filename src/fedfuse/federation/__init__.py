"""The round loop, the TFF-style process API and one-call ``simulate``."""

from fedfuse.federation._async import AsyncFederation, spread_task_seconds
from fedfuse.federation._baseline import train_centralized
from fedfuse.federation._checkpoint import (
    Checkpoint,
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
)
from fedfuse.federation._ensemble import (
    ENSEMBLE_WEIGHTINGS,
    Ensemble,
    compare_ensemble,
    distill,
    train_edge_models,
    validation_weights,
)
from fedfuse.federation._federation import Evaluator, Federation
from fedfuse.federation._metrics import WeightedMetrics
from fedfuse.federation._oneshot import (
    OneShotResult,
    compare_oneshot,
    hidden_activations,
    independent_inits,
    oneshot_fusion,
)
from fedfuse.federation._personalize import (
    PERSONALIZATION_MODELS,
    compare_personalization,
    resolve_personal,
)
from fedfuse.federation._process import (
    FederatedData,
    FederatedProcess,
    ServerState,
    build_fedavg_process,
    build_federated_evaluation,
)
from fedfuse.federation._report import plot_accuracy, write_history
from fedfuse.federation._round import RoundResult, evaluate_parties, screen_reply, train_round
from fedfuse.federation._sampling import (
    check_sampling,
    derive_seed,
    sample_parties,
    sampled_count,
)
from fedfuse.federation._simulate import (
    SimulationConfig,
    SimulationResult,
    build_federated_dataset,
    simulate,
)
from fedfuse.federation._uses import USES, format_use_report, run_use
from fedfuse.federation._validate import (
    DEFAULT_MAX_UPDATE_RATIO,
    MAX_NUM_EXAMPLES,
    UPDATE_NORM_FLOOR,
    check_update_bounds,
    validate_update,
)

__all__ = [
    "DEFAULT_MAX_UPDATE_RATIO",
    "MAX_NUM_EXAMPLES",
    "UPDATE_NORM_FLOOR",
    "check_update_bounds",
    "sampled_count",
    "USES",
    "format_use_report",
    "run_use",
    "ENSEMBLE_WEIGHTINGS",
    "Ensemble",
    "OneShotResult",
    "PERSONALIZATION_MODELS",
    "compare_ensemble",
    "compare_oneshot",
    "compare_personalization",
    "distill",
    "hidden_activations",
    "independent_inits",
    "oneshot_fusion",
    "resolve_personal",
    "train_edge_models",
    "validation_weights",
    "AsyncFederation",
    "Checkpoint",
    "CheckpointError",
    "Evaluator",
    "FederatedData",
    "FederatedProcess",
    "Federation",
    "RoundResult",
    "ServerState",
    "SimulationConfig",
    "SimulationResult",
    "WeightedMetrics",
    "build_fedavg_process",
    "build_federated_dataset",
    "build_federated_evaluation",
    "check_sampling",
    "derive_seed",
    "evaluate_parties",
    "load_checkpoint",
    "plot_accuracy",
    "sample_parties",
    "save_checkpoint",
    "screen_reply",
    "simulate",
    "spread_task_seconds",
    "train_centralized",
    "train_round",
    "validate_update",
    "write_history",
]
