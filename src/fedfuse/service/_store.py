"""The service's state in SQLite: federations, parties, rounds, rejected updates.

Round records are written in the same transaction as the federation's round counter, so the
store never claims a round it has not recorded. Checkpoint files (weights) live next to the
database; on restart the checkpoint is the source of truth and the store is brought up to it.

A database that is damaged, or is not fedfuse's, is refused when it is opened (``StoreError``),
and so is an empty or missing one while federation folders exist beside it: lost state is never
silently taken for a new, empty service.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["Store", "StoreError", "hash_token"]

log = logging.getLogger("fedfuse.service")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS federations (
    id TEXT PRIMARY KEY,
    created REAL NOT NULL,
    config TEXT NOT NULL,
    status TEXT NOT NULL,
    join_token_hash TEXT NOT NULL UNIQUE,
    rounds_done INTEGER NOT NULL DEFAULT 0,
    error TEXT
);
CREATE TABLE IF NOT EXISTS parties (
    federation_id TEXT NOT NULL REFERENCES federations(id),
    party_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    name TEXT,
    token_hash TEXT,
    handler TEXT,
    joined REAL NOT NULL,
    PRIMARY KEY (federation_id, party_id)
);
CREATE TABLE IF NOT EXISTS rounds (
    federation_id TEXT NOT NULL REFERENCES federations(id),
    round INTEGER NOT NULL,
    record TEXT NOT NULL,
    PRIMARY KEY (federation_id, round)
);
CREATE TABLE IF NOT EXISTS join_proofs (
    federation_id TEXT NOT NULL REFERENCES federations(id),
    party_id TEXT NOT NULL,
    proof_hash TEXT NOT NULL,
    PRIMARY KEY (federation_id, party_id)
);
CREATE TABLE IF NOT EXISTS rejected (
    federation_id TEXT NOT NULL REFERENCES federations(id),
    round INTEGER NOT NULL,
    party_id TEXT NOT NULL,
    reason TEXT NOT NULL
);
"""


def hash_token(token: str) -> str:
    """Tokens are stored hashed: a copy of the database does not let anyone join."""
    return hashlib.sha256(token.encode()).hexdigest()


_COLUMNS = {
    "federations": {"id", "created", "config", "status", "join_token_hash", "rounds_done", "error"},
    "parties": {"federation_id", "party_id", "kind", "name", "token_hash", "handler", "joined"},
    "rounds": {"federation_id", "round", "record"},
    "rejected": {"federation_id", "round", "party_id", "reason"},
}


class StoreError(ValueError):
    """The database file is damaged, is not fedfuse's, or is empty where state should be."""


