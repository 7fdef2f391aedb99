"""Named arrays (``Weights``): arithmetic, deltas and safetensors (de)serialization."""

from fedfuse.weights._io import (
    WeightsFormatError,
    from_bytes,
    load_weights,
    save_weights,
    to_bytes,
)
from fedfuse.weights._named import (
    Weights,
    WeightsMismatchError,
    add,
    add_scaled_,
    as_weights,
    check_compatible,
    global_norm,
    num_bytes,
    scale,
    subtract,
    zeros_like,
)

__all__ = [
    "Weights",
    "WeightsFormatError",
    "WeightsMismatchError",
    "add",
    "add_scaled_",
    "as_weights",
    "check_compatible",
    "from_bytes",
    "global_norm",
    "load_weights",
    "num_bytes",
    "save_weights",
    "scale",
    "subtract",
    "to_bytes",
    "zeros_like",
]
