"""Each package declares what it exports; these lists are the public API, frozen here.

A name added to or removed from a package's ``__all__`` changes this file on purpose: the
public API changes in review, never by accident.
"""

import ast
import importlib
import sys
import types
from pathlib import Path

import pytest

FEDERATION_SRC = Path(__file__).resolve().parents[1] / "src" / "fedfuse" / "federation"

PUBLIC_API = [
    (
        "fedfuse",
        [
            "Aggregation",
            "ArrayDataset",
            "FederatedDataset",
            "Federation",
            "FederationSpec",
            "FusionTransform",
            "LocalPool",
            "Party",
            "PartyData",
            "Privacy",
            "Sampling",
            "SecureAggregation",
            "ServerState",
            "SimulationResult",
            "TorchAdapter",
            "TrainConfig",
            "Update",
            "Weights",
            "__version__",
            "build_fedavg_process",
            "build_federated_evaluation",
            "build_model",
            "chain",
            "fedavg",
            "federate",
            "iter_avg",
            "load_dataset",
            "load_weights",
            "save_weights",
            "simulate",
        ],
    ),
    (
        "fedfuse.weights",
        [
            "CODECS",
            "Codec",
            "CodecError",
            "SizeLimitError",
            "SizeLimits",
            "Weights",
            "WeightsFormatError",
            "WeightsMismatchError",
            "add",
            "add_scaled_",
            "as_weights",
            "check_compatible",
            "encode_with_feedback",
            "from_buffer",
            "from_bytes",
            "get_codec",
            "global_norm",
            "load_weights",
            "num_bytes",
            "save_weights",
            "scale",
            "subtract",
            "to_bytes",
            "zeros_like",
        ],
    ),
    (
        "fedfuse.data",
        [
            "ArrayDataset",
            "DATASETS",
            "DATA_HANDLERS",
            "DEBIAN_FASHION_MNIST_DIR",
            "DataHandler",
            "DataSpec",
            "DatasetFormatError",
            "DatasetNotFoundError",
            "FEDERATED_DATASETS",
            "FederatedDataset",
            "PARTITIONS",
            "PartyData",
            "by_group",
            "cifar10_keras",
            "class_window",
            "classes_per_party",
            "dirichlet",
            "fashion_mnist_dir",
            "federate",
            "format_label_stats",
            "get_data_handler",
            "iid",
            "load_cifar10",
            "load_csv",
            "load_dataset",
            "load_federated_dataset",
            "load_federated_emnist",
            "load_federated_npz",
            "load_idx",
            "load_leaf",
            "load_lee_corpus",
            "load_lee_similarity",
            "load_mnist_idx",
            "load_party_npz",
            "load_sklearn",
            "mnist_keras",
            "newsgroup_text",
            "partition_defaults",
            "partition_indices",
            "partition_params",
            "quantity_skew",
            "register_data_handler",
            "shards",
            "tokenize",
            "wikipedia_text",
        ],
    ),
    (
        "fedfuse.models",
        [
            "DOC2VEC_SETTINGS",
            "Doc2VecAdapter",
            "KerasAdapter",
            "LossFn",
            "MODELS",
            "MODEL_TYPES",
            "ModelFileError",
            "ModelSpec",
            "ModelType",
            "OPTIMIZERS",
            "SklearnAdapter",
            "TorchAdapter",
            "TrainConfig",
            "build_model",
            "builtin_module_classes",
            "check_model_file",
            "cifar_cnn",
            "dp_sgd_epsilon",
            "dp_sgd_steps",
            "get_model_type",
            "keras_optimizer",
            "load_keras_model",
            "load_torch_model",
            "logistic_regression",
            "make_optimizer",
            "merge_word_counts",
            "mlp",
            "mnist_cnn",
            "prepare_doc2vec",
            "register_model_type",
            "resolve_optimizer",
            "torch_seed",
            "train_centralized",
        ],
    ),
    (
        "fedfuse.fusion",
        [
            "FUSIONS",
            "FusionError",
            "FusionSpec",
            "FusionTransform",
            "Layer",
            "Update",
            "adaptive_clip",
            "add_gaussian_noise",
            "align",
            "apply_update",
            "average",
            "chain",
            "check_fusion_size",
            "classwise_fusion",
            "clip_by_norm",
            "doc2vec_fusion",
            "dp_mean",
            "fedavg",
            "fuse",
            "fusion_params",
            "gaussian_noise",
            "get_fusion",
            "infer_layers",
            "iter_avg",
            "krum",
            "krum_select",
            "matched_average",
            "matched_fusion",
            "median",
            "multi_krum",
            "scale_by_staleness",
            "server_adagrad",
            "server_adam",
            "server_momentum",
            "server_yogi",
            "staleness_weight",
            "stateless",
            "tree_aggregation_noise",
            "tree_levels",
            "trimmed_mean",
            "weighted_mean",
            "with_info",
        ],
    ),
    (
        "fedfuse.secure",
        [
            "Quantizer",
            "SecAggError",
            "SecAggParty",
            "SecAggServer",
            "choose_degree",
            "harary_graph",
            "pack",
            "shamir_combine",
            "shamir_split",
            "unpack",
        ],
    ),
    (
        "fedfuse.party",
        [
            "ClientParty",
            "EvaluateTask",
            "Evaluated",
            "Evaluation",
            "Malformed",
            "ModelAdapter",
            "NumPyClient",
            "Party",
            "PersonalAdapter",
            "Reply",
            "SecureEncoding",
            "SecureReply",
            "SecureTask",
            "Skipped",
            "Task",
            "TaskError",
            "TrainTask",
            "Update",
            "decode_sum",
            "encode_update",
            "head_layer",
            "split_personal",
            "vector_size",
        ],
    ),
    (
        "fedfuse.runtime",
        [
            "BACKENDS",
            "Backend",
            "CohortPool",
            "LocalPool",
            "MockPool",
            "PartyClient",
            "PartyPool",
            "PartyRunSummary",
            "PendingTask",
            "ProcessPool",
            "ProtocolError",
            "RayPool",
            "RemotePool",
            "ShardedPool",
            "UnexpectedReplyError",
            "WireFormatError",
            "available_cores",
            "create_federation",
            "decode_meta",
            "make_pool",
            "party_from_join",
            "reply_from_wire",
            "reply_to_wire",
            "run_party",
            "spread_task_seconds",
            "task_from_wire",
            "task_to_wire",
        ],
    ),
    (
        "fedfuse.federation",
        [
            "Aggregation",
            "Checkpoint",
            "CheckpointError",
            "DEFAULT_MAX_UPDATE_RATIO",
            "Evaluator",
            "Federation",
            "MAX_NUM_EXAMPLES",
            "Privacy",
            "PrivacyAccountant",
            "PrivacyBudgetExceeded",
            "RoundResult",
            "SUM_FUSIONS",
            "Sampling",
            "SecureAggregation",
            "UPDATE_NORM_FLOOR",
            "WeightedMetrics",
            "check_update_bounds",
            "derive_seed",
            "evaluate_parties",
            "fold_replies",
            "fsync_directory",
            "fuse_safely",
            "load_checkpoint",
            "privacy_problem",
            "private_fusion",
            "sample_parties",
            "sampled_count",
            "save_checkpoint",
            "screen_reply",
            "secure_round",
            "train_round",
            "validate_update",
            "write_synced",
        ],
    ),
    (
        "fedfuse.recipes",
        [
            "ENSEMBLE_WEIGHTINGS",
            "Ensemble",
            "EvaluationSpec",
            "FederatedData",
            "FederatedProcess",
            "FederationSpec",
            "OneShotResult",
            "PERSONALIZATION_MODELS",
            "SIMULATION_DEFAULTS",
            "ServerState",
            "SimulationResult",
            "USES",
            "UseSpec",
            "build_fedavg_process",
            "build_federated_dataset",
            "build_federated_evaluation",
            "coerce_flat",
            "compare_ensemble",
            "compare_oneshot",
            "compare_personalization",
            "distill",
            "field_types",
            "flat_names",
            "flat_table",
            "format_use_report",
            "hidden_activations",
            "independent_inits",
            "load_spec",
            "oneshot_fusion",
            "parse_json_object",
            "plot_accuracy",
            "resolve_personal",
            "run_use",
            "simulate",
            "train_edge_models",
            "use_params",
            "validation_weights",
            "write_history",
        ],
    ),
    (
        "fedfuse.consensus",
        [
            "ALGORITHMS",
            "AsyncSimulator",
            "BUDGETS",
            "CONSENSUS_MODELS",
            "CONSENSUS_PARTITIONS",
            "ConsensusConfig",
            "ConsensusNode",
            "ConsensusResult",
            "DEFAULT_MAX_MESSAGE_RATIO",
            "DPSGD",
            "ECL",
            "ExchangeEvent",
            "FLAT_ALIASES",
            "Gossip",
            "HttpReply",
            "Learner",
            "LocalGraph",
            "NODE_TOKEN_ENV",
            "NodeOptions",
            "PeerNode",
            "TOPOLOGIES",
            "Topology",
            "Transport",
            "as_topology",
            "complete",
            "consensus_distance",
            "double_ring",
            "evaluate_nodes",
            "from_edge_list",
            "gn_cnn",
            "load_node_data",
            "make_algorithm",
            "make_model",
            "make_topology",
            "mean_weights",
            "node_datasets",
            "node_files",
            "node_main",
            "plot_runs",
            "prepare_run",
            "random_regular",
            "read_graph",
            "ring",
            "run_consensus",
            "torus",
            "train_reference",
            "urllib_transport",
            "validation_data",
            "write_json",
        ],
    ),
    (
        "fedfuse.service",
        [
            "Conflict",
            "FailureLimiter",
            "FederationRunner",
            "Manager",
            "NotFound",
            "SERVICE_DEFAULTS",
            "ServiceSettings",
            "SpecError",
            "StorageError",
            "Store",
            "StoreError",
            "Unauthorized",
            "background_service",
            "create_app",
        ],
    ),
    (
        "fedfuse.cli",
        [
            "build_parser",
            "main",
        ],
    ),
]
PACKAGES = {package for package, _ in PUBLIC_API}


