"""A sans-I/O party: local data plus a model adapter; answers tasks, never opens a socket."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from fedfuse.data import ArrayDataset, PartyData
from fedfuse.fusion import Update
from fedfuse.models import TrainConfig
from fedfuse.party._tasks import (
    EvaluateTask,
    Evaluation,
    Reply,
    Skipped,
    Task,
    TaskError,
    TrainTask,
)
from fedfuse.weights import (
    Weights,
    WeightsMismatchError,
    encode_with_feedback,
    get_codec,
    global_norm,
    subtract,
)

__all__ = ["ModelAdapter", "Party"]


class ModelAdapter(Protocol):
    """What a party needs from a model (``TorchAdapter`` is one)."""

    def get_weights(self) -> Weights: ...
    def set_weights(self, weights: Weights) -> None: ...
    def fit(self, data: ArrayDataset, config: TrainConfig) -> dict[str, float]: ...
    def evaluate(self, data: ArrayDataset) -> dict[str, float]: ...
    def predict(self, x: np.ndarray) -> np.ndarray: ...


class Party:
    """One data holder. ``handle(task)`` returns a reply; errors become ``TaskError`` replies.

    Several parties may share one adapter (the simulation does): a task always starts by loading
    the task's weights, so nothing leaks from one party's task to the next.

    What a party remembers between rounds lives here, not in the adapter: the residual that
    compression dropped (error feedback), the last delta it sent or the global model it last
    started from (for ``skip_cosine``) and how many rounds in a row it skipped. A skipped
    delta is dropped, not kept for later: the next round's training starts from a global model
    that already moved the same way (or, when nothing was fused, from the same model, and
    would only repeat it).
    """

    def __init__(self, adapter: ModelAdapter, data: PartyData, party_id: str = "") -> None:
        self.adapter = adapter
        self.data = data
        self.party_id = party_id
        self.residual: Weights | None = None
        self.last_sent: Weights | None = None
        self.last_global: Weights | None = None
        self.skips_in_a_row = 0

    def handle(self, task: Task) -> Reply:
        try:
            if isinstance(task, TrainTask):
                return self._train(task)
            if isinstance(task, EvaluateTask):
                return self._evaluate(task)
            return TaskError(f"unknown task type {type(task).__name__}")
        except (ValueError, WeightsMismatchError, RuntimeError) as exc:
            return TaskError(f"{type(exc).__name__}: {exc}")

    def _train(self, task: TrainTask) -> Update | Skipped:
        config = task.config
        self.adapter.set_weights(task.weights)
        metrics = self.adapter.fit(self.data.train, config)
        local = self.adapter.get_weights()
        num_examples = len(self.data.train)
        if config.count_examples == "processed":  # TFF's count: over all local epochs
            num_examples *= config.epochs
        info = {}
        if config.share_label_counts:
            info["label_counts"] = self.data.train.label_counts().tolist()
        if not task.send_delta:
            return Update(local, num_examples, metrics, False, self.party_id, info)
        delta = subtract(local, task.weights)
        reason = self._skip_reason(delta, task.weights, config)
        if config.skip_cosine is not None and config.skip_cosine_to == "global":
            self.last_global = task.weights
        if reason is not None:
            self.skips_in_a_row += 1
            return Skipped(num_examples, metrics, reason)
        self.skips_in_a_row = 0
        if config.skip_cosine is not None and config.skip_cosine_to == "last_sent":
            self.last_sent = delta
        codec = get_codec(config.compression, topk_fraction=config.topk_fraction)
        if config.compression != "none" and config.error_feedback:
            encoded, self.residual = encode_with_feedback(codec, delta, self.residual)
        else:
            encoded = codec.encode(delta)
        return Update(encoded, num_examples, metrics, True, self.party_id, info)

    def _skip_reason(self, delta: Weights, start: Weights, config: TrainConfig) -> str | None:
        """Why ``delta`` says too little to be worth sending, or ``None`` to send it."""
        skipping = config.skip_relative_norm > 0 or config.skip_cosine is not None
        if not skipping or self.skips_in_a_row >= config.max_consecutive_skips:
            return None  # (no norms computed: this runs for every party in every round)
        norm = global_norm(delta)
        if config.skip_relative_norm > 0:
            relative = norm / max(global_norm(start), 1e-12)
            if relative < config.skip_relative_norm:
                return f"relative update norm {relative:.3g} < {config.skip_relative_norm:g}"
        if config.skip_cosine is None:
            return None
        if config.skip_cosine_to == "global":
            if self.last_global is None:
                return None
            reference, what = subtract(start, self.last_global), "how the global model moved"
        else:
            reference, what = self.last_sent, "the last update sent"
        reference_norm = global_norm(reference) if reference is not None else 0.0
        if reference_norm == 0.0:  # nothing to compare with (or nothing was fused since)
            return None
        dot = sum(float(np.vdot(delta[n], reference[n])) for n in delta)
        cosine = dot / max(norm * reference_norm, 1e-12)
        if cosine > config.skip_cosine:
            return f"cosine to {what} {cosine:.3g} > {config.skip_cosine:g}"
        return None

    def _evaluate(self, task: EvaluateTask) -> Reply:
        data = self.data.test if task.split == "test" else self.data.train
        if data is None or len(data) == 0:
            return TaskError(f"party has no {task.split} data")
        self.adapter.set_weights(task.weights)
        return Evaluation(len(data), self.adapter.evaluate(data))
