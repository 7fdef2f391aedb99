"""Federations living in the service: creation, parties, identities, restart recovery.

The manager is thin: each federation is a ``FederationRunner`` (its spec, ``RemotePool``,
model and training thread; see ``_runner``), its files live in a folder built whole
(``_folders``), and its settings, parties and rounds in SQLite (``_store``). The manager
creates federations, admits parties (join tokens, party tokens, party secrets) and rebuilds
every federation on restart: each is checked against its manifest and rebuilt on its own, so a
damaged one fails alone, with the reason, and the service serves the rest.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import hmac
import logging
import os
import secrets
import shutil
import sqlite3
import threading
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fedfuse.federation import Checkpoint, load_checkpoint, write_synced
from fedfuse.models import get_model_type
from fedfuse.recipes import FederationSpec
from fedfuse.runtime import RemotePool
from fedfuse.service._errors import Conflict, NotFound, Unauthorized, storage_error
from fedfuse.service._folders import (
    federation_folders,
    read_checked,
    read_manifest,
    remove_half_made,
    write_folder,
)
from fedfuse.service._runner import FINISHED, FederationRunner, build_adapter
from fedfuse.service._spec import SpecError, check_spec, stored_spec
from fedfuse.service._store import Store, hash_token
from fedfuse.weights import (
    SizeLimits,
    Weights,
    WeightsFormatError,
    check_compatible,
    from_bytes,
    load_weights,
    to_bytes,
)

__all__ = ["Manager"]

log = logging.getLogger("fedfuse.service")


def _join_token() -> str:
    """A fresh join token that never starts with ``-``: users pass it on a command line
    (``fedfuse party --token ...``), where argparse would take it for an option."""
    while (token := secrets.token_urlsafe(24)).startswith("-"):
        pass
    return token


class Manager:
    """All federations of one service, backed by ``data_dir``.

    Args:
        allowed_import_paths: module prefixes whose classes uploaded model files may use, and
            from which custom data handlers may be named (operator configuration).
        liveness: seconds without a poll after which a remote party is not sampled.
    """

    def __init__(
        self,
        data_dir: str | Path,
        *,
        allowed_import_paths: Sequence[str] = (),
        liveness: float = 30.0,
        limits: SizeLimits | None = None,
    ) -> None:
        self.limits = limits or SizeLimits()
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        has_federations = bool(federation_folders(self.data_dir))
        self.store = Store(self.data_dir / "fedfuse.sqlite3", has_federations=has_federations)
        self.allowed_import_paths = tuple(allowed_import_paths)
        self.liveness = liveness
        self._runs: dict[str, FederationRunner] = {}
        self._lock = threading.Lock()

    # building blocks --------------------------------------------------------------------------
    def _runner(
        self,
        fid: str,
        spec: FederationSpec,
        folder: Path,
        initial: Weights,
        model_bytes: bytes | None,
    ) -> FederationRunner:
        return FederationRunner(
            fid,
            spec,
            folder,
            RemotePool(self.liveness),
            initial,
            model_bytes,
            store=self.store,
            limits=self.limits,
            allowed_import_paths=self.allowed_import_paths,
        )

    def _run(self, fid: str) -> FederationRunner:
        with self._lock:
            run = self._runs.get(fid)
        if run is None:
            raise NotFound(f"unknown aggregator id {fid!r}")
        return run

    # federations ------------------------------------------------------------------------------
    def create(
        self,
        spec: FederationSpec,
        *,
        model_bytes: bytes | None = None,
        initial_weights: bytes | None = None,
        join_token: str | None = None,
    ) -> tuple[str, str]:
        """Validate and register a federation; returns ``(aggregator_id, join_token)``."""
        check_spec(spec)
        sources = sum(x is not None for x in (model_bytes, initial_weights, spec.model.name))
        if sources != 1:
            raise SpecError(
                "give exactly one model source: a model_file, a zoo model name, or initial_weights"
            )
        if join_token is not None and (len(join_token) < 16 or len(join_token) > 256):
            raise SpecError("join_token must be 16 to 256 characters")
        if join_token is not None and self.store.federation_by_join_token(join_token):
            raise Conflict("this join token is already used by another federation")
        adapter = build_adapter(spec, model_bytes, self.allowed_import_paths, self.limits)
        prepared_later = model_bytes is not None and get_model_type(spec.model.model_type).prepare
        if adapter is not None:
            weights = {} if prepared_later else adapter.get_weights()
        else:
            try:
                weights = from_bytes(initial_weights or b"")
            except WeightsFormatError as exc:
                raise SpecError(f"initial_weights: {exc}") from None
            if not weights:
                raise SpecError("initial_weights holds no arrays")
        fid = uuid.uuid4().hex
        token = join_token or _join_token()
        files = {"initial.safetensors": to_bytes(weights)}
        if model_bytes is not None:
            files["model_file"] = model_bytes
        folder = write_folder(self.data_dir, fid, files)
        try:  # the row comes last: without it, the folder is removed
            self.store.create_federation(fid, spec.to_dict(), token)
        except BaseException as exc:
            shutil.rmtree(folder, ignore_errors=True)
            if isinstance(exc, sqlite3.OperationalError):  # "database or disk is full"
                raise storage_error("could not record the federation", exc) from exc
            raise
        with self._lock:
            self._runs[fid] = self._runner(fid, spec, folder, weights, model_bytes)
        return fid, token

    def status_of(self, fid: str) -> str:
        """Just the status word, from memory (the long poll asks it many times a second)."""
        run = self._run(fid)
        if run.status is None:
            run.status = self.store.federation(fid)["status"]
        return run.status

    def _set_status(self, fid: str, status: str, error: str | None = None) -> None:
        self.store.set_status(fid, status, error)
        run = self._runs.get(fid)
        if run is not None:
            run.status = status

    def status(self, fid: str) -> dict[str, Any]:
        fed = self.store.federation(fid)
        if fed is None:
            raise NotFound(f"unknown aggregator id {fid!r}")
        parties = self.store.parties(fid)
        run = self._runs.get(fid)
        live = set(run.pool.party_ids()) if run else set()
        config = self._config(fed["config"])
        fed["config"] = config or fed["config"]
        fed["parties"] = [
            {
                "party_id": p["party_id"],
                "kind": p["kind"],
                "name": p["name"],
                "connected": p["party_id"] in live,
            }
            for p in parties
        ]
        fed["parties_remaining"] = max(0, config.get("num_parties", 0) - len(parties))
        return fed

    @staticmethod
    def _config(stored: dict[str, Any] | None) -> dict[str, Any]:
        """The nested spec a federation was stored with (older rows hold the flat form);
        ``{}`` for a damaged row (that federation is failed)."""
        if not stored:
            return {}
        try:
            return stored_spec(stored).to_dict()
        except (TypeError, ValueError):
            return {}

    def list(self) -> list[dict[str, Any]]:
        rows = []
        for f in self.store.federations():
            config = self._config(f["config"])
            rows.append(
                {k: f[k] for k in ("id", "created", "status", "rounds_done", "error")}
                | {"rounds": config.get("rounds"), "fusion": config.get("fusion", {}).get("name")}
            )
        return rows

    def global_weights(self, fid: str) -> Weights:
        self.status_of(fid)  # the runner knows its status before it answers
        return self._run(fid).global_weights()

    def model_file(self, fid: str) -> bytes | None:
        return self._run(fid).model_bytes

    # parties ----------------------------------------------------------------------------------
    def _check_open(self, fid: str) -> dict[str, Any]:
        fed = self.store.federation(fid)
        if fed is None:
            raise NotFound(f"unknown aggregator id {fid!r}")
        if fed["status"] in FINISHED:
            raise Conflict(f"federation {fid} is {fed['status']}; it takes no more parties")
        return fed

    def add_hosted_party(self, fid: str, handler: str, npz: bytes) -> dict[str, Any]:
        """The tutorial's ``/start-party``: a party that runs here on uploaded data."""
        fed = self._check_open(fid)
        run = self._run(fid)
        with run.lock:
            count = len(self.store.parties(fid))
            if count >= run.spec.num_parties:
                raise Conflict(f"all {run.spec.num_parties} parties have already registered")
            party_id = f"party_{count}"
            party = run.hosted_party(party_id, handler, npz)
            path = run.folder / "parties" / f"{party_id}.npz"
            try:  # on disk whole before the store says the party exists
                write_synced(path, npz)
                self.store.add_party(fid, party_id, "hosted", handler=handler)
            except (OSError, sqlite3.Error) as exc:
                path.unlink(missing_ok=True)
                raise storage_error("could not store the party's data", exc) from exc
            run.pool.add_hosted(party_id, party)
            remaining = run.spec.num_parties - count - 1
        self._maybe_ready(fid, run, remaining, fed)
        return {"party_id": party_id, "parties_remaining": remaining}

    @functools.cached_property
    def _party_key(self) -> bytes:
        """The key party secrets are derived from: made once per ``data_dir``, owner-only."""
        path = self.data_dir / "party-secrets.key"
        if not path.exists():
            fresh = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
            fd = os.open(fresh, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(secrets.token_bytes(32))
            with contextlib.suppress(FileExistsError):  # another thread made it first
                os.link(fresh, path)
            fresh.unlink()
        return path.read_bytes()

    def party_secret(self, fid: str, party_id: str) -> str:
        """The secret a remote party proves its identity with when it rejoins by name."""
        digest = hmac.new(self._party_key, f"{fid}/{party_id}".encode(), hashlib.sha256)
        return digest.hexdigest()

    def _proves(self, fid: str, party: dict[str, Any], proof: str | None) -> bool:
        """Whether ``proof`` is the party's secret, the secret it chose at its first join, or
        its current party token (constant time)."""
        if not proof:
            return False
        secret = hashlib.sha256(self.party_secret(fid, party["party_id"]).encode()).digest()
        given = hashlib.sha256(proof.encode()).digest()
        proof_hash = hash_token(proof).encode()
        token_hash = (party.get("token_hash") or "").encode()
        chosen = (self.store.join_proof(fid, party["party_id"]) or "").encode()
        return (
            hmac.compare_digest(given, secret)
            | hmac.compare_digest(proof_hash, token_hash)
            | hmac.compare_digest(proof_hash, chosen)
        )

    def join(self, token: str, name: str | None = None, proof: str | None = None) -> dict[str, Any]:
        """A remote party joins with the federation's join token; it gets its own token and,
        for a name, the ``party_secret`` that a rejoin by that name must send as ``proof``
        (its current party token proves it too): a name alone takes no identity. A first
        join with a name may send a ``proof`` of its own choosing, which proves the name from
        then on too: a join retried because its answer was lost is the same party."""
        fed = self.store.federation_by_join_token(token) if token else None
        if fed is None:
            raise Unauthorized("invalid join token")
        fid = fed["id"]
        self._check_open(fid)
        run = self._run(fid)
        if run.prepared_later:
            raise Conflict(
                f"model_type {run.spec.model.model_type!r} agrees on its vocabulary among the "
                "parties the service hosts (POST /start-party); remote parties cannot join it"
            )
        with run.lock:
            count = self.store.party_count(fid)
            same = self.store.party_named(fid, name, "remote") if name else None
            if same is not None:
                if not self._proves(fid, same, proof):
                    raise Unauthorized(
                        f"party name {name!r} is taken in this federation; a rejoin proves it is "
                        "the same party with the party_secret of its first join"
                    )
                party_id = same["party_id"]
                run.tokens = {k: v for k, v in run.tokens.items() if v != party_id}
            elif count >= run.spec.num_parties:
                raise Conflict(
                    f"all {run.spec.num_parties} parties have already joined "
                    "(a party that left rejoins with the same name)"
                )
            else:
                party_id, count = f"party_{count}", count + 1
                if name and proof:  # its own secret: a retry whose answer was lost proves it
                    self.store.add_join_proof(fid, party_id, proof)
            party_token = secrets.token_urlsafe(24)
            self.store.add_party(fid, party_id, "remote", name=name, token=party_token)
            run.pool.add_remote(party_id)
            remaining = max(0, run.spec.num_parties - count)
        self._maybe_ready(fid, run, remaining, fed)
        return {
            "federation_id": fid,
            "party_id": party_id,
            "party_token": party_token,
            "party_secret": self.party_secret(fid, party_id),
            "model": run.model_description(),
        }

    def party_of(self, fid: str, party_token: str) -> str:
        """The party id that ``party_token`` belongs to in federation ``fid``; ``Unauthorized``
        if none. Valid tokens are remembered (by hash) so that polls do not query the database
        (a lookup by hash: the time it takes says nothing about the token)."""
        run = self._run(fid)
        key = hash_token(party_token) if party_token else ""
        party_id = run.tokens.get(key)
        if party_id is None:
            party = self.store.party_by_token(fid, party_token) if party_token else None
            if party is None:
                raise Unauthorized("invalid party token")
            party_id = party["party_id"]
            run.tokens[key] = party_id
        return party_id

    def authenticate(self, fid: str, party_token: str) -> str:
        """``party_of``, and the party counts as connected (it polls or posts)."""
        party_id = self.party_of(fid, party_token)
        run = self._run(fid)
        if not run.pool.knows(party_id):  # e.g. its first call after a restart
            run.pool.add_remote(party_id)
        return party_id

    def pool(self, fid: str) -> RemotePool:
        """The transport of federation ``fid``, which the party protocol's routes feed."""
        return self._run(fid).pool

    def when_done(self, fid: str, callback: Callable[[], None]) -> None:
        """Call ``callback`` (from the training thread) once training of ``fid`` ends."""
        self._run(fid).done.when_set(callback)

    def _maybe_ready(
        self, fid: str, run: FederationRunner, remaining: int, fed: dict[str, Any]
    ) -> None:
        if remaining == 0 and fed["status"] == "registering":
            self._set_status(fid, "ready")
            if run.spec.auto_start:
                self.start(fid)

    # training ---------------------------------------------------------------------------------
    def start(self, fid: str) -> None:
        """Start training in the background; ``Conflict`` if it cannot start now."""
        run = self._run(fid)
        with run.lock:
            fed = self.store.federation(fid)
            status = fed["status"]
            if status == "registering":
                remaining = run.spec.num_parties - len(self.store.parties(fid))
                raise Conflict(
                    f"waiting for {remaining} more part{'y' if remaining == 1 else 'ies'}"
                    " to register before training can start"
                )
            if status == "training" and run.training:
                raise Conflict("this federation is already training")
            if status in FINISHED:
                raise Conflict(f"this federation is already {status}")
            run.start()

    def _fail(self, fid: str, reason: str) -> None:
        run = self._runs.get(fid)
        if run is not None:
            run.fail(reason)
            return
        log.warning("federation %s failed: %s", fid[:8], reason)
        try:
            self.store.set_status(fid, "failed", reason)
        except sqlite3.Error as exc:
            log.error("federation %s: could not record the failure: %s", fid[:8], exc)

    def wait(self, fid: str, timeout: float | None = None) -> bool:
        """Block until training ends; False on timeout."""
        return self._run(fid).done.wait(timeout)

    def stop(self, fid: str) -> None:
        run = self._run(fid)
        with run.lock:
            fed = self.store.federation(fid)
            if fed["status"] in ("stopped", "failed"):
                raise Conflict(f"this federation is already {fed['status']}")
            # a completed federation is stopped too (the tutorial calls /stop after /train);
            # its model and history stay available
            self._set_status(fid, "stopped")
            run.stop()  # a step waiting for replies ends now, not at its deadline

    # restart ----------------------------------------------------------------------------------
    def recover(self) -> list[str]:
        """Rebuild every federation from disk; restart those that were training.

        Each federation is rebuilt on its own: one whose stored settings or files are damaged
        becomes ``failed`` with the reason, and the others are served. Nothing raises out of
        here (the app's start calls it)."""
        remove_half_made(self.data_dir)
        try:
            federations = self.store.federations()
        except sqlite3.Error as exc:
            log.error("cannot list the federations to recover: %s", exc)
            return []
        resumed = []
        for fed in federations:
            fid = fed["id"]
            if fid in self._runs:
                continue
            try:
                if self._recover(fed):
                    resumed.append(fid)
            except Exception as exc:
                self._fail(fid, f"cannot be recovered: {type(exc).__name__}: {exc}")
                self._keep_failed(fed)
        return resumed

    def _recover(self, fed: dict[str, Any]) -> bool:
        """Rebuild one federation, checking its files; True if it resumed training."""
        fid = fed["id"]
        if fed["config"] is None:
            raise ValueError("its stored settings are damaged (not a JSON object)")
        spec = stored_spec(fed["config"])
        if fed["status"] == "failed":  # keep its reason; its files may be what failed it
            self._keep_failed(fed)
            return False
        check_spec(spec)
        folder = self.data_dir / "federations" / fid
        if not folder.is_dir():
            raise ValueError(f"its folder {folder} is missing")
        manifest = read_manifest(folder)
        initial_bytes = read_checked(folder, "initial.safetensors", manifest)
        if initial_bytes is None:
            raise ValueError(f"{folder / 'initial.safetensors'} is missing")
        try:
            initial = from_bytes(initial_bytes)
        except WeightsFormatError as exc:
            raise ValueError(f"{folder / 'initial.safetensors'}: {exc}") from None
        model_bytes = read_checked(folder, "model_file", manifest)
        checkpoint = load_checkpoint(folder / "checkpoint")  # CheckpointError if none usable
        if checkpoint is None and fed["rounds_done"] > 0:
            raise ValueError(
                f"{folder / 'checkpoint'} holds no checkpoint, but the store records "
                f"{fed['rounds_done']} completed round(s)"
            )
        if checkpoint is not None and initial:
            check_compatible(initial, checkpoint.weights)
        if checkpoint is not None and checkpoint.round < fed["rounds_done"]:
            self._rewound(fed, checkpoint)
        run = self._runner(fid, spec, folder, initial, model_bytes)
        for party in self.store.parties(fid):
            if party["kind"] == "hosted":
                party_id = party["party_id"]
                path = folder / "parties" / f"{party_id}.npz"
                if not path.exists():
                    raise ValueError(f"{path}, the data of hosted party {party_id}, is missing")
                hosted = run.hosted_party(party_id, party["handler"], path.read_bytes())
                run.pool.add_hosted(party_id, hosted)
        with self._lock:
            self._runs[fid] = run
        if fed["status"] != "training":
            return False
        self._set_status(fid, "ready")
        self.start(fid)
        return True

    def _rewound(self, fed: dict[str, Any], checkpoint: Checkpoint) -> None:
        """The newest checkpoint was damaged and an older one is used: the store forgets the
        rounds after it. Training redoes them; a finished federation keeps its status and says
        which round its model is from."""
        fid = fed["id"]
        self.store.rewind(fid, checkpoint.round)
        if fed["status"] != "training":
            self._set_status(
                fid,
                fed["status"],
                f"its newest checkpoint was damaged ({'; '.join(checkpoint.skipped)}); the model "
                f"is round {checkpoint.round}'s",
            )

    def _keep_failed(self, fed: dict[str, Any]) -> None:
        """Register a failed federation without its parties, so that parties polling it hear
        that it failed and its status stays readable (not possible if its settings are lost)."""
        if fed["config"] is None:
            return
        try:
            spec = stored_spec(fed["config"])
        except (TypeError, ValueError):
            return
        folder = self.data_dir / "federations" / fed["id"]
        try:
            initial = load_weights(folder / "initial.safetensors")
        except (OSError, ValueError):
            initial = {}
        run = self._runner(fed["id"], spec, folder, initial, None)
        run.status = "failed"
        with self._lock:
            self._runs[fed["id"]] = run

    def shutdown(self) -> None:
        """Ask training threads to end after their current round (the store stays usable)."""
        for run in list(self._runs.values()):
            run.stop()
