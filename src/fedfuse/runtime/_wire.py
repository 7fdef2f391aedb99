"""Tasks and replies on the wire: JSON metadata plus a safetensors body. No pickle anywhere.

``task_to_wire`` / ``reply_to_wire`` split a task or reply into ``(meta, weights)``; the
transport sends ``meta`` as JSON (an HTTP header) and ``weights`` as safetensors bytes. The
``*_from_wire`` functions check every field and raise ``WireFormatError`` naming the problem,
except that ``reply_from_wire`` answers a reply of a known kind whose fields or body are bad
with a ``Malformed`` reply: the party did answer, and the round records its update as rejected
with the reason. What the numbers mean (a sane example count, finite metrics, the magnitude
of an update) is judged once, by the round loop's validation, for every transport.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from fedfuse.fusion import Update
from fedfuse.models import TrainConfig
from fedfuse.party import (
    Evaluated,
    EvaluateTask,
    Evaluation,
    Malformed,
    Reply,
    SecureEncoding,
    SecureReply,
    SecureTask,
    Skipped,
    Task,
    TaskError,
    TrainTask,
)
from fedfuse.runtime._remote import PendingTask
from fedfuse.secure import SecAggError, pack, unpack
from fedfuse.weights import Weights, WeightsFormatError, from_buffer, from_bytes

__all__ = [
    "WireFormatError",
    "decode_meta",
    "reply_from_wire",
    "reply_to_wire",
    "task_from_wire",
    "task_to_wire",
]


class WireFormatError(ValueError):
    """A message that does not follow the party protocol."""


def decode_meta(text: str | None) -> dict[str, Any]:
    if not text:
        raise WireFormatError("missing X-Fedfuse-Meta header (JSON metadata)")
    try:
        meta = json.loads(text)
    except (ValueError, RecursionError) as exc:  # bad JSON, a 5000-digit number, deep nesting
        raise WireFormatError(f"X-Fedfuse-Meta is not valid JSON: {str(exc)[:200]}") from None
    if not isinstance(meta, dict):
        raise WireFormatError("X-Fedfuse-Meta must be a JSON object")
    return meta


def _field(meta: dict[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    value = meta.get(name)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise WireFormatError(f"metadata field {name!r} is missing or not a {kind}")
    return value


def _weights(body: bytes | bytearray, *, copy: bool = True) -> Weights:
    try:
        return from_bytes(bytes(body)) if copy else from_buffer(body)
    except WeightsFormatError as exc:
        raise WireFormatError(str(exc)) from None


SECURE_MESSAGE = "fedfuse.secagg"  # the body tensor that carries a secure aggregation message
MAX_SECURE_MESSAGE = 1 << 22  # bytes of one packed message (shares for thousands of neighbours)


def _message_tensor(message: dict[str, Any]) -> np.ndarray:
    return np.frombuffer(pack(message), dtype=np.uint8)


def _message(weights: dict[str, np.ndarray]) -> dict[str, Any]:
    """The secure aggregation message in a body's ``SECURE_MESSAGE`` tensor (checked)."""
    tensor = weights.pop(SECURE_MESSAGE, None)
    if not isinstance(tensor, np.ndarray) or tensor.dtype != np.uint8 or tensor.ndim != 1:
        raise WireFormatError(f"a secure message needs a 1-D uint8 tensor {SECURE_MESSAGE!r}")
    try:
        return unpack(tensor.tobytes(), MAX_SECURE_MESSAGE)
    except SecAggError as exc:
        raise WireFormatError(f"bad secure aggregation message: {exc}") from None


def _secure_task_to_wire(task: SecureTask, meta: dict[str, Any]) -> tuple[dict, Weights]:
    meta |= {"kind": "secure", "stage": task.stage}
    weights = dict(task.weights or {})
    if SECURE_MESSAGE in weights:
        raise WireFormatError(f"a model parameter may not be called {SECURE_MESSAGE!r}")
    if task.config is not None:
        meta["config"] = task.config.to_dict()
    if task.encoding is not None:
        meta["encoding"] = task.encoding.to_dict()
    weights[SECURE_MESSAGE] = _message_tensor(task.request)
    return meta, weights


def _secure_task_from_wire(meta: dict[str, Any], weights: Weights, round_num: int) -> SecureTask:
    stage = _field(meta, "stage", str)
    weights = dict(weights)
    request = _message(weights)
    config = encoding = None
    try:
        if "config" in meta:
            config = TrainConfig(**_field(meta, "config", dict))
        if "encoding" in meta:
            encoding = SecureEncoding(**_field(meta, "encoding", dict))
    except TypeError as exc:
        raise WireFormatError(f"bad secure task settings: {exc}") from None
    return SecureTask(round_num, stage, request, weights or None, config, encoding)