def _in(package: str, module_name: object) -> bool:
    return isinstance(module_name, str) and (
        module_name == package or module_name.startswith(package + ".")
    )


def _defined_in(package: str, name: str, value: object) -> bool:
    """Whether the package's attribute ``name`` comes from ``package`` itself: a public
    submodule, a class or function whose module is in the package, or a constant (constants
    carry no ``__module__``) that a module of the package exports or its ``__init__`` assigns.
    Names re-exported from the layers below are not counted."""
    if isinstance(value, types.ModuleType):
        return _in(package, value.__name__) and value.__name__ not in PACKAGES
    if isinstance(value, type) or callable(value):
        return _in(package, getattr(value, "__module__", None))
    return name in _assigned_in_init(package) or any(
        name in getattr(module, "__all__", ())
        for module_name, module in list(sys.modules.items())
        if _in(package, module_name) and module_name != package
    )


def _assigned_in_init(package: str) -> set[str]:
    """Names the package's ``__init__.py`` assigns at its top level."""
    tree = ast.parse(Path(importlib.import_module(package).__file__).read_text())
    return {
        target.id
        for node in tree.body
        if isinstance(node, ast.Assign | ast.AnnAssign)
        for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
        if isinstance(target, ast.Name)
    }


@pytest.mark.parametrize(("package", "names"), PUBLIC_API, ids=[p for p, _ in PUBLIC_API])
def test_public_names_are_frozen(package, names):
    module = importlib.import_module(package)
    assert names == sorted(names), "keep the frozen list sorted"
    assert sorted(module.__all__) == names
    assert len(set(module.__all__)) == len(module.__all__), f"{package}.__all__ repeats a name"
    for name in names:
        assert hasattr(module, name), f"{package} exports {name} but has no such name"
    unlisted = sorted(
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and name not in module.__all__
        and _defined_in(package, name, value)
    )
    assert unlisted == [], f"{package} defines public names missing from __all__: {unlisted}"


def _imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def test_the_round_loop_imports_neither_torch_nor_matplotlib():
    files = sorted(FEDERATION_SRC.rglob("*.py"))
    assert len(files) >= 3, f"no federation sources under {FEDERATION_SRC}"
    offenders = {
        str(path.relative_to(FEDERATION_SRC)): sorted(roots & {"torch", "matplotlib"})
        for path in files
        if (roots := _imported_roots(path)) & {"torch", "matplotlib"}
    }
    assert offenders == {}
