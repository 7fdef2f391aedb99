"""A sans-I/O party: local data plus a model adapter; answers tasks, never opens a socket."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Protocol

import numpy as np

from fedfuse.data import ArrayDataset, PartyData
from fedfuse.fusion import Update
from fedfuse.models import TrainConfig, dp_sgd_epsilon, dp_sgd_steps
from fedfuse.party._secure import encode_update
from fedfuse.party._tasks import (
    Evaluated,
    EvaluateTask,
    Evaluation,
    Reply,
    SecureReply,
    SecureTask,
    Skipped,
    Task,
    TaskError,
    TrainTask,
)
from fedfuse.secure import SecAggError, SecAggParty
from fedfuse.weights import (
    Weights,
    WeightsMismatchError,
    encode_with_feedback,
    get_codec,
    global_norm,
    subtract,
)

__all__ = ["DP_SGD_DELTA", "ModelAdapter", "Party", "evaluate_then_train"]

DP_SGD_DELTA = 1e-5  # the delta a party's DP-SGD epsilon is reported at


def evaluate_then_train(handle: Callable[[Task], Reply], task: TrainTask) -> Evaluated:
    """Answer a ``TrainTask`` with ``evaluate`` through ``handle`` (a party's own): evaluate the
    task's weights on the split first, then train from the same weights, and reply both.

    The evaluation sees the global model exactly as a separate ``EvaluateTask`` would, so its
    metrics are the same; its failure (no test data) is its own and training still runs."""
    assert task.evaluate is not None
    evaluation = handle(EvaluateTask(task.round, task.weights, task.evaluate))
    if not isinstance(evaluation, Evaluation | TaskError):
        evaluation = TaskError(f"evaluation gave {type(evaluation).__name__}, not metrics")
    return Evaluated(handle(dataclasses.replace(task, evaluate=None)), evaluation)


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

    With ``TrainConfig.dp_sgd_noise_multiplier > 0`` the party trains with DP-SGD (record-level
    privacy, on adapters that support it) and adds its own ``dp_sgd_epsilon`` so far (at
    delta ``DP_SGD_DELTA``, over every step it has taken) to its training metrics.

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
        self.secure_session: SecAggParty | None = None
        self.held: Update | None = None  # trained, waiting for a secure round (buffered)
        self.dp_sgd_steps = 0

    def handle(self, task: Task) -> Reply:
        if isinstance(task, TrainTask) and task.evaluate is not None:
            return evaluate_then_train(self.handle, task)
        try:
            if isinstance(task, TrainTask) and task.hold:
                return self._hold(task)
            if isinstance(task, TrainTask):
                return self._train(task)
            if isinstance(task, EvaluateTask):
                return self._evaluate(task)
            if isinstance(task, SecureTask):
                return self._secure(task)
            return TaskError(f"unknown task type {type(task).__name__}")
        except SecAggError as exc:
            self.secure_session = None  # an aborted session is over for this party
            return TaskError(f"secure aggregation: {exc}")
        except (ValueError, WeightsMismatchError, RuntimeError) as exc:
            return TaskError(f"{type(exc).__name__}: {exc}")

    def _hold(self, task: TrainTask) -> Reply:
        reply = self._train(task)
        if not isinstance(reply, Update):
            return reply
        self.held = reply
        return SecureReply("trained", {}, dict(reply.metrics))

    def _secure(self, task: SecureTask) -> Reply:
        """One stage of secure aggregation: train and start a session at ``advertise``, then
        let the session answer (it refuses stages out of order, replays and other sessions)."""
        metrics: dict[str, float] = {}
        if task.stage == "advertise":
            if task.config is None or task.encoding is None:
                return TaskError("the advertise stage needs a config and an encoding")
            task.encoding.check("encoding.")
            if task.config.compression != "none":
                return TaskError("secure aggregation sends uncompressed updates")
            if task.weights is not None:
                reply: Reply = self._train(TrainTask(task.round, task.weights, task.config))
            elif self.held is not None:
                reply, self.held = self.held, None
            else:
                return TaskError("the advertise stage has no weights and no update is held")
            if not isinstance(reply, Update):
                self.secure_session = None
                return reply  # a skipped party takes no part in the round
            vector = encode_update(reply.weights, reply.num_examples, task.encoding)
            self.secure_session = SecAggParty(self.party_id, vector)
            metrics = dict(reply.metrics)
        elif self.secure_session is None:
            return TaskError(f"no secure aggregation session for stage {task.stage!r}")
        message = self.secure_session.handle(task.request)
        if task.stage == "unmask":
            self.secure_session = None
        return SecureReply(task.stage, message, metrics)

    def _train(self, task: TrainTask) -> Update | Skipped:
        config = task.config
        private = config.dp_sgd_noise_multiplier > 0
        if private and not getattr(self.adapter, "supports_dp_sgd", False):
            raise ValueError(
                f"dp_sgd_noise_multiplier: {type(self.adapter).__name__} does not train with "
                "DP-SGD (TorchAdapter does)"
            )
        self.adapter.set_weights(task.weights)
        metrics = self.adapter.fit(self.data.train, config)
        if private:
            metrics = {**metrics, "dp_sgd_epsilon": self._dp_sgd_epsilon(config)}
        return self.trained(task, self.adapter.get_weights(), metrics)

    def trained(
        self, task: TrainTask, local: Weights, metrics: dict[str, float]
    ) -> Update | Skipped:
        """What this party sends for ``task`` once its model trained to ``local`` (``metrics``
        from the training): the delta or the weights, counted, maybe skipped or compressed,
        and the state that needs (skips in a row, last delta, residual) kept. A pool that
        trains parties its own way (``CohortPool``) answers through this too."""
        config = task.config
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

    def _dp_sgd_epsilon(self, config: TrainConfig) -> float:
        n = len(self.data.train)
        self.dp_sgd_steps += dp_sgd_steps(n, config)
        rate = min(1.0, config.batch_size / n)
        return dp_sgd_epsilon(rate, config.dp_sgd_noise_multiplier, self.dp_sgd_steps, DP_SGD_DELTA)

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
        if task.split not in ("test", "train"):
            return TaskError(f"split must be 'test' or 'train', got {str(task.split)[:64]!r}")
        data = self.data.test if task.split == "test" else self.data.train
        if data is None or len(data) == 0:
            return TaskError(f"party has no {task.split} data")
        self.adapter.set_weights(task.weights)
        return Evaluation(len(data), self.adapter.evaluate(data))
