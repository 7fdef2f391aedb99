"""Parties: sans-I/O data holders that answer train and evaluate tasks."""

from fedfuse.party._client import ClientParty, NumPyClient
from fedfuse.party._party import ModelAdapter, Party
from fedfuse.party._personal import PersonalAdapter, head_layer, split_personal
from fedfuse.party._tasks import (
    EvaluateTask,
    Evaluation,
    Malformed,
    Reply,
    Skipped,
    Task,
    TaskError,
    TrainTask,
    Update,
)

__all__ = [
    "PersonalAdapter",
    "head_layer",
    "split_personal",
    "ClientParty",
    "NumPyClient",
    "EvaluateTask",
    "Evaluation",
    "Malformed",
    "ModelAdapter",
    "Party",
    "Reply",
    "Skipped",
    "Task",
    "TaskError",
    "TrainTask",
    "Update",
]
