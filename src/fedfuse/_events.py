"""``events.jsonl``: a run's records as they happen, one JSON line each (``fedfuse dashboard``).

``simulate(out_dir=...)`` and ``run_consensus(out_dir=...)`` write ``history.json`` once they
end; the events file lets a dashboard follow the run before that. Each line is written whole
by one ``write`` call, so a reader sees complete lines plus at most one it must wait for.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["EVENTS_FILE", "logging_events"]

EVENTS_FILE = "events.jsonl"
Record = dict[str, Any]


def _plain(value: Any) -> Any:
    return value.tolist() if hasattr(value, "tolist") else str(value)


def logging_events(
    out_dir: str | os.PathLike | None, callback: Callable[[Record], None] | None
) -> Callable[[Record], None] | None:
    """``callback`` that first appends each record to ``out_dir/events.jsonl``, which starts
    empty (a new run); ``callback`` unchanged without ``out_dir``."""
    if out_dir is None:
        return callback
    path = Path(out_dir) / EVENTS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")

    def record(rec: Record) -> None:
        line = json.dumps(rec, default=_plain) + "\n"
        with path.open("a", encoding="utf-8") as f:
            f.write(line)
        if callback is not None:
            callback(rec)

    return record
