"""Receiving one dense update: into one buffer of its exact size, checked while it arrives.

A party's reply to a training task is a safetensors body whose names, shapes and dtypes must be
the global model's. ``DenseIntake`` is fed the body chunk by chunk (sans-I/O: the route feeds
it, tests feed it by hand) and:

* refuses a declared or actual size past what a dense update of the model can take (its data
  bytes plus a bounded header) before anything is allocated;
* parses the header as soon as its bytes are in and checks it against the model with the same
  ``check_compatible`` the round's validation uses (same reason), before reading on;
* then takes the body's one buffer, of the exact size the header states (a spare of an earlier
  update that nothing views any more, or a new one), and copies each chunk into place (no
  spool, no second copy: the arrays the round folds are views into it);
* checks values as they arrive: a float array's running sum of squares (a dot per chunk, as
  ``validate_update`` measures) is finite unless a value is NaN or infinite, so a poisoned
  update is known, and refused, before the rest of its body is read.

It only refuses early what the round loop would refuse with the same reason; the round still
validates every update it receives (the norm bound included) before it counts. An early refusal
of non-finite values names the parameter the round would name: the first, in the update's name
order, that is not finite, so it is made only once every parameter before it is complete.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedfuse.federation._validate import check_metrics, check_num_examples
from fedfuse.weights import Weights, WeightsMismatchError, check_compatible
from fedfuse.weights._io import _DTYPES

__all__ = ["DenseIntake", "IntakeRefused", "expected_body_bytes"]

HEADER_SLACK = 4096  # header bytes allowed beyond the model's own (metadata, spacing)
MAX_SPARES = 2  # body buffers a federation keeps for reuse (one receiving, one being folded)
_DIGITS = 20  # the most digits a byte offset takes


class IntakeRefused(ValueError):
    """A body that cannot be a dense update of this model: ``status`` is the HTTP status to
    answer (413 too large, 400 otherwise); the message names the problem."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _max_header(reference: Mapping[str, np.ndarray]) -> int:
    """An upper bound on the safetensors header of a dense update of ``reference``."""
    per_tensor = (
        len(json.dumps(name)) + len(str(list(arr.shape))) + 2 * _DIGITS + 64
        for name, arr in reference.items()
    )
    return sum(per_tensor) + HEADER_SLACK


def expected_body_bytes(reference: Mapping[str, np.ndarray]) -> int:
    """The most bytes a dense safetensors update of ``reference`` can take."""
    return 8 + _max_header(reference) + sum(arr.nbytes for arr in reference.values())


@dataclass
class _Span:
    """One tensor of the body: where its bytes lie in the buffer and how far they are checked."""

    name: str
    dtype: np.dtype
    begin: int  # absolute offsets in the body
    end: int
    checked: int = 0  # absolute offset up to which its values were checked
    finite: bool = True


