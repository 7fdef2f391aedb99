"""Composable fusion transforms (optax style): reducers, robust rules, server optimizers,
differential privacy, and the ``chain`` that composes them."""

from fedfuse.fusion._base import (
    FusionError,
    FusionTransform,
    Update,
    apply_update,
    chain,
    fuse,
    stateless,
    with_info,
)
from fedfuse.fusion._doc2vec import doc2vec_fusion
from fedfuse.fusion._matching import (
    Layer,
    align,
    average,
    classwise_fusion,
    infer_layers,
    matched_average,
    matched_fusion,
)
from fedfuse.fusion._mean import fedavg, iter_avg, weighted_mean
from fedfuse.fusion._privacy import (
    adaptive_clip,
    add_gaussian_noise,
    dp_mean,
    gaussian_noise,
    tree_aggregation_noise,
    tree_levels,
)
from fedfuse.fusion._registry import FUSIONS, check_fusion_size, fusion_params, get_fusion
from fedfuse.fusion._robust import (
    clip_by_norm,
    krum,
    krum_select,
    median,
    multi_krum,
    trimmed_mean,
)
from fedfuse.fusion._server import server_adagrad, server_adam, server_momentum, server_yogi
from fedfuse.fusion._spec import FusionSpec
from fedfuse.fusion._staleness import scale_by_staleness, staleness_weight

__all__ = [
    "FusionSpec",
    "adaptive_clip",
    "add_gaussian_noise",
    "dp_mean",
    "gaussian_noise",
    "tree_aggregation_noise",
    "tree_levels",
    "apply_update",
    "scale_by_staleness",
    "staleness_weight",
    "with_info",
    "Layer",
    "align",
    "average",
    "classwise_fusion",
    "doc2vec_fusion",
    "infer_layers",
    "matched_average",
    "matched_fusion",
    "FUSIONS",
    "check_fusion_size",
    "FusionError",
    "FusionTransform",
    "Update",
    "chain",
    "clip_by_norm",
    "fedavg",
    "fuse",
    "fusion_params",
    "get_fusion",
    "iter_avg",
    "krum",
    "krum_select",
    "median",
    "multi_krum",
    "server_adagrad",
    "server_adam",
    "server_momentum",
    "server_yogi",
    "stateless",
    "trimmed_mean",
    "weighted_mean",
]
