"""A federation's configuration as the service receives it, checked field by field."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from fedfuse.federation import (
    DEFAULT_MAX_UPDATE_RATIO,
    check_sampling,
    check_update_bounds,
    sampled_count,
)
from fedfuse.fusion import check_fusion_size, get_fusion
from fedfuse.models import MODELS, TrainConfig, get_model_type, keras_optimizer, resolve_optimizer

__all__ = ["FederationSpec", "SpecError"]


class SpecError(ValueError):
    """A federation setting is missing or out of range; the message names it."""


@dataclass(frozen=True)
class FederationSpec:
    """Everything a federation is started with (the Model Fusion form fields and more).

    The model comes from exactly one source: an uploaded ``model_file`` (``model_type``
    pytorch, ...), a zoo ``model`` name with ``input_shape`` and ``num_classes``, or uploaded
    ``initial_weights`` (then the service only fuses, and every party brings its own model).

    ``max_update_norm`` and ``max_update_ratio`` bound the updates the round loop accepts
    (see ``fedfuse.Federation``); the ratio bound is on by default, 0 turns either off.
    """

    fusion_algorithm: str = "fedavg"
    model_type: str = "pytorch"
    num_parties: int = 2
    rounds: int = 5
    epochs: int = 1
    learning_rate: float = 0.01
    optimizer: str = "sgd"
    batch_size: int = 32
    fraction: float | None = None
    count: int | None = None
    quorum: int = 1
    round_timeout: float = 600.0
    seed: int = 0
    model: str | None = None
    input_shape: tuple[int, ...] | None = None
    num_classes: int | None = None
    auto_start: bool = False
    max_update_norm: float | None = None
    max_update_ratio: float | None = DEFAULT_MAX_UPDATE_RATIO
    fusion_params: dict[str, Any] = dataclasses.field(default_factory=dict)
    train_options: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["input_shape"] = list(self.input_shape) if self.input_shape else None
        return d

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> FederationSpec:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise SpecError(f"unknown setting(s) {unknown}")
        values = dict(values)
        if values.get("input_shape") is not None:
            values["input_shape"] = tuple(int(d) for d in values["input_shape"])
        return cls(**values)

    def train_config(self) -> TrainConfig:
        """How parties train: the tutorial's fields plus ``train_options`` (FedProx's
        ``proximal_mu``, ``compression``, the skip thresholds... any ``TrainConfig`` field)."""
        return TrainConfig(
            self.epochs, self.batch_size, self.optimizer, self.learning_rate, **self.train_options
        )

    def validate(self) -> None:
        """Raise ``SpecError`` naming the first bad setting."""
        try:
            get_fusion(self.fusion_algorithm, **self.fusion_params)
        except ValueError as exc:
            raise SpecError(f"fusion_algorithm: {exc}") from None
        fixed = {"epochs", "batch_size", "optimizer", "learning_rate", "seed"}
        allowed = {f.name for f in dataclasses.fields(TrainConfig)} - fixed
        unknown = sorted(set(self.train_options) - allowed)
        if unknown:
            raise SpecError(
                f"train_options: unknown {unknown}; allowed: {', '.join(sorted(allowed))}"
            )
        try:
            get_model_type(self.model_type)
        except ValueError as exc:
            raise SpecError(f"model_type: {exc}") from None
        try:
            if self.model_type == "keras":
                keras_optimizer(self.optimizer, 0.01)
            elif self.model_type != "doc2vec":  # gensim trains with its own rule
                resolve_optimizer(self.optimizer)
        except ValueError as exc:
            raise SpecError(f"optimizer: {exc}") from None
        for name in ("num_parties", "rounds", "epochs", "batch_size", "quorum"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise SpecError(f"{name} must be an integer >= 1, got {value!r}")
        if self.quorum > self.num_parties:
            raise SpecError(f"quorum={self.quorum} exceeds num_parties={self.num_parties}")
        if not (self.learning_rate > 0):
            raise SpecError(f"learning_rate must be > 0, got {self.learning_rate!r}")
        if not (0 < self.round_timeout <= 86400):
            raise SpecError(
                f"round_timeout must be in (0, 86400] seconds, got {self.round_timeout!r}"
            )
        try:
            check_sampling(self.fraction, self.count)
            per_round = sampled_count(self.num_parties, self.fraction, self.count)
            check_update_bounds(self.max_update_norm, self.max_update_ratio)
        except ValueError as exc:
            raise SpecError(str(exc)) from None
        try:
            check_fusion_size(self.fusion_algorithm, self.fusion_params, per_round)
        except ValueError as exc:
            raise SpecError(f"fusion_algorithm: {exc}") from None
        if self.model is not None:
            if self.model not in MODELS:
                raise SpecError(
                    f"model: unknown model {self.model!r}; choose one of: {', '.join(MODELS)}"
                )
            if not self.input_shape or any(d < 1 for d in self.input_shape):
                raise SpecError("input_shape is required with a zoo model, e.g. 1,28,28")
            if not self.num_classes or self.num_classes < 2:
                raise SpecError("num_classes must be an integer >= 2 with a zoo model")
        try:
            self.train_config().validate()
        except (TypeError, ValueError) as exc:
            raise SpecError(f"train_options: {exc}") from None
