"""The party protocol's messages survive the trip: every task and reply, and bad metadata."""

import json

import numpy as np
import pytest

from fedfuse.fusion import Update
from fedfuse.models import TrainConfig
from fedfuse.party import EvaluateTask, Evaluation, Skipped, TaskError, TrainTask
from fedfuse.runtime import PendingTask
from fedfuse.runtime._wire import (
    WireFormatError,
    decode_meta,
    reply_from_wire,
    reply_to_wire,
    task_from_wire,
    task_to_wire,
)
from fedfuse.weights import to_bytes

W = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(2, np.float32)}


def _trip_task(task):
    meta, weights = task_to_wire(PendingTask(7, task))
    return task_from_wire(decode_meta(json.dumps(meta)), to_bytes(weights))


def test_tasks_round_trip():
    config = TrainConfig(epochs=3, batch_size=8, optimizer="adam", learning_rate=0.5, seed=11)
    back = _trip_task(TrainTask(4, W, config, send_delta=False))
    assert back.task_id == 7 and back.task.round == 4 and back.task.config == config
    assert back.task.send_delta is False
    np.testing.assert_array_equal(back.task.weights["a"], W["a"])
    back = _trip_task(EvaluateTask(2, W, "train"))
    assert isinstance(back.task, EvaluateTask) and back.task.split == "train"


def _trip_reply(reply):
    meta, weights = reply_to_wire(reply)
    body = to_bytes(weights) if weights is not None else b""
    return reply_from_wire(decode_meta(json.dumps(meta)), body, "p1")


def test_replies_round_trip():
    up = _trip_reply(Update(W, 12, {"loss": 0.5}, is_delta=True))
    assert up.num_examples == 12 and up.party_id == "p1" and up.metrics == {"loss": 0.5}
    np.testing.assert_array_equal(up.weights["b"], W["b"])
    assert _trip_reply(Evaluation(3, {"accuracy": 1.0})) == Evaluation(3, {"accuracy": 1.0})
    assert _trip_reply(TaskError("disk full")) == TaskError("disk full")
    skipped = _trip_reply(Skipped(9, {"loss": 0.1}, "relative norm 0.001 < 0.01"))
    assert skipped == Skipped(9, {"loss": 0.1}, "relative norm 0.001 < 0.01")


@pytest.mark.parametrize(
    ("meta", "body", "message"),
    [
        ({"kind": "update", "num_examples": "5"}, to_bytes(W), "'num_examples' is missing"),
        ({"kind": "update", "num_examples": True}, to_bytes(W), "'num_examples'"),
        ({"kind": "update", "num_examples": 5, "metrics": {"a": "x"}}, to_bytes(W), "metrics"),
        ({"kind": "update", "num_examples": 5}, b"\x80\x04pickle", "safetensors"),
        ({"kind": "surprise"}, b"", "unknown reply kind 'surprise'"),
    ],
)
def test_bad_replies_name_the_problem(meta, body, message):
    with pytest.raises(WireFormatError, match=message):
        reply_from_wire(meta, body)


def test_bad_meta_and_tasks():
    with pytest.raises(WireFormatError, match="missing X-Fedfuse-Meta"):
        decode_meta(None)
    with pytest.raises(WireFormatError, match="JSON object"):
        decode_meta("[1, 2]")
    with pytest.raises(WireFormatError, match="unknown task kind"):
        task_from_wire({"task_id": 1, "round": 1, "kind": "dance"}, to_bytes(W))
    with pytest.raises(WireFormatError, match="bad train config"):
        task_from_wire({"task_id": 1, "round": 1, "kind": "train", "config": {"x": 1}}, to_bytes(W))
