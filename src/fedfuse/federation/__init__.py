"""The round loop: sample → dispatch → gather → validate → fuse → evaluate → record.

One ``Federation`` runs synchronous rounds or buffered (FedBuff) aggregation, as its
``Aggregation`` policy says, over any ``PartyPool``. No torch or matplotlib here: the recipes
built on it (``simulate``, the TFF-style process, the three uses, baselines, plots) live one
floor up, in ``fedfuse.recipes``.
"""

from fedfuse.federation._accountant import PrivacyAccountant
from fedfuse.federation._checkpoint import (
    Checkpoint,
    CheckpointError,
    fsync_directory,
    load_checkpoint,
    save_checkpoint,
    write_synced,
)
from fedfuse.federation._federation import Evaluator, Federation, PrivacyBudgetExceeded
from fedfuse.federation._metrics import WeightedMetrics
from fedfuse.federation._policy import Aggregation, Sampling
from fedfuse.federation._privacy import (
    SUM_FUSIONS,
    Privacy,
    SecureAggregation,
    privacy_problem,
    private_fusion,
)
from fedfuse.federation._round import (
    RoundResult,
    evaluate_parties,
    fold_replies,
    fuse_safely,
    screen_reply,
    train_round,
)
from fedfuse.federation._sampling import derive_seed, sample_parties, sampled_count
from fedfuse.federation._secure_round import secure_round
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
    "SUM_FUSIONS",
    "UPDATE_NORM_FLOOR",
    "Aggregation",
    "Checkpoint",
    "CheckpointError",
    "Evaluator",
    "Federation",
    "Privacy",
    "PrivacyAccountant",
    "PrivacyBudgetExceeded",
    "RoundResult",
    "Sampling",
    "SecureAggregation",
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
]
