"""What the dashboard shows, as plain data: shared by the service and ``fedfuse dashboard``.

A *source* answers two questions: which runs there are (``runs()``) and what one run looks like
now (``view(run_id)``). A view is a plain dict::

    {"id", "title", "kind": "federation" | "consensus", "status", "finished": bool,
     "points": [one small dict per round or epoch], "parties": [one row per party]}

The service's source reads the SQLite store and the federation's live pool
(``ServiceSource``); ``FolderSource`` reads a simulation's or consensus run's out_dir
(``events.jsonl`` as it runs, ``history.json`` once done). Every number is made finite or
``None`` here, so the page's ``JSON.parse`` never meets a NaN.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

from fedfuse.service._errors import NotFound

__all__ = [
    "COLUMNS",
    "FolderSource",
    "ServiceSource",
    "Source",
    "epoch_point",
    "party_rows",
    "round_point",
]

#: The rounds table's columns per kind: (key in a point, header). The page's script reads
#: the keys from the table header, so the server's table and the live one agree.
COLUMNS = {
    "federation": (
        ("x", "round"),
        ("central_accuracy", "central acc"),
        ("central_loss", "central loss"),
        ("federated_accuracy", "federated acc"),
        ("federated_loss", "federated loss"),
        ("train_loss", "train loss"),
        ("bytes_up", "bytes up"),
        ("bytes_down", "bytes down"),
        ("epsilon", "epsilon"),
        ("rejected", "rejected"),
    ),
    "consensus": (
        ("x", "epoch"),
        ("mean_accuracy", "mean acc"),
        ("min_accuracy", "min acc"),
        ("max_accuracy", "max acc"),
        ("mean_loss", "mean loss"),
        ("consensus_distance", "consensus distance"),
    ),
}
DEADLINE = "deadline"  # the runtime's reason for a late party: "no reply before the ...deadline"


class Source(Protocol):
    """Where the dashboard's data comes from."""

    def runs(self) -> list[dict[str, Any]]:
        """One row per run: ``id``, ``title``, ``status``, ``done`` (rounds or epochs)."""
        ...

    def view(self, run_id: str) -> dict[str, Any]:
        """The run now (see the module docstring); ``NotFound`` for an unknown id."""
        ...


def finite(value: Any) -> float | int | None:
    """A number the browser can parse: ``None`` for NaN, infinities and non-numbers."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _metric(record: Mapping[str, Any], part: str, name: str) -> float | int | None:
    section = record.get(part)
    return finite(section.get(name)) if isinstance(section, Mapping) else None


def round_point(record: Mapping[str, Any]) -> dict[str, Any]:
    """One federation round as the charts plot it (accuracies, losses, bytes, epsilon)."""
    point: dict[str, Any] = {"x": finite(record.get("round"))}
    for part in ("central", "federated", "train"):
        for name in ("accuracy", "loss"):
            point[f"{part}_{name}"] = _metric(record, part, name)
    for name in ("bytes_up", "bytes_down", "epsilon", "seconds"):
        point[name] = finite(record.get(name))
    rejected = record.get("rejected")
    point["rejected"] = len(rejected) if isinstance(rejected, Mapping) else 0
    return point


def epoch_point(record: Mapping[str, Any]) -> dict[str, Any]:
    """One consensus epoch: the nodes' accuracies, their mean/min/max and consensus distance."""
    point: dict[str, Any] = {"x": finite(record.get("epoch"))}
    for name in ("mean_accuracy", "min_accuracy", "max_accuracy", "mean_loss"):
        point[name] = finite(record.get(name))
    point["consensus_distance"] = finite(record.get("consensus_distance"))
    nodes = record.get("nodes")
    point["nodes"] = {
        str(node): finite(metrics.get("accuracy"))
        for node, metrics in (nodes.items() if isinstance(nodes, Mapping) else ())
        if isinstance(metrics, Mapping)
    }
    return point


def _points(records: Iterable[Mapping[str, Any]], kind: str) -> list[dict[str, Any]]:
    shape = epoch_point if kind == "consensus" else round_point
    points = [shape(r) for r in records if isinstance(r, Mapping)]
    return [p for p in points if isinstance(p["x"], int)]


