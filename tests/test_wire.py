"""The party protocol's messages survive the trip: every task and reply, and bad metadata."""

import json
import re

import numpy as np
import pytest

from fedfuse.fusion import Update
from fedfuse.models import TrainConfig
from fedfuse.party import EvaluateTask, Evaluation, Malformed, Skipped, TaskError, TrainTask
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
        ({"kind": "update", "num_examples": 5, "is_delta": "no"}, to_bytes(W), "'is_delta'"),
        ({"kind": "skipped", "num_examples": 1.5}, b"", "malformed skipped reply"),
        ({"kind": "evaluation", "num_examples": 3, "metrics": [1]}, b"", "'metrics'"),
    ],
)
def test_bad_fields_of_a_reply_are_a_malformed_reply(meta, body, message):
    reply = reply_from_wire(meta, body, "p1")
    assert isinstance(reply, Malformed) and re.search(message, reply.reason), reply


@pytest.mark.parametrize("kind", ["surprise", None, ["update"]])
def test_unknown_reply_kinds_are_a_protocol_error(kind):
    with pytest.raises(WireFormatError, match="unknown reply kind"):
        reply_from_wire({"kind": kind}, b"")


def test_meta_that_json_cannot_hold_is_a_protocol_error():
    with pytest.raises(WireFormatError, match="not valid JSON"):
        decode_meta('{"num_examples": ' + "9" * 5000 + "}")
    with pytest.raises(WireFormatError, match="not valid JSON"):
        decode_meta("[" * 100_000 + "]" * 100_000)


def test_bad_meta_and_tasks():
    with pytest.raises(WireFormatError, match="missing X-Fedfuse-Meta"):
        decode_meta(None)
    with pytest.raises(WireFormatError, match="JSON object"):
        decode_meta("[1, 2]")
    with pytest.raises(WireFormatError, match="unknown task kind"):
        task_from_wire({"task_id": 1, "round": 1, "kind": "dance"}, to_bytes(W))
    with pytest.raises(WireFormatError, match="'send_delta' must be true or false"):
        task_from_wire(
            {"task_id": 1, "round": 1, "kind": "train", "config": {}, "send_delta": "false"},
            to_bytes(W),
        )
    with pytest.raises(WireFormatError, match="bad train config"):
        task_from_wire({"task_id": 1, "round": 1, "kind": "train", "config": {"x": 1}}, to_bytes(W))
