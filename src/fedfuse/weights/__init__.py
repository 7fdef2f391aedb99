"""Named arrays (``Weights``): arithmetic, deltas, safetensors (de)serialization, codecs."""

from fedfuse.weights._codecs import CODECS, Codec, CodecError, encode_with_feedback, get_codec
from fedfuse.weights._io import (
    WeightsFormatError,
    from_buffer,
    from_bytes,
    load_weights,
    save_weights,
    to_bytes,
)
from fedfuse.weights._limits import SizeLimitError, SizeLimits
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
]