def task_to_wire(pending: PendingTask) -> tuple[dict[str, Any], Weights]:
    task = pending.task
    meta: dict[str, Any] = {"task_id": pending.task_id, "round": task.round}
    if isinstance(task, SecureTask):
        return _secure_task_to_wire(task, meta)
    if isinstance(task, TrainTask):
        meta |= {"kind": "train", "config": task.config.to_dict(), "send_delta": task.send_delta}
        if task.hold:
            meta["hold"] = True
        if task.evaluate is not None:
            meta["evaluate"] = task.evaluate
    else:
        meta |= {"kind": "evaluate", "split": task.split}
    return meta, task.weights


SPLITS = ("test", "train")  # what a party can evaluate on


def _split(meta: dict[str, Any], name: str, default: str | None) -> Any:
    value = meta.get(name, default)
    if value is not default and value not in SPLITS:
        raise WireFormatError(f"metadata field {name!r} must be one of {', '.join(SPLITS)}")
    return value


def task_from_wire(meta: dict[str, Any], body: bytes) -> PendingTask:
    task_id = _field(meta, "task_id", int)
    round_num = _field(meta, "round", int)
    kind = meta.get("kind")
    weights = _weights(body)
    task: Task
    if kind == "train":
        try:
            config = TrainConfig(**_field(meta, "config", dict))
        except TypeError as exc:
            raise WireFormatError(f"bad train config: {exc}") from None
        send_delta, hold = meta.get("send_delta", True), meta.get("hold", False)
        for name, flag in (("send_delta", send_delta), ("hold", hold)):
            if not isinstance(flag, bool):
                raise WireFormatError(f"metadata field {name!r} must be true or false")
        evaluate = _split(meta, "evaluate", None)
        task = TrainTask(round_num, weights, config, send_delta, hold, evaluate)
    elif kind == "evaluate":
        task = EvaluateTask(round_num, weights, _split(meta, "split", "test"))
    elif kind == "secure":
        task = _secure_task_from_wire(meta, weights, round_num)
    else:
        raise WireFormatError(f"unknown task kind {kind!r}")
    return PendingTask(task_id, task)


def reply_to_wire(reply: Reply) -> tuple[dict[str, Any], Weights | None]:
    if isinstance(reply, Evaluated):  # the training reply, with the evaluation in its metadata
        meta, body = reply_to_wire(reply.reply)
        evaluation = reply.evaluation
        if isinstance(evaluation, Evaluation):
            meta["evaluation"] = {
                "num_examples": int(evaluation.num_examples),
                "metrics": {k: float(v) for k, v in evaluation.metrics.items()},
            }
        else:
            message = evaluation.message if isinstance(evaluation, TaskError) else evaluation.reason
            meta["evaluation"] = {"error": str(message)[:2000]}
        return meta, body
    if isinstance(reply, SecureReply):
        meta = {
            "kind": "secure",
            "stage": reply.stage,
            "metrics": {k: float(v) for k, v in reply.metrics.items()},
        }
        masked = reply.message.get("masked")
        small = {k: v for k, v in reply.message.items() if k != "masked"}
        body = {SECURE_MESSAGE: _message_tensor(small)}
        if masked is not None:
            body["masked"] = masked
        return meta, body
    if isinstance(reply, Update):
        meta = {
            "kind": "update",
            "num_examples": int(reply.num_examples),
            "metrics": {k: float(v) for k, v in reply.metrics.items()},
            "is_delta": reply.is_delta,
        }
        if reply.info:
            meta["info"] = {k: _plain(v) for k, v in reply.info.items()}
        return meta, reply.weights
    if isinstance(reply, Skipped):
        meta = {
            "kind": "skipped",
            "num_examples": int(reply.num_examples),
            "metrics": {k: float(v) for k, v in reply.metrics.items()},
            "reason": str(reply.reason)[:500],
        }
        return meta, None
    if isinstance(reply, Evaluation):
        meta = {
            "kind": "evaluation",
            "num_examples": int(reply.num_examples),
            "metrics": {k: float(v) for k, v in reply.metrics.items()},
        }
        return meta, None
    if isinstance(reply, Malformed):
        return {"kind": "error", "message": str(reply.reason)[:2000]}, None
    return {"kind": "error", "message": str(reply.message)[:2000]}, None


def _metrics(meta: dict[str, Any]) -> dict[str, float]:
    metrics = meta.get("metrics", {})
    if not isinstance(metrics, dict) or not all(
        isinstance(k, str) and isinstance(v, int | float) and not isinstance(v, bool)
        for k, v in metrics.items()
    ):
        raise WireFormatError("metadata field 'metrics' must map names to numbers")
    return {k: float(v) for k, v in metrics.items()}