class Store:
    """A thread-safe wrapper over one SQLite file (WAL journal, one connection, one lock).

    Args:
        path: the SQLite file; created if it does not exist.
        has_federations: federation folders exist beside the database, so a missing, empty
            or table-less database means lost state: it is refused, not initialised.
    """

    def __init__(self, path: str | Path, *, has_federations: bool = False) -> None:
        self.path = Path(path)
        self._check_file(has_federations)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        try:
            self._check_schema(has_federations)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise StoreError(f"{self.path} cannot be used as fedfuse's database: {exc}") from None
        except BaseException:
            self._db.close()
            raise

    def _refuse(self, problem: str) -> StoreError:
        return StoreError(
            f"{self.path} {problem}, but federation folders exist beside it; restore the "
            "database from a backup, or move the federations folder away to start an empty "
            "service (only then is an empty database initialised as new)"
        )

    def _check_file(self, has_federations: bool) -> None:
        if not self.path.exists():
            if has_federations:
                raise self._refuse("is missing")
        elif self.path.stat().st_size == 0:
            if has_federations:
                raise self._refuse("is empty (0 bytes)")
            log.info("%s is empty (0 bytes) and no federations exist: a new service", self.path)

    def _check_schema(self, has_federations: bool) -> None:
        """``PRAGMA quick_check``, then fedfuse's tables and their columns."""
        problems = [row[0] for row in self._db.execute("PRAGMA quick_check").fetchall()]
        if problems != ["ok"]:
            raise StoreError(f"{self.path} is damaged (SQLite quick_check: {problems[0]})")
        names = [
            row[0]
            for row in self._db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            )
        ]
        if not names:
            if has_federations:
                raise self._refuse("holds no tables")
            return
        for table, columns in _COLUMNS.items():
            if table not in names:
                raise StoreError(
                    f"{self.path} is not a fedfuse database: it has no table {table!r} "
                    f"(tables: {', '.join(sorted(names))})"
                )
            found = {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}
            if not columns <= found:
                raise StoreError(
                    f"{self.path} is not a fedfuse database: table {table!r} lacks "
                    f"{', '.join(sorted(columns - found))}"
                )

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # federations ------------------------------------------------------------------------------
    def create_federation(self, fid: str, config: dict[str, Any], join_token: str) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO federations (id, created, config, status, join_token_hash) "
                "VALUES (?, ?, ?, 'registering', ?)",
                (fid, time.time(), json.dumps(config), hash_token(join_token)),
            )

    def federation(self, fid: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM federations WHERE id = ?", (fid,)).fetchone()
        return self._federation_row(row) if row else None

    def federation_by_join_token(self, token: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute(
                "SELECT * FROM federations WHERE join_token_hash = ?", (hash_token(token),)
            ).fetchone()
        return self._federation_row(row) if row else None

    def federations(self) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM federations ORDER BY created").fetchall()
        return [self._federation_row(r) for r in rows]

    @staticmethod
    def _config(text: str) -> dict[str, Any] | None:
        """The stored settings, or ``None`` where the row is damaged (that federation fails
        alone, with the reason, instead of every listing failing)."""
        try:
            config = json.loads(text)
        except (TypeError, ValueError):
            return None
        return config if isinstance(config, dict) else None

    @classmethod
    def _federation_row(cls, row: sqlite3.Row) -> dict[str, Any]:
        return {
            "id": row["id"],
            "created": row["created"],
            "config": cls._config(row["config"]),
            "status": row["status"],
            "rounds_done": row["rounds_done"],
            "error": row["error"],
        }

    def set_status(self, fid: str, status: str, error: str | None = None) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE federations SET status = ?, error = ? WHERE id = ?", (status, error, fid)
            )

    # parties ----------------------------------------------------------------------------------
    def add_party(
        self,
        fid: str,
        party_id: str,
        kind: str,
        *,
        name: str | None = None,
        token: str | None = None,
        handler: str | None = None,
    ) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO parties "
                "(federation_id, party_id, kind, name, token_hash, handler, joined) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (fid, party_id, kind, name, token and hash_token(token), handler, time.time()),
            )

    def add_join_proof(self, fid: str, party_id: str, proof: str) -> None:
        """Keep (hashed) the secret a party chose at its first join: a retry of that join
        whose answer was lost proves the name with it."""
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO join_proofs (federation_id, party_id, proof_hash) "
                "VALUES (?, ?, ?)",
                (fid, party_id, hash_token(proof)),
            )

    def join_proof(self, fid: str, party_id: str) -> str | None:
        """The hash of the secret ``party_id`` chose at its first join, if it chose one."""
        with self._lock:
            row = self._db.execute(
                "SELECT proof_hash FROM join_proofs WHERE federation_id = ? AND party_id = ?",
                (fid, party_id),
            ).fetchone()
        return row[0] if row else None

    def parties(self, fid: str) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT party_id, kind, name, handler, joined, token_hash FROM parties "
                "WHERE federation_id = ? ORDER BY joined, party_id",
                (fid,),
            ).fetchall()
        return [dict(r) for r in rows]

    def party_count(self, fid: str) -> int:
        """How many parties (hosted and remote) federation ``fid`` has."""
        with self._lock:
            row = self._db.execute(
                "SELECT COUNT(*) FROM parties WHERE federation_id = ?", (fid,)
            ).fetchone()
        return int(row[0])

    def party_named(self, fid: str, name: str, kind: str) -> dict[str, Any] | None:
        """The party of ``kind`` called ``name`` in federation ``fid``, if any: a join looks
        up only its own name, so N joins cost O(N) rows read, not O(N^2)."""
        with self._lock:
            row = self._db.execute(
                "SELECT party_id, kind, name, handler, joined, token_hash FROM parties "
                "WHERE federation_id = ? AND name = ? AND kind = ? ORDER BY joined LIMIT 1",
                (fid, name, kind),
            ).fetchone()
        return dict(row) if row else None

    def party_by_token(self, fid: str, token: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute(
                "SELECT party_id, kind, name FROM parties "
                "WHERE federation_id = ? AND token_hash = ?",
                (fid, hash_token(token)),
            ).fetchone()
        return dict(row) if row else None

    # rounds -----------------------------------------------------------------------------------
    def record_round(self, fid: str, record: dict[str, Any]) -> None:
        """Store one round's record (idempotent) and advance the round counter."""
        round_num = int(record["round"])
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO rounds (federation_id, round, record) VALUES (?, ?, ?)",
                (fid, round_num, json.dumps(record)),
            )
            db.execute(
                "DELETE FROM rejected WHERE federation_id = ? AND round = ?", (fid, round_num)
            )
            db.executemany(
                "INSERT INTO rejected (federation_id, round, party_id, reason) VALUES (?,?,?,?)",
                [(fid, round_num, p, r) for p, r in record.get("rejected", {}).items()],
            )
            db.execute(
                "UPDATE federations SET rounds_done = MAX(rounds_done, ?) WHERE id = ?",
                (round_num, fid),
            )

    def rewind(self, fid: str, round_num: int) -> None:
        """Forget the rounds after ``round_num``: training resumed from an older checkpoint
        (its newest file was damaged) and trains them again."""
        with self._tx() as db:
            for table in ("rounds", "rejected"):
                db.execute(
                    f"DELETE FROM {table} WHERE federation_id = ? AND round > ?", (fid, round_num)
                )
            db.execute(
                "UPDATE federations SET rounds_done = MIN(rounds_done, ?) WHERE id = ?",
                (round_num, fid),
            )

    def rounds(self, fid: str) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT round, record FROM rounds WHERE federation_id = ? ORDER BY round", (fid,)
            ).fetchall()
        return [self._round_record(r) for r in rows]

    @staticmethod
    def _round_record(row: sqlite3.Row) -> dict[str, Any]:
        """A round's record; a damaged one is reported as such, not raised (the history of
        every other round stays readable)."""
        try:
            record = json.loads(row["record"])
        except (TypeError, ValueError):
            record = None
        if not isinstance(record, dict):
            return {"round": row["round"], "error": "the stored record of this round is damaged"}
        return record

    def rejected(self, fid: str) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT round, party_id, reason FROM rejected WHERE federation_id = ? "
                "ORDER BY round, party_id",
                (fid,),
            ).fetchall()
        return [dict(r) for r in rows]
