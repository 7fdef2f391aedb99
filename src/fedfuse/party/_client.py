"""Parties built from a user's own training code, as Flower users write it.

A Flower ``NumPyClient`` sees the model as a *list* of arrays in the model's own order (a torch
module's ``state_dict()`` order): its ``set_parameters`` zips ``net.state_dict().keys()`` with the
list and loads it strictly. fedfuse's ``Weights`` are sorted by name, so ``ClientParty`` keeps one
name order (``order``) and uses it both ways: the arrays it hands to ``fit``/``evaluate``, and the
names it gives the arrays ``fit`` returns. The order comes from, in this preference:

1. ``order=`` given by the user;
2. the service's join answer (``info["model"]["parameters"]``, ``[name, shape]`` in the model's
   order), checked against the client's ``get_parameters`` by ``check`` before any task;
3. the first task: the client's ``get_parameters`` shapes matched to the task's names (names of
   equal shape keep their sorted order, with a warning), or the task's sorted order for a client
   without ``get_parameters``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from fedfuse.fusion import Update
from fedfuse.party._party import evaluate_then_train
from fedfuse.party._tasks import (
    EvaluateTask,
    Evaluation,
    Reply,
    SecureTask,
    Task,
    TaskError,
    TrainTask,
)
from fedfuse.weights import Weights, subtract

__all__ = ["ClientParty", "NumPyClient"]

log = logging.getLogger("fedfuse.party")
_MAX_PARAMETERS = 1_000_000  # entries in a join answer's parameter list (hostile input)
_MAX_RANK = 32
# what user training code may raise for a bad task; a reply names it instead of ending the party
_USER_ERRORS = (ValueError, RuntimeError, TypeError, LookupError, ArithmeticError)

Shape = tuple[int, ...]


class NumPyClient(Protocol):
    """Flower's ``NumPyClient`` shape: parameters are a list of arrays in a fixed order.

    ``get_parameters(config)`` (optional) returns the client's arrays in that order; fedfuse
    uses it to learn the order's shapes.
    """

    def fit(
        self, parameters: list[np.ndarray], config: dict[str, Any]
    ) -> tuple[list[np.ndarray], int, dict[str, float]]: ...

    def evaluate(
        self, parameters: list[np.ndarray], config: dict[str, Any]
    ) -> tuple[float, int, dict[str, float]]: ...


def _shape(value: Any) -> Shape:
    return tuple(int(d) for d in np.shape(value))


def _shown(shape: Sequence[int]) -> str:
    return "(" + ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "") + ")"


def _parse_parameters(parameters: Any) -> list[tuple[str, Shape]]:
    """``[[name, shape], ...]`` from a join answer as ``(name, shape)`` pairs; ``ValueError``
    naming the first bad entry (the answer comes from the network: nothing is assumed)."""
    if not isinstance(parameters, list) or len(parameters) > _MAX_PARAMETERS:
        raise ValueError(
            f"the service's parameter list is not a list of at most {_MAX_PARAMETERS:,} entries"
        )
    parsed: list[tuple[str, Shape]] = []
    seen: set[str] = set()
    for i, entry in enumerate(parameters):
        ok = isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str)
        shape = entry[1] if ok else None
        ok = ok and isinstance(shape, list) and len(shape) <= _MAX_RANK
        ok = ok and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
        if not ok:
            raise ValueError(
                f"the service's parameter {i} is not [name, shape] with a shape of at most "
                f"{_MAX_RANK} non-negative integers: {str(entry)[:200]}"
            )
        if entry[0] in seen:
            raise ValueError(f"the service lists parameter {entry[0]!r} twice")
        seen.add(entry[0])
        parsed.append((entry[0], tuple(shape)))
    return parsed


def _first_difference(expected: list[tuple[str, Shape]], got: list[Shape]) -> str | None:
    """A message naming the first position where the client's shapes ``got`` do not match the
    model's ``expected`` names and shapes; ``None`` when they match."""
    for i in range(max(len(expected), len(got))):
        name, shape = expected[i] if i < len(expected) else ("nothing", None)
        other = got[i] if i < len(got) else None
        if shape != other:
            want = f"{name} of shape {_shown(shape)}" if shape is not None else "no array"
            have = f"shape {_shown(other)}" if other is not None else "no array"
            return (
                f"at position {i} the federation's model has {want}, the client's "
                f"get_parameters gives {have} ({len(expected)} arrays expected, {len(got)} given)"
            )
    return None


def _infer_order(names: Sequence[str], weights: Weights, shapes: list[Shape]) -> list[str]:
    """The names of ``weights`` in the order whose shapes are ``shapes``: each position takes
    the first unused name (in ``names`` order) of its shape. ``ValueError`` when no name fits."""
    if len(shapes) != len(names):
        raise ValueError(
            f"the client's get_parameters gives {len(shapes)} arrays, the task has {len(names)} "
            f"({', '.join(list(names)[:5])}{', ...' if len(names) > 5 else ''})"
        )
    free = list(names)
    order = []
    for i, shape in enumerate(shapes):
        match = next((n for n in free if _shape(weights[n]) == shape), None)
        if match is None:
            raise ValueError(
                f"the client's get_parameters array {i} has shape {_shown(shape)}, which no "
                "remaining array of the task has"
            )
        free.remove(match)
        order.append(match)
    return order


