"""Parties: sans-I/O data holders that answer train and evaluate tasks."""

from fedfuse.party._client import ClientParty, NumPyClient
from fedfuse.party._party import ModelAdapter, Party
from fedfuse.party._personal import PersonalAdapter, head_layer, split_personal
from fedfuse.party._secure import SecureEncoding, decode_sum, encode_update, vector_size
from fedfuse.party._tasks import (
    Evaluated,
    EvaluateTask,
    Evaluation,
    Malformed,
    Reply,
    SecureReply,
    SecureTask,
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
    "Evaluated",
    "Evaluation",
    "Malformed",
    "ModelAdapter",
    "Party",
    "Reply",
    "SecureEncoding",
    "SecureReply",
    "SecureTask",
    "Skipped",
    "Task",
    "TaskError",
    "TrainTask",
    "Update",
    "decode_sum",
    "encode_update",
    "vector_size",
]
