"""Tasks an aggregator sends and the replies a party gives: plain data, no I/O."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from fedfuse.fusion import Update
from fedfuse.models import TrainConfig
from fedfuse.party._secure import SecureEncoding
from fedfuse.weights import Weights

__all__ = [
    "Evaluated",
    "Evaluation",
    "EvaluateTask",
    "Malformed",
    "Reply",
    "SecureReply",
    "SecureTask",
    "Skipped",
    "Task",
    "TaskError",
    "TrainTask",
    "Update",
]


@dataclass(frozen=True, eq=False)
class TrainTask:
    """Start from ``weights``, train locally with ``config``, reply with an ``Update``.

    With ``hold`` (buffered secure aggregation) the party keeps the update for a coming secure
    round and replies ``SecureReply("trained", {}, metrics)`` instead of sending it.

    With ``evaluate`` (a split, "test" or "train") the party first evaluates ``weights``, the
    global model as it arrived, on that split and replies ``Evaluated(reply, evaluation)``: the
    federated evaluation of the last round's model carried with this round's task, instead of
    a separate ``EvaluateTask`` that sends the model a second time."""

    round: int
    weights: Weights
    config: TrainConfig = field(default_factory=TrainConfig)
    send_delta: bool = True
    hold: bool = False
    evaluate: Literal["test", "train"] | None = None


@dataclass(frozen=True, eq=False)
class EvaluateTask:
    """Evaluate ``weights`` on the party's ``split`` ("test" or "train"); reply ``Evaluation``."""

    round: int
    weights: Weights
    split: Literal["test", "train"] = "test"


@dataclass(frozen=True)
class Evaluation:
    """Metrics of one party's evaluation and how many examples they cover."""

    num_examples: int
    metrics: dict[str, float]


@dataclass(frozen=True, eq=False)
class Evaluated:
    """The answer to a ``TrainTask`` with ``evaluate``: the training ``reply`` (an ``Update``,
    ``Skipped``, ``TaskError``...) and the ``evaluation`` of the weights the task carried, done
    before training: an ``Evaluation``, or a ``TaskError`` (the party could not evaluate, e.g.
    it has no test data) or ``Malformed`` (the wire could not read it) saying why there is none.
    The two are independent: a failed evaluation costs only the evaluation."""

    reply: Reply
    evaluation: Evaluation | TaskError | Malformed


@dataclass(frozen=True)
class Skipped:
    """A party trained but its update says little new, so it sends this instead of the delta.

    "Aggregation only when necessary": ``reason`` says which threshold ``TrainConfig`` set
    (``skip_relative_norm`` or ``skip_cosine``) the update fell under. ``metrics`` are the
    party's training metrics, as in an ``Update``.
    """

    num_examples: int
    metrics: dict[str, float]
    reason: str


@dataclass(frozen=True)
class TaskError:
    """A party could not do a task; ``message`` says why (it never carries a traceback's data)."""

    message: str


@dataclass(frozen=True)
class Malformed:
    """A reply that arrived but cannot be read: ``reason`` names the bad field.

    The transport makes this of a party's message whose fields are wrong (a count that is not
    an integer, metrics that are not numbers, a body that is not safetensors), so the round
    records the update as rejected with the reason instead of failing on it.
    """

    reason: str


@dataclass(frozen=True, eq=False)
class SecureTask:
    """One stage of a secure aggregation round (SecAgg+, ``fedfuse.secure``).

    At stage ``advertise`` the party first trains from ``weights`` with ``config`` (as for a
    ``TrainTask``; without ``weights`` it takes the update it holds from a ``TrainTask`` with
    ``hold``), encodes its delta as ``encoding`` says and keeps it; every stage then hands
    ``request``, the protocol's message from the aggregator, to the party's protocol state.
    """

    round: int
    stage: str
    request: dict[str, Any]
    weights: Weights | None = None
    config: TrainConfig | None = None
    encoding: SecureEncoding | None = None


@dataclass(frozen=True, eq=False)
class SecureReply:
    """The party's protocol message for one stage of secure aggregation; at ``advertise`` also
    its training ``metrics`` (the aggregator sees those, never the update)."""

    stage: str
    message: dict[str, Any]
    metrics: dict[str, float] = field(default_factory=dict)


Task = TrainTask | EvaluateTask | SecureTask
Reply = Update | Skipped | Evaluation | TaskError | Malformed | SecureReply | Evaluated
