"""Local training configuration: plain data that travels with every train task."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

__all__ = ["TrainConfig"]


@dataclass(frozen=True)
class TrainConfig:
    """How a party trains locally in one round.

    Stored as given and validated where it is used (the optimizer name when the optimizer is
    built, the numbers when training starts), so a config can be printed, saved and swept.
    ``seed`` fixes the batch order and dropout of one local run; the round loop derives a
    different seed per party and round from the federation's seed.
    """

    epochs: int = 1
    batch_size: int = 32
    optimizer: str = "sgd"
    learning_rate: float = 0.01
    seed: int | None = None

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
