"""A sans-I/O party: local data plus a model adapter; answers tasks, never opens a socket."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from fedfuse.data import ArrayDataset, PartyData
from fedfuse.fusion import Update
from fedfuse.models import TrainConfig
from fedfuse.party._tasks import EvaluateTask, Evaluation, Reply, Task, TaskError, TrainTask
from fedfuse.weights import Weights, WeightsMismatchError, subtract

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
    """

    def __init__(self, adapter: ModelAdapter, data: PartyData, party_id: str = "") -> None:
        self.adapter = adapter
        self.data = data
        self.party_id = party_id

    def handle(self, task: Task) -> Reply:
        try:
            if isinstance(task, TrainTask):
                return self._train(task)
            if isinstance(task, EvaluateTask):
                return self._evaluate(task)
            return TaskError(f"unknown task type {type(task).__name__}")
        except (ValueError, WeightsMismatchError, RuntimeError) as exc:
            return TaskError(f"{type(exc).__name__}: {exc}")

    def _train(self, task: TrainTask) -> Update:
        self.adapter.set_weights(task.weights)
        metrics = self.adapter.fit(self.data.train, task.config)
        local = self.adapter.get_weights()
        weights = subtract(local, task.weights) if task.send_delta else local
        return Update(
            weights, len(self.data.train), metrics, is_delta=task.send_delta, party_id=self.party_id
        )

    def _evaluate(self, task: EvaluateTask) -> Reply:
        data = self.data.test if task.split == "test" else self.data.train
        if data is None or len(data) == 0:
            return TaskError(f"party has no {task.split} data")
        self.adapter.set_weights(task.weights)
        return Evaluation(len(data), self.adapter.evaluate(data))