MAX_INFO_VALUES = 100_000  # numbers in one update's side information (label counts...)


def _plain(value: Any) -> Any:
    return value.tolist() if hasattr(value, "tolist") else value


def _info(meta: dict[str, Any]) -> dict[str, Any]:
    """An update's side information: names -> a number or a flat list of finite numbers, at
    most ``MAX_INFO_VALUES`` numbers in all (the metadata header is bounded too)."""
    info = meta.get("info", {})
    if not isinstance(info, dict) or len(info) > 16:
        raise WireFormatError("metadata field 'info' must map at most 16 names to numbers")
    total = 0
    for name, value in info.items():
        values = value if isinstance(value, list) else [value]
        total += len(values)
        if (
            not isinstance(name, str)
            or total > MAX_INFO_VALUES
            or not all(
                isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
                for v in values
            )
        ):
            raise WireFormatError(
                f"metadata field 'info' must map names to finite numbers or lists of them "
                f"(at most {MAX_INFO_VALUES} numbers in all)"
            )
    return info


def _update(meta: dict[str, Any], body: bytes | bytearray, party_id: str) -> Reply:
    is_delta = meta.get("is_delta", True)
    if not isinstance(is_delta, bool):
        raise WireFormatError("metadata field 'is_delta' must be true or false")
    return Update(
        _weights(body, copy=False),  # views into the request body: folded, then dropped
        _field(meta, "num_examples", int),
        _metrics(meta),
        is_delta,
        party_id=party_id,
        info=_info(meta),
    )


def _evaluation(meta: dict[str, Any], body: bytes | bytearray, party_id: str) -> Reply:
    return Evaluation(_field(meta, "num_examples", int), _metrics(meta))


def _skipped(meta: dict[str, Any], body: bytes | bytearray, party_id: str) -> Reply:
    reason = str(meta.get("reason", "update says little new"))[:500]
    return Skipped(_field(meta, "num_examples", int), _metrics(meta), reason)


def _error(meta: dict[str, Any], body: bytes | bytearray, party_id: str) -> Reply:
    return TaskError(str(meta.get("message", "party reported an error"))[:2000])


def _secure(meta: dict[str, Any], body: bytes | bytearray, party_id: str) -> Reply:
    weights = dict(_weights(body, copy=False))
    message = _message(weights)
    masked = weights.pop("masked", None)
    if weights:
        raise WireFormatError(f"unexpected tensors in a secure reply: {sorted(weights)[:5]}")
    if masked is not None:
        message["masked"] = masked
    return SecureReply(_field(meta, "stage", str), message, _metrics(meta))


_REPLY_KINDS = {
    "update": _update,
    "skipped": _skipped,
    "evaluation": _evaluation,
    "error": _error,
    "secure": _secure,
}


def _carried_evaluation(value: Any) -> Evaluation | TaskError | Malformed:
    """The evaluation a training reply carries (``{"num_examples", "metrics"}`` or
    ``{"error"}``); ``Malformed`` naming the bad field, which costs only the evaluation."""
    if not isinstance(value, dict):
        return Malformed("malformed evaluation: metadata field 'evaluation' must be an object")
    if "error" in value:
        return TaskError(str(value["error"])[:2000])
    try:
        return Evaluation(_field(value, "num_examples", int), _metrics(value))
    except WireFormatError as exc:
        return Malformed(f"malformed evaluation: {exc}")


def reply_from_wire(meta: dict[str, Any], body: bytes | bytearray, party_id: str = "") -> Reply:
    """The reply ``meta`` and ``body`` carry; ``Malformed`` (naming the bad field) when a reply
    of a known kind cannot be read. Raises ``WireFormatError`` for an unknown kind.

    A reply with an ``evaluation`` field (to a ``TrainTask`` with ``evaluate``) is
    ``Evaluated(reply, evaluation)``; a bad evaluation is a ``Malformed`` evaluation beside a
    good reply, while a reply that cannot be read is ``Malformed`` whole (the party learns
    why, and its evaluation is left out with it)."""
    kind = meta.get("kind")
    read = _REPLY_KINDS.get(kind) if isinstance(kind, str) else None
    if read is None:
        raise WireFormatError(
            f"unknown reply kind {str(kind)[:64]!r}; expected update, skipped, evaluation, "
            "secure or error"
        )
    try:
        reply = read(meta, body, party_id)
    except WireFormatError as exc:
        return Malformed(f"malformed {kind} reply: {exc}")
    if "evaluation" not in meta:
        return reply
    return Evaluated(reply, _carried_evaluation(meta["evaluation"]))