class ClientParty:
    """A sans-I/O party around a Flower-style client object.

    Args:
        client: an object with ``fit(parameters, config)`` and ``evaluate(parameters, config)``
            over lists of arrays (Flower's ``NumPyClient``), and optionally
            ``get_parameters(config)``.
        party_id: this party's id, put on its updates.
        order: the parameter names in the model's own order (the order of the client's
            ``get_parameters``); when not given, ``check`` or the first task finds it.

    ``config`` carries the round, epochs, batch_size, optimizer, learning_rate and seed of the
    task. The order in use is ``order_`` once known.
    """

    def __init__(
        self, client: NumPyClient, party_id: str = "", order: Sequence[str] | None = None
    ) -> None:
        self.client = client
        self.party_id = party_id
        self.order = order
        self.order_: list[str] | None = None

    def _client_shapes(self) -> list[Shape] | None:
        get = getattr(self.client, "get_parameters", None)
        if get is None:
            return None
        arrays = get(config={})
        if not isinstance(arrays, list | tuple):
            raise TypeError(f"get_parameters returned {type(arrays).__name__}, not a list")
        return [_shape(a) for a in arrays]

    def check(self, parameters: Any) -> None:
        """Before serving: take the model's order from the service's ``[[name, shape], ...]``
        (``None``: the service sent none, the first task decides) and refuse, with
        ``ValueError`` naming the first differing position, a client whose ``get_parameters``
        does not list the same shapes in that order."""
        if parameters is None:
            return
        expected = _parse_parameters(parameters)
        names = [n for n, _ in expected]
        if self.order is not None and list(self.order) != names:
            mine = list(self.order)
            i = next(
                (k for k, (a, b) in enumerate(zip(mine, names, strict=False)) if a != b),
                min(len(mine), len(names)),
            )
            raise ValueError(
                f"order= differs from the federation's model order at position {i}: "
                f"{mine[i] if i < len(mine) else 'nothing'!r} vs "
                f"{names[i] if i < len(names) else 'nothing'!r}"
            )
        shapes = self._client_shapes()
        problem = shapes is not None and _first_difference(expected, shapes)
        if problem:
            raise ValueError(f"this client does not fit the federation's model: {problem}")
        self.order_ = names

    def _order_for(self, task: Task) -> list[str]:
        if self.order_ is None and self.order is not None:
            self.order_ = list(self.order)
        if self.order_ is None:
            names = list(task.weights)
            shapes = self._client_shapes()
            if shapes is None:
                self.order_ = names
            else:
                self.order_ = _infer_order(names, task.weights, shapes)
                if len(set(shapes)) < len(shapes):
                    log.warning(
                        "the parameter order was inferred from shapes, and some shapes repeat: "
                        "arrays of equal shape are given in name order (%s); pass order= or let "
                        "the service send the model's order if that is not the client's",
                        ", ".join(self.order_),
                    )
        if set(self.order_) != set(task.weights) or len(self.order_) != len(task.weights):
            missing = sorted(set(self.order_) - set(task.weights))
            extra = sorted(set(task.weights) - set(self.order_))
            raise ValueError(
                f"the task's arrays are not the model's: missing {missing[:5]}, "
                f"unexpected {extra[:5]}"
            )
        return self.order_

    def _named(self, arrays: Any, order: list[str], reference: Weights) -> Weights | TaskError:
        """The arrays ``fit`` returned, named by ``order``; a ``TaskError`` naming the first
        array of the wrong count or shape."""
        if not isinstance(arrays, list | tuple):
            return TaskError(f"fit returned {type(arrays).__name__}, not a list of arrays")
        if len(arrays) != len(order):
            return TaskError(f"fit returned {len(arrays)} arrays, expected {len(order)}")
        named = {}
        for i, (name, array) in enumerate(zip(order, arrays, strict=True)):
            # a copy: fit may return views of the model's own tensors, which its next task changes
            value = np.array(array, dtype=reference[name].dtype)
            if value.shape != reference[name].shape:
                return TaskError(
                    f"fit returned array {i} ({name}) with shape {_shown(value.shape)}, "
                    f"expected {_shown(reference[name].shape)}"
                )
            named[name] = value
        return dict(sorted(named.items()))

    def handle(self, task: Task) -> Reply:
        if isinstance(task, TrainTask) and task.evaluate is not None:
            return evaluate_then_train(self.handle, task)
        if isinstance(task, SecureTask) or getattr(task, "hold", False):
            return TaskError(
                "secure aggregation needs a fedfuse Party; a Flower-style client takes part in "
                "federations without secagg"
            )
        try:
            order = self._order_for(task)
            # copies: the client's code may write into them, and task.weights is the delta's base
            params = [np.array(task.weights[n]) for n in order]
            if isinstance(task, TrainTask):
                config = {"round": task.round, **task.config.to_dict()}
                new, num_examples, metrics = self.client.fit(params, config)
                local = self._named(new, order, task.weights)
                if isinstance(local, TaskError):
                    return local
                weights = subtract(local, task.weights) if task.send_delta else local
                return Update(
                    weights, int(num_examples), dict(metrics), task.send_delta, self.party_id
                )
            if isinstance(task, EvaluateTask):
                loss, num_examples, metrics = self.client.evaluate(params, {"round": task.round})
                return Evaluation(int(num_examples), {"loss": float(loss), **metrics})
        except _USER_ERRORS as exc:
            return TaskError(f"{type(exc).__name__}: {exc}"[:2000])
        return TaskError(f"unknown task type {type(task).__name__}")