def _fake(dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    """An array of ``shape`` and ``dtype`` that takes no memory (for shape and dtype checks)."""
    return np.lib.stride_tricks.as_strided(np.zeros(1, dtype), shape, (0,) * len(shape))


def _unviewed(buffer: bytearray) -> bool:
    """Whether no array (or other buffer export) views ``buffer`` now, so it may be reused: a
    viewed bytearray cannot change size (``BufferError``), and shrinking it by its last byte
    and growing it back reallocates nothing."""
    if not buffer:
        return True
    last = buffer[-1]
    try:
        del buffer[-1:]
    except BufferError:
        return False
    buffer.append(last)
    return True


def meta_allows_early(meta: Mapping[str, Any]) -> bool:
    """Whether an early refusal of the body would give the reason the round gives: the round
    judges the kind, example count and metrics before the arrays, so only a delta whose
    metadata passes those checks may be refused for its arrays here; and not one that carries
    an evaluation beside it (piggyback: the round takes that apart from the update)."""
    metrics = meta.get("metrics", {})
    return (
        "evaluation" not in meta
        and meta.get("is_delta", True) is True
        and check_num_examples(meta.get("num_examples")) is None
        and isinstance(metrics, dict)
        and check_metrics(metrics) is None
    )


class DenseIntake:
    """Receives one dense update of ``reference`` (see the module docstring).

    Feed it with ``feed(chunk)``; it raises ``IntakeRefused`` for a body that cannot be an
    update of this model (too large, not safetensors) and returns the round's rejection reason
    once the body is known to be rejected (``early`` allowed: see ``meta_allows_early``), else
    ``None``. ``body()`` is the complete body once every byte is in.
    """

    def __init__(
        self,
        reference: Weights,
        declared: int | None = None,
        *,
        early: bool = True,
        spares: list[bytearray] | None = None,
    ) -> None:
        self.reference = reference
        self.spares = spares
        self.limit = expected_body_bytes(reference)
        self.early = early
        if declared is not None and declared > self.limit:
            raise IntakeRefused(
                413,
                f"a body of {declared} bytes cannot be a dense update of this model (at most "
                f"{self.limit} bytes)",
            )
        self._head = bytearray()  # the bytes before the buffer exists (size and header)
        self._buffer: bytearray | None = None
        self._expected = self.limit  # the body's size once its header says it
        self._size = 0  # bytes received
        self._spans: list[_Span] = []
        self._order: list[_Span] = []  # spans in the order the round checks them (by name)
        self.reason: str | None = None

    @property
    def received(self) -> int:
        return self._size

    def feed(self, chunk: bytes | bytearray | memoryview) -> str | None:
        """Take the next bytes of the body; the rejection reason once it is known."""
        if not chunk:
            return self.reason
        if self._size + len(chunk) > self._expected:
            raise IntakeRefused(413, self._too_long(self._size + len(chunk)))
        if self.reason is not None:  # rejected: the rest is only counted, never kept
            self._size += len(chunk)
            return self.reason
        if self._buffer is None:
            self._head += chunk
            self._size += len(chunk)
            self._start()
        else:
            self._buffer[self._size : self._size + len(chunk)] = chunk
            self._size += len(chunk)
        if self._buffer is not None and self.reason is None:
            self._check_values()
        if self.reason is not None:
            self._buffer = None  # a rejected body is not kept
        return self.reason

    def prefix(self) -> memoryview:
        """The bytes received so far (to move them elsewhere)."""
        if self._buffer is None:
            return memoryview(self._head)
        return memoryview(self._buffer)[: self._size]

    @property
    def data_bytes(self) -> int:
        """The bytes of the update's arrays, as its header states them (0 before the header)."""
        return sum(span.end - span.begin for span in self._spans)

    def body(self) -> bytearray:
        """The whole body; ``IntakeRefused`` if it ended short of the size its header states."""
        if self._buffer is None or self._size != self._expected:
            raise IntakeRefused(
                400,
                f"not valid safetensors data: the body ended after {self._size} bytes, before "
                "the end its header states",
            )
        return self._buffer

    # ---- the header --------------------------------------------------------------------------
    def _too_long(self, size: int) -> str:
        return f"the update body has more than {size - 1} bytes, more than a dense update"

    def _start(self) -> None:
        """Once the size and the header are in: check them and allocate the buffer."""
        if len(self._head) < 8:
            return
        header_size = int.from_bytes(self._head[:8], "little")
        if header_size > self.limit - 8:
            raise IntakeRefused(
                400, f"not valid safetensors data: header size {header_size} is too large"
            )
        if len(self._head) < 8 + header_size:
            return
        try:
            header = json.loads(bytes(self._head[8 : 8 + header_size]))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise IntakeRefused(400, f"not valid safetensors data: bad header ({exc})") from None
        if not isinstance(header, dict):
            raise IntakeRefused(400, "not valid safetensors data: the header is not an object")
        header.pop("__metadata__", None)
        base = 8 + header_size
        fakes, end = {}, base
        for name, info in header.items():
            try:
                dtype = np.dtype(_DTYPES[info["dtype"]])
                shape = tuple(int(d) for d in info["shape"])
                begin, stop = (int(o) for o in info["data_offsets"])
            except (KeyError, TypeError, ValueError) as exc:
                raise IntakeRefused(
                    400, f"not valid safetensors data: tensor {name!r}: {exc}"
                ) from None
            if min(shape, default=0) < 0 or not 0 <= begin <= stop:
                raise IntakeRefused(400, f"not valid safetensors data: tensor {name!r}")
            fakes[name] = _fake(dtype, shape)
            self._spans.append(_Span(name, dtype, base + begin, base + stop))
            end = max(end, base + stop)
        if end > self.limit:
            raise IntakeRefused(413, self._too_long(end + 1))
        if self.early:
            try:
                check_compatible(self.reference, dict(sorted(fakes.items())))
            except WeightsMismatchError as exc:
                self.reason = str(exc)
                self._expected, self._head = end, bytearray()
                return
        # the strict format check (tiling, sizes) is from_buffer's, on the whole body
        self._order = sorted(self._spans, key=lambda s: s.name)
        self._buffer = self._allocate(end)
        self._expected = end
        if len(self._head) > end:
            raise IntakeRefused(413, self._too_long(len(self._head)))
        self._buffer[: len(self._head)] = self._head
        self._head = bytearray()

    def _allocate(self, size: int) -> bytearray:
        """A buffer of ``size`` bytes: a spare no array views any more if there is one (a fresh
        one costs the kernel's page faults and zeroing, about half a millisecond per MB),
        else a new one, kept as a spare while there are fewer than ``MAX_SPARES``."""
        if self.spares is None:
            return bytearray(size)
        for spare in self.spares:
            if len(spare) == size and _unviewed(spare):
                return spare
        fresh = bytearray(size)
        kept = [b for b in self.spares if len(b) == size][: MAX_SPARES - 1]
        self.spares[:] = [*kept, fresh]
        return fresh

    # ---- the values --------------------------------------------------------------------------
    def _check_values(self) -> None:
        """Check the values of every tensor whose bytes came in since the last call."""
        assert self._buffer is not None
        for span in self._spans:
            if span.checked >= span.end or span.dtype.kind != "f" or not span.finite:
                continue
            begin = max(span.begin, span.checked)
            stop = min(span.end, self._size)
            stop -= (stop - span.begin) % span.dtype.itemsize  # whole elements only
            if stop <= begin:
                continue
            count = (stop - begin) // span.dtype.itemsize
            values = np.frombuffer(self._buffer, span.dtype, count, begin)
            with np.errstate(over="ignore", invalid="ignore"):
                squares = float(np.dot(values, values))
            if not math.isfinite(squares) and not np.isfinite(values).all():
                span.finite = False
            span.checked = stop
        if self.early:
            self.reason = self._first_not_finite()

    def _first_not_finite(self) -> str | None:
        """The round's reason if the first tensor it would find not finite is known."""
        for span in self._order:
            if not span.finite:
                return f"parameter {span.name!r} contains NaN or infinite values"
            if span.dtype.kind == "f" and span.checked < span.end and span.end > span.begin:
                return None  # not complete: a NaN may still come in it
        return None