def _reasons(record: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = record.get(key)
    return value if isinstance(value, Mapping) else {}


def party_rows(
    parties: Iterable[tuple[str, str | None]],
    live: Mapping[str, Mapping[str, Any]],
    records: list[Mapping[str, Any]],
) -> list[dict[str, Any]]:
    """Each party's state and the reason behind its last rejection or failure.

    ``parties`` is ``(party_id, name)`` pairs, ``live`` the pool's ``party_states()`` and
    ``records`` the round records so far. The state is what the party is doing now when the
    pool says it is busy or gone (training, assigned, dropped); else how it fared in the latest
    round (rejected, late, failed); else ``joined`` if it was never sampled, or the pool's word
    (idle, hosted; ``trained`` when there is no pool, as in a simulation's folder)."""
    sampled: set[str] = set()
    last_problem: dict[str, str] = {}
    for record in records:
        sampled.update(str(p) for p in record.get("sampled") or () if isinstance(p, str))
        for key in ("rejected", "failed"):
            for pid, why in _reasons(record, key).items():
                last_problem[str(pid)] = f"round {record.get('round')}: {why}"
    latest = records[-1] if records else {}
    rows = []
    for pid, name in parties:
        state = live.get(pid, {}).get("state")
        if state not in ("training", "assigned", "dropped"):
            failed = _reasons(latest, "failed").get(pid)
            if pid in _reasons(latest, "rejected"):
                state = "rejected"
            elif failed is not None:
                state = "late" if DEADLINE in str(failed) else "failed"
            elif pid not in sampled:
                state = "joined"
            else:
                state = state or "trained"
        rows.append({"party": pid, "name": name, "state": state, "reason": last_problem.get(pid)})
    return rows


def _sampled_parties(records: list[Mapping[str, Any]]) -> list[tuple[str, str | None]]:
    seen: dict[str, None] = {}
    for record in records:
        for key in ("sampled", "participants"):
            for pid in record.get(key) or ():
                seen.setdefault(str(pid), None)
    return [(pid, None) for pid in sorted(seen)]


class ServiceSource:
    """The service's federations: the store's rounds and parties, the pool's live states.

    A federation's rounds are read again only when its round counter moved, so polling a
    view costs two small queries and the pool's state dict."""

    def __init__(self, manager: Any) -> None:
        self.manager = manager
        self._records: dict[str, tuple[int, list[dict[str, Any]]]] = {}

    def runs(self) -> list[dict[str, Any]]:
        return [
            {
                "id": row["id"],
                "title": f"{row['id'][:8]} ({row.get('fusion') or '?'})",
                "status": row["status"],
                "done": f"{row['rounds_done']} / {row.get('rounds') or '?'}",
            }
            for row in self.manager.list()
        ]

    def view(self, run_id: str) -> dict[str, Any]:
        from fedfuse.service._runner import FINISHED

        store = self.manager.store
        fed = store.federation(run_id)
        if fed is None:
            raise NotFound(f"unknown aggregator id {run_id!r}")
        count, records = self._records.get(run_id, (-1, []))
        if count != fed["rounds_done"]:
            records = store.rounds(run_id)
            self._records[run_id] = (fed["rounds_done"], records)
        try:
            live = self.manager.pool(run_id).party_states()
        except NotFound:  # a federation the service could not rebuild: no live pool
            live = {}
        parties = [(p["party_id"], p["name"]) for p in store.parties(run_id)]
        return {
            "id": run_id,
            "title": f"federation {run_id[:8]}",
            "kind": "federation",
            "status": fed["status"],
            "error": fed["error"],
            "finished": fed["status"] in FINISHED,
            "points": _points(records, "federation"),
            "parties": party_rows(parties, live, records),
        }


class FolderSource:
    """One simulation's or consensus run's out_dir, as the run writes it.

    ``events.jsonl`` (one record per line, appended as the run goes) is read on from where the
    last read stopped; ``history.json`` at least as new as it means the run is done and is the
    full record. The run's id is ``run``."""

    RUN_ID = "run"
    MAX_LINE = 4 * 1024 * 1024  # one record; a longer line is skipped, not held in memory

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self._offset = 0
        self._records: list[dict[str, Any]] = []
        self._events_id: tuple[int, int] | None = None  # (inode, device) of the file read
        self._lock = threading.Lock()

    def runs(self) -> list[dict[str, Any]]:
        view = self.view(self.RUN_ID)
        return [{"id": self.RUN_ID, "title": view["title"], "status": view["status"],
                 "done": str(len(view["points"]))}]  # fmt: skip

    def _read_events(self, path: Path) -> None:
        stat = path.stat()
        if self._events_id != (stat.st_ino, stat.st_dev) or stat.st_size < self._offset:
            self._offset, self._records = 0, []  # a new run rewrote the file
            self._events_id = (stat.st_ino, stat.st_dev)
        with path.open("rb") as f:
            f.seek(self._offset)
            while True:
                line = f.readline(self.MAX_LINE + 1)
                if not line.endswith(b"\n"):  # a line the run is still writing (or too long)
                    if len(line) > self.MAX_LINE:
                        f.readline()
                        self._offset = f.tell()
                        continue
                    break
                self._offset = f.tell()
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if isinstance(record, dict):
                    self._records.append(record)

    def _history(self, path: Path) -> list[dict[str, Any]] | None:
        try:
            document = json.loads(path.read_text())
        except (OSError, ValueError):
            return None  # being written: the events stand in for it
        records = (
            document.get("rounds", document.get("epochs")) if isinstance(document, dict) else None
        )
        return records if isinstance(records, list) else None

    def view(self, run_id: str) -> dict[str, Any]:
        if run_id != self.RUN_ID:
            raise NotFound(f"unknown run {run_id!r}: this dashboard serves {self.RUN_ID!r}")
        events, history = self.folder / "events.jsonl", self.folder / "history.json"
        records: list[dict[str, Any]] = []
        with self._lock:  # page requests and the live feed read it from different threads
            if events.exists():
                self._read_events(events)
            records = list(self._records)
        finished = history.exists() and (
            not events.exists() or history.stat().st_mtime >= events.stat().st_mtime
        )
        if finished:
            full = self._history(history)
            finished = full is not None
            records = full if full is not None else records
        kind = "consensus" if any("epoch" in r for r in records[:1]) else "federation"
        status = "finished" if finished else ("running" if records else "waiting")
        parties = [] if kind == "consensus" else _sampled_parties(records)
        return {
            "id": self.RUN_ID,
            "title": self.folder.resolve().name,
            "kind": kind,
            "status": status,
            "error": None,
            "finished": finished,
            "points": _points(records, kind),
            "parties": party_rows(parties, {}, records),
        }
