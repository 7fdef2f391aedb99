"""Local training configuration: plain data that travels with every train task."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from fedfuse.weights import CODECS

__all__ = ["TrainConfig"]


@dataclass(frozen=True)
class TrainConfig:
    """How a party trains locally in one round, and how it sends its update back.

    Stored as given and validated where it is used (the optimizer name when the optimizer is
    built, the numbers when training starts), so a config can be printed, saved and swept.
    ``seed`` fixes the batch order and dropout of one local run; the round loop derives a
    different seed per party and round from the federation's seed.

    Local recipe and reply policy (all off by default):

    - ``proximal_mu``: FedProx's proximal term ``mu/2 ||w - w_global||^2`` (Li et al., MLSys
      2020); ``w_global`` is the model the party starts the round from.
    - ``compression``: codec for the delta on the wire, one of ``none``, ``fp16``, ``int8``,
      ``topk`` (keeping a ``topk_fraction`` of each tensor's entries); with
      ``error_feedback`` a party adds what compression dropped to its next delta.
    - ``skip_relative_norm``: a party whose ``||delta|| / ||w_global||`` is below this sends a
      small "skipped" reply instead of its delta; ``skip_cosine``: likewise when the cosine
      similarity of its delta to a reference direction is above this. ``skip_cosine_to``
      names the reference: ``last_sent``, the last delta the party sent, or ``global``, how
      the global model moved since the party's previous task (its update then repeats what
      the federation already does; a party whose data differs keeps sending). A party never
      skips more than ``max_consecutive_skips`` rounds in a row: when every party skips, the
      global model stands still and the same deltas would be skipped forever.
    """

    epochs: int = 1
    batch_size: int = 32
    optimizer: str = "sgd"
    learning_rate: float = 0.01
    seed: int | None = None
    proximal_mu: float = 0.0
    compression: str = "none"
    topk_fraction: float = 0.01
    error_feedback: bool = True
    skip_relative_norm: float = 0.0
    skip_cosine: float | None = None
    skip_cosine_to: str = "last_sent"
    max_consecutive_skips: int = 3

    def with_seed(self, seed: int) -> TrainConfig:
        return replace(self, seed=seed)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first out-of-range field."""
        if not isinstance(self.epochs, int) or self.epochs < 1:
            raise ValueError(f"epochs must be an integer >= 1, got {self.epochs!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {self.batch_size!r}")
        if not (isinstance(self.learning_rate, int | float) and self.learning_rate > 0):
            raise ValueError(f"learning_rate must be a number > 0, got {self.learning_rate!r}")
        if not (isinstance(self.proximal_mu, int | float) and self.proximal_mu >= 0):
            raise ValueError(f"proximal_mu must be a number >= 0, got {self.proximal_mu!r}")
        if self.compression not in CODECS:
            raise ValueError(
                f"unknown compression {self.compression!r}; choose one of: {', '.join(CODECS)}"
            )
        if not (isinstance(self.topk_fraction, int | float) and 0 < self.topk_fraction <= 1):
            raise ValueError(f"topk_fraction must be in (0, 1], got {self.topk_fraction!r}")
        if not (isinstance(self.skip_relative_norm, int | float) and self.skip_relative_norm >= 0):
            raise ValueError(
                f"skip_relative_norm must be a number >= 0, got {self.skip_relative_norm!r}"
            )
        if self.skip_cosine is not None and not (
            isinstance(self.skip_cosine, int | float) and -1 <= self.skip_cosine <= 1
        ):
            raise ValueError(f"skip_cosine must be in [-1, 1] or None, got {self.skip_cosine!r}")
        if self.skip_cosine_to not in ("last_sent", "global"):
            raise ValueError(
                f"skip_cosine_to must be 'last_sent' or 'global', got {self.skip_cosine_to!r}"
            )
        if (
            isinstance(self.max_consecutive_skips, bool)
            or not isinstance(self.max_consecutive_skips, int)
            or self.max_consecutive_skips < 0
        ):
            raise ValueError(
                f"max_consecutive_skips must be an integer >= 0, got {self.max_consecutive_skips!r}"
            )
