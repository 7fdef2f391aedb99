"""Parties built from a user's own training code, as Flower users write it."""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from fedfuse.fusion import Update
from fedfuse.party._tasks import EvaluateTask, Evaluation, Reply, Task, TaskError, TrainTask
from fedfuse.weights import subtract

__all__ = ["ClientParty", "NumPyClient"]


class NumPyClient(Protocol):
    """Flower's ``NumPyClient`` shape: parameters are a list of arrays in a fixed order."""

    def fit(
        self, parameters: list[np.ndarray], config: dict[str, Any]
    ) -> tuple[list[np.ndarray], int, dict[str, float]]: ...

    def evaluate(
        self, parameters: list[np.ndarray], config: dict[str, Any]
    ) -> tuple[float, int, dict[str, float]]: ...


class ClientParty:
    """A sans-I/O party around a Flower-style client object.

    The global weights arrive named; the client sees them as a list in name order (the order
    of ``Weights``), which is also how its ``fit`` must return them. ``config`` carries the
    round, epochs, batch_size, optimizer, learning_rate and seed of the task.
    """

    def __init__(self, client: NumPyClient, party_id: str = "") -> None:
        self.client = client
        self.party_id = party_id

    def handle(self, task: Task) -> Reply:
        names = list(task.weights)
        params = [task.weights[n] for n in names]
        try:
            if isinstance(task, TrainTask):
                config = {"round": task.round, **task.config.to_dict()}
                new, num_examples, metrics = self.client.fit(params, config)
                if len(new) != len(names):
                    return TaskError(f"fit returned {len(new)} arrays, expected {len(names)}")
                local = {
                    n: np.asarray(a, dtype=task.weights[n].dtype)
                    for n, a in zip(names, new, strict=True)
                }
                weights = subtract(local, task.weights) if task.send_delta else local
                return Update(
                    weights, int(num_examples), dict(metrics), task.send_delta, self.party_id
                )
            if isinstance(task, EvaluateTask):
                loss, num_examples, metrics = self.client.evaluate(params, {"round": task.round})
                return Evaluation(int(num_examples), {"loss": float(loss), **metrics})
        except (ValueError, RuntimeError, TypeError) as exc:
            return TaskError(f"{type(exc).__name__}: {exc}")
        return TaskError(f"unknown task type {type(task).__name__}")
