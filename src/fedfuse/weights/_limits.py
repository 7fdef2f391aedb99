"""Size caps checked before anything is allocated: parameters, inflated archives, bodies.

A small upload must never make fedfuse allocate much more than it received. Every loader of a
file or body that came from someone else (a model file, a party's ``.npz``, a task body from an
aggregator) reads the sizes the input *declares* (a zip directory, an ``.npy`` header, a pickle's
storage records, a safetensors header) and compares them with one ``SizeLimits`` before it
builds anything. The caps are on by default: every loader takes ``limits=SizeLimits()``.

Zip readers (Python's ``zipfile``, numpy, torch's miniz) stop at the size the central directory
declares, so checking the declared sizes bounds what inflating can cost.
"""

from __future__ import annotations

import json
import math
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["SizeLimitError", "SizeLimits"]

_MAX_RATIO = 200
"""A zip record may inflate to at most this many times its compressed size ..."""
_RATIO_FREE_BYTES = 1 << 20
"""... once it inflates past this many bytes (tiny records compress well legitimately)."""
_MAX_HEADER_BYTES = 100_000_000  # the same bound ``from_buffer`` puts on a safetensors header


class SizeLimitError(ValueError):
    """An input declares more parameters or bytes than the operator's caps allow."""


@dataclass(frozen=True)
class SizeLimits:
    """The operator's caps on what one input may make fedfuse allocate.

    Args:
        max_params: parameters (tensor elements) of one model: a model file, a zoo model built
            from a description, the weights of one task body. 100 million float32 parameters
            are 400 MB.
        max_bytes: inflated bytes of one decoded upload or archive (a model file, a ``.npz``,
            a ``.keras`` zip, a body read from the network). 1 GiB by default: larger than any
            model of ``max_params`` float32 parameters, small enough for one machine.
    """

    max_params: int = 100_000_000
    max_bytes: int = 1 << 30

    def check_params(self, count: int, what: str) -> None:
        """Refuse ``count`` parameters in ``what`` (e.g. "model file") past ``max_params``."""
        if count > self.max_params:
            raise SizeLimitError(
                f"{what} holds {count:,} parameters; the limit is {self.max_params:,} "
                "(--max-model-params)"
            )

    def check_bytes(self, count: int, what: str) -> None:
        """Refuse ``count`` bytes in ``what`` past ``max_bytes``."""
        if count > self.max_bytes:
            raise SizeLimitError(
                f"{what} inflates to {count:,} bytes; the limit is {self.max_bytes:,} bytes "
                "(max_bytes)"
            )

    def check_archive(self, archive: zipfile.ZipFile, what: str) -> list[zipfile.ZipInfo]:
        """The records of ``archive`` once their declared sizes pass the caps.

        Refuses an archive whose records inflate past ``max_bytes`` in total, and any record
        compressed more than ``_MAX_RATIO`` to one (a zip bomb) or stored with an inflated size
        other than its stored size.
        """
        records = archive.infolist()
        self.check_bytes(sum(r.file_size for r in records), what)
        for record in records:
            stored = record.compress_type == zipfile.ZIP_STORED
            if stored and record.file_size != record.compress_size:
                raise SizeLimitError(
                    f"{what}: record {record.filename!r} is stored uncompressed but declares "
                    f"{record.file_size:,} bytes for {record.compress_size:,}"
                )
            ratio = record.file_size / max(record.compress_size, 1)
            if record.file_size > _RATIO_FREE_BYTES and ratio > _MAX_RATIO:
                raise SizeLimitError(
                    f"{what}: record {record.filename!r} inflates {ratio:,.0f} times "
                    f"({record.compress_size:,} to {record.file_size:,} bytes); the limit is "
                    f"{_MAX_RATIO} times (a zip bomb?)"
                )
        return records

    def check_safetensors(self, buffer: bytes | bytearray | memoryview, what: str) -> None:
        """Refuse safetensors data whose header declares more than ``max_params`` elements.

        Reads only the JSON header; a malformed header is left to the parser, which refuses it.
        """
        view = memoryview(buffer).cast("B")
        self.check_bytes(len(view), what)
        if len(view) < 8:
            return
        size = int.from_bytes(view[:8], "little")
        if size > min(len(view) - 8, _MAX_HEADER_BYTES):
            return
        try:
            header = json.loads(bytes(view[8 : 8 + size]))
            shapes = [info["shape"] for name, info in header.items() if name != "__metadata__"]
            count = sum(_elements(shape) for shape in shapes)
        except (ValueError, TypeError, KeyError, AttributeError, RecursionError):
            return
        self.check_params(count, what)


def _elements(shape: Sequence[int]) -> int:
    return math.prod(max(int(d), 0) for d in shape)
