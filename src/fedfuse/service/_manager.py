"""Federations living in the service: creation, parties, the training thread, restart recovery.

Each federation owns a ``RemotePool`` and, while it trains, a thread running the very same
``Federation`` round loop as a simulation. Everything needed to rebuild it after a crash is on
disk: the spec and parties in SQLite, the model file and hosted parties' data in its folder,
and a checkpoint after every completed round.

A federation's folder is built under a temporary name and renamed into place once every file is
on disk, with a manifest of their sizes and hashes; its database row comes last. On restart each
federation is checked against its manifest and rebuilt on its own: a damaged one fails alone,
with the reason, and the service serves the rest.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import hmac
import json
import logging
import os
import secrets
import shutil
import sqlite3
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedfuse.data import get_data_handler, load_party_npz
from fedfuse.federation import (
    Checkpoint,
    CheckpointError,
    Federation,
    fsync_directory,
    load_checkpoint,
    write_synced,
)
from fedfuse.models import TorchAdapter, build_model, get_model_type, torch_seed
from fedfuse.party import Party
from fedfuse.recipes import FederationSpec
from fedfuse.runtime import RemotePool
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

__all__ = ["Conflict", "Manager", "NotFound", "StorageError", "Unauthorized"]

FINISHED = ("completed", "stopped", "failed")
log = logging.getLogger("fedfuse.service")


def _describe(fid: str, record: dict[str, Any]) -> str:
    """One line per round: who took part and the metrics, weighted by examples."""
    parts = [f"{len(record['participants'])}/{len(record['sampled'])} parties"]
    for key in ("train", "federated"):
        metrics = record.get(key) or {}
        if "accuracy" in metrics:
            parts.append(
                f"{key} loss {metrics.get('loss', float('nan')):.4f} "
                f"accuracy {metrics['accuracy']:.4f} ({metrics['num_examples']} examples)"
            )
    for key in ("rejected", "failed"):
        for pid, reason in sorted((record.get(key) or {}).items()):
            parts.append(f"{key} {pid}: {str(reason)[:200]}")
    if record.get("not_fused"):
        parts.append(f"not fused: {record['not_fused']}")
    return f"federation {fid[:8]} round {record['round']}: " + ", ".join(parts)


def _check_labels(adapter: Any, data: Any) -> None:
    """Refuse class labels a torch classifier has no output for (they fail only mid-training)."""
    module = getattr(adapter, "module", None)
    labels = [split.y for split in (data.train, data.test) if split is not None and len(split)]
    if not isinstance(module, torch.nn.Module) or not labels:
        return
    if not all(y.ndim == 1 and np.issubdtype(y.dtype, np.integer) for y in labels):
        return
    training = module.training
    module.eval()  # no batch-norm statistics change
    try:
        with torch.no_grad():
            classes = module(torch.as_tensor(data.train.x[:2], dtype=torch.float32)).shape[-1]
    finally:
        module.train(training)
    found = np.unique(np.concatenate(labels))
    outside = found[(found < 0) | (found >= classes)]
    if outside.size:
        raise ValueError(
            f"labels {outside[:10].tolist()} are outside the model's {classes} classes "
            f"(0..{classes - 1})"
        )


class NotFound(LookupError):
    """No such federation or party."""


class Conflict(RuntimeError):
    """The request does not fit the federation's state (training twice, stopping twice...)."""


class Unauthorized(PermissionError):
    """A missing or wrong token."""


class StorageError(OSError):
    """The service could not store what it was given (a full disk, a read-only folder...);
    nothing half-written is left behind. ``errno`` is the cause's (``ENOSPC``: disk full)."""

    def __str__(self) -> str:
        return self.strerror or super().__str__()


MANIFEST = "manifest.json"


def _store_file(folder: Path, name: str, data: bytes) -> None:
    """Write ``name`` durably into a federation folder and record its size and hash in the
    folder's manifest, which recovery checks the file against."""
    write_synced(folder / name, data)
    manifest = _manifest(folder) or {}
    manifest[name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    write_synced(folder / MANIFEST, json.dumps(manifest, indent=1).encode())


def _manifest(folder: Path) -> dict[str, Any] | None:
    """The manifest, or ``None`` for folders made before there was one."""
    path = folder / MANIFEST
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_bytes())
    except ValueError:
        manifest = None
    if not isinstance(manifest, dict):
        raise ValueError(f"{path} is unreadable")
    return manifest


def _read_checked(folder: Path, name: str, manifest: dict[str, Any] | None) -> bytes | None:
    """The bytes of ``name`` as written at creation: ``ValueError`` naming the file if it is
    missing, shorter or different; ``None`` if the federation never had it."""
    path = folder / name
    if manifest is None:  # a folder made before manifests: only presence can be told
        return path.read_bytes() if path.exists() else None
    entry = manifest.get(name)
    if entry is None:
        return None
    if not path.exists():
        raise ValueError(f"{path} is missing")
    data = path.read_bytes()
    if len(data) != entry["bytes"]:
        raise ValueError(f"{path} is {len(data)} bytes; {entry['bytes']} were written")
    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise ValueError(f"{path} differs from the file written (sha256 mismatch)")
    return data


def _storage_error(action: str, exc: OSError | sqlite3.Error) -> StorageError:
    code = exc.errno if isinstance(exc, OSError) else None
    if isinstance(exc, sqlite3.OperationalError) and "full" in str(exc):
        code = errno.ENOSPC  # SQLite's "database or disk is full"
    if code in (errno.ENOSPC, errno.EDQUOT):
        return StorageError(code, f"{action}: the disk is full")
    return StorageError(code or errno.EIO, f"{action}: {getattr(exc, 'strerror', None) or exc}")


class _Finished(threading.Event):
    """``done`` of a run: an event that also calls back (e.g. to wake an asyncio waiter)."""

    def __init__(self) -> None:
        super().__init__()
        self._callbacks: list[Callable[[], None]] = []
        self._guard = threading.Lock()

    def when_set(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once, from the setting thread (at once if already set)."""
        with self._guard:
            if not self.is_set():
                self._callbacks.append(callback)
                return
        callback()

    def set(self) -> None:
        with self._guard:
            super().set()
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()


@dataclass
class _Run:
    fid: str
    spec: FederationSpec
    folder: Path
    pool: RemotePool
    initial: Weights
    model_bytes: bytes | None
    thread: threading.Thread | None = None
    stop: threading.Event = field(default_factory=threading.Event)
    done: _Finished = field(default_factory=_Finished)
    federation: Federation | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    status: str | None = None  # mirrors the store, for the long poll
    tokens: dict[str, str] = field(default_factory=dict)  # token hash -> party id
    hosted_adapter: Any = None  # the model the hosted parties share
    order: list[list[Any]] | None = None  # [name, shape] in the model's own order, once known


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
        self.store = Store(self.data_dir / "fedfuse.sqlite3", has_federations=bool(self._folders()))
        self.allowed_import_paths = tuple(allowed_import_paths)
        self.liveness = liveness
        self._runs: dict[str, _Run] = {}
        self._lock = threading.Lock()

    # building blocks --------------------------------------------------------------------------
    def _folders(self) -> list[Path]:
        """Every federation folder on disk (not those half-made by an interrupted creation)."""
        parent = self.data_dir / "federations"
        if not parent.is_dir():
            return []
        return [p for p in parent.iterdir() if p.is_dir() and not p.name.startswith(".")]

    def _write_folder(self, fid: str, files: dict[str, bytes]) -> Path:
        """Build a federation's folder under a temporary name beside its final place, every
        file flushed to disk, then rename it into place: a full disk or a crash while creating
        leaves no half-made federation (recovery deletes the temporary folder)."""
        parent = self.data_dir / "federations"
        folder = parent / fid
        tmp = parent / f".creating-{fid}"
        renamed = False
        try:
            (tmp / "parties").mkdir(parents=True)
            for name, data in files.items():
                _store_file(tmp, name, data)
            fsync_directory(tmp / "parties")
            os.rename(tmp, folder)
            renamed = True
            fsync_directory(parent)
        except OSError as exc:
            shutil.rmtree(folder if renamed else tmp, ignore_errors=True)
            raise _storage_error("could not store the federation's files", exc) from exc
        return folder

    def _adapter(self, spec: FederationSpec, model_bytes: bytes | None) -> Any:
        if model_bytes is not None:
            model_type = get_model_type(spec.model.model_type)
            return model_type.load(model_bytes, self.allowed_import_paths, limits=self.limits)
        if spec.model.name is not None:
            # seeded under torch_seed's lock: other federations' threads draw from the same
            # process-wide generator, and must neither disturb this draw nor be disturbed
            with torch_seed(spec.seed):
                model = build_model(
                    spec.model.name,
                    spec.model.input_shape,
                    spec.model.num_classes,
                    limits=self.limits,
                )
                return TorchAdapter(model)
        return None

    def _prepared_later(self, spec: FederationSpec, model_bytes: bytes | None) -> bool:
        """Model types such as doc2vec fix their weights only once all parties are known."""
        return model_bytes is not None and get_model_type(spec.model.model_type).prepare is not None

    def _run(self, fid: str) -> _Run:
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
        adapter = self._adapter(spec, model_bytes)
        if adapter is not None:
            weights = {} if self._prepared_later(spec, model_bytes) else adapter.get_weights()
        else:
            try:
                weights = from_bytes(initial_weights or b"")
            except WeightsFormatError as exc:
                raise SpecError(f"initial_weights: {exc}") from None
            if not weights:
                raise SpecError("initial_weights holds no arrays")
        fid = uuid.uuid4().hex
        token = join_token or secrets.token_urlsafe(24)
        files = {"initial.safetensors": to_bytes(weights)}
        if model_bytes is not None:
            files["model_file"] = model_bytes
        folder = self._write_folder(fid, files)
        try:  # the row comes last: without it, the folder is removed
            self.store.create_federation(fid, spec.to_dict(), token)
        except BaseException as exc:
            shutil.rmtree(folder, ignore_errors=True)
            if isinstance(exc, sqlite3.OperationalError):  # "database or disk is full"
                raise _storage_error("could not record the federation", exc) from exc
            raise
        with self._lock:
            self._runs[fid] = _Run(
                fid, spec, folder, RemotePool(self.liveness), weights, model_bytes
            )
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
        config = fed["config"] or {}  # None: a damaged row (the federation is failed)
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

    def list(self) -> list[dict[str, Any]]:
        return [
            {k: f[k] for k in ("id", "created", "status", "rounds_done", "error")}
            | {
                "rounds": (f["config"] or {}).get("rounds"),
                "fusion": ((f["config"] or {}).get("fusion") or {}).get("name"),
            }
            for f in self.store.federations()
        ]

    def global_weights(self, fid: str) -> Weights:
        run = self._run(fid)
        if run.federation is not None:
            return run.federation.weights
        try:
            checkpoint = load_checkpoint(run.folder / "checkpoint")
        except (CheckpointError, OSError) as exc:
            raise Conflict(f"the model of federation {fid} cannot be read: {exc}") from None
        if checkpoint is None and not run.initial and self.status_of(fid) == "failed":
            raise Conflict(f"federation {fid} failed before it had a model to download")
        return checkpoint.weights if checkpoint else run.initial

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

    def _hosted_party(self, run: _Run, party_id: str, handler: str, npz: bytes) -> Party:
        if run.model_bytes is None and run.spec.model.name is None:
            raise SpecError(
                "this federation was created from initial weights only; a party hosted by the "
                "service needs a model (create the federation with a model_file or a zoo model)"
            )
        data = get_data_handler(handler)(load_party_npz(npz, limits=self.limits))
        if self._prepared_later(run.spec, run.model_bytes):
            # each party keeps its own model (doc2vec: its document vectors); the weights
            # exist after the prepare step
            return Party(self._adapter(run.spec, run.model_bytes), data, party_id)
        # hosted parties run one task at a time and every task loads its weights first, so
        # they share one model in memory, as in the simulation
        if run.hosted_adapter is None:
            run.hosted_adapter = self._adapter(run.spec, run.model_bytes)
        adapter = run.hosted_adapter
        adapter.set_weights(run.initial)
        try:
            adapter.evaluate(data.train.subset(np.arange(min(2, len(data.train)))))
            _check_labels(adapter, data)
        except (RuntimeError, ValueError, IndexError) as exc:
            first = str(exc).splitlines()[0]
            raise SpecError(
                f"party data with examples of shape {data.train.x.shape[1:]} does not fit the "
                f"model: {first}"
            ) from None
        return Party(adapter, data, party_id)

    def add_hosted_party(self, fid: str, handler: str, npz: bytes) -> dict[str, Any]:
        """The tutorial's ``/start-party``: a party that runs here on uploaded data."""
        fed = self._check_open(fid)
        run = self._run(fid)
        with run.lock:
            count = len(self.store.parties(fid))
            if count >= run.spec.num_parties:
                raise Conflict(f"all {run.spec.num_parties} parties have already registered")
            party_id = f"party_{count}"
            party = self._hosted_party(run, party_id, handler, npz)
            path = run.folder / "parties" / f"{party_id}.npz"
            try:  # on disk whole before the store says the party exists
                write_synced(path, npz)
                self.store.add_party(fid, party_id, "hosted", handler=handler)
            except (OSError, sqlite3.Error) as exc:
                path.unlink(missing_ok=True)
                raise _storage_error("could not store the party's data", exc) from exc
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
        """Whether ``proof`` is the party's secret or its current party token (constant time)."""
        if not proof:
            return False
        secret = hashlib.sha256(self.party_secret(fid, party["party_id"]).encode()).digest()
        given = hashlib.sha256(proof.encode()).digest()
        token_hash = (party.get("token_hash") or "").encode()
        return hmac.compare_digest(given, secret) | hmac.compare_digest(
            hash_token(proof).encode(), token_hash
        )

    def join(self, token: str, name: str | None = None, proof: str | None = None) -> dict[str, Any]:
        """A remote party joins with the federation's join token; it gets its own token and,
        for a name, the ``party_secret`` that a rejoin by that name must send as ``proof``
        (its current party token proves it too): a name alone takes no identity."""
        fed = self.store.federation_by_join_token(token) if token else None
        if fed is None:
            raise Unauthorized("invalid join token")
        fid = fed["id"]
        self._check_open(fid)
        run = self._run(fid)
        if self._prepared_later(run.spec, run.model_bytes):
            raise Conflict(
                f"model_type {run.spec.model.model_type!r} agrees on its vocabulary among the "
                "parties the service hosts (POST /start-party); remote parties cannot join it"
            )
        with run.lock:
            parties = self.store.parties(fid)
            same = [p for p in parties if name and p["name"] == name and p["kind"] == "remote"]
            if same:
                if not self._proves(fid, same[0], proof):
                    raise Unauthorized(
                        f"party name {name!r} is taken in this federation; a rejoin proves it is "
                        "the same party with the party_secret of its first join"
                    )
                party_id = same[0]["party_id"]
            elif len(parties) >= run.spec.num_parties:
                raise Conflict(
                    f"all {run.spec.num_parties} parties have already joined "
                    "(a party that left rejoins with the same name)"
                )
            else:
                party_id = f"party_{len(parties)}"
            party_token = secrets.token_urlsafe(24)
            self.store.add_party(fid, party_id, "remote", name=name, token=party_token)
            run.tokens = {k: v for k, v in run.tokens.items() if v != party_id}
            run.pool.add_remote(party_id)
            remaining = max(0, run.spec.num_parties - len(self.store.parties(fid)))
        self._maybe_ready(fid, run, remaining, fed)
        return {
            "federation_id": fid,
            "party_id": party_id,
            "party_token": party_token,
            "party_secret": self.party_secret(fid, party_id),
            "model": self._model_description(run),
        }

    def _parameters(self, run: _Run) -> list[list[Any]] | None:
        """``[name, shape]`` of every weight in the model's own order (a torch module's
        ``state_dict()`` order), for parties whose code lists parameters by position (Flower
        clients); ``None`` when the service has no model to read it from."""
        if run.order is None and (run.model_bytes is not None or run.spec.model.name is not None):
            adapter = run.hosted_adapter or self._adapter(run.spec, run.model_bytes)
            names = getattr(adapter, "parameter_order", None)
            if names is not None and run.initial:
                run.order = [[n, list(run.initial[n].shape)] for n in names() if n in run.initial]
        return run.order

    def _model_description(self, run: _Run) -> dict[str, Any]:
        parameters = self._parameters(run)
        extra = {"parameters": parameters} if parameters else {}
        if run.model_bytes is not None:
            return {"source": "model_file", "model_type": run.spec.model.model_type, **extra}
        if run.spec.model.name is not None:
            return {
                **extra,
                "source": "zoo",
                "model": run.spec.model.name,
                "input_shape": list(run.spec.model.input_shape),
                "num_classes": run.spec.model.num_classes,
                "seed": run.spec.seed,
            }
        return {"source": "party"}

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

    def _maybe_ready(self, fid: str, run: _Run, remaining: int, fed: dict[str, Any]) -> None:
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
            if status == "training" and run.thread is not None and run.thread.is_alive():
                raise Conflict("this federation is already training")
            if status in FINISHED:
                raise Conflict(f"this federation is already {status}")
            self._set_status(fid, "training")
            run.done.clear()
            run.stop.clear()
            run.thread = threading.Thread(
                target=self._train, args=(run,), daemon=True, name=f"federation-{fid[:8]}"
            )
            run.thread.start()

    def _train(self, run: _Run) -> None:
        spec = run.spec
        try:
            if self._prepared_later(spec, run.model_bytes):
                hosted = run.pool.hosted()
                get_model_type(spec.model.model_type).prepare(
                    [p.adapter for p in hosted], [p.data.train for p in hosted]
                )
                run.initial = hosted[0].adapter.get_weights()
                _store_file(run.folder, "initial.safetensors", to_bytes(run.initial))
            federation = Federation(
                run.pool,
                run.initial,
                fusion=spec.fusion,
                config=spec.training,
                sampling=spec.sampling,
                aggregation=spec.aggregation,
                seed=spec.seed,
                federated_eval=spec.evaluation.federated,
                checkpoint_dir=run.folder / "checkpoint",
            )
            run.federation = federation
            # the checkpoint is the truth: rounds recorded after it (its newest file was
            # damaged, so it fell back one round) are trained again
            self.store.rewind(run.fid, federation.round)
            for record in federation.history:  # rounds completed before a restart
                self.store.record_round(run.fid, record)

            def on_round(record: dict[str, Any]) -> None:
                self.store.record_round(run.fid, record)
                log.info(_describe(run.fid, record))
                if run.stop.is_set():
                    raise _Stopped

            while federation.round < spec.rounds and not run.stop.is_set():
                # a round starts once a quorum of parties is live (after a restart, remote
                # parties come back as they poll again)
                if run.pool.wait_for_parties(spec.aggregation.quorum, timeout=1.0):
                    on_round(federation.run_round())
            if not run.stop.is_set():
                self._set_status(run.fid, "completed")
        except _Stopped:
            pass
        except Exception as exc:  # a failed federation is recorded, never crashes the service
            self._fail(run.fid, f"{type(exc).__name__}: {exc}")
        finally:
            run.done.set()

    def _fail(self, fid: str, reason: str) -> None:
        """Mark ``fid`` failed with ``reason``; if even the store cannot be written (a full
        disk), the service still knows and says so until it restarts."""
        log.warning("federation %s failed: %s", fid[:8], reason)
        try:
            self._set_status(fid, "failed", reason)
        except sqlite3.Error as exc:
            log.error("federation %s: could not record the failure: %s", fid[:8], exc)
            run = self._runs.get(fid)
            if run is not None:
                run.status = "failed"

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
            run.stop.set()
            run.pool.interrupt()  # a step waiting for replies ends now, not at its deadline

    # restart ----------------------------------------------------------------------------------
    def recover(self) -> list[str]:
        """Rebuild every federation from disk; restart those that were training.

        Each federation is rebuilt on its own: one whose stored settings or files are damaged
        becomes ``failed`` with the reason, and the others are served. Nothing raises out of
        here (the app's start calls it)."""
        self._remove_half_made()
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

    def _remove_half_made(self) -> None:
        """Delete folders of creations that a crash interrupted (they never had a row)."""
        parent = self.data_dir / "federations"
        try:
            leftovers = list(parent.glob(".creating-*")) if parent.is_dir() else []
        except OSError as exc:
            log.warning("cannot look for half-made federations in %s: %s", parent, exc)
            return
        for tmp in leftovers:
            log.warning("removing %s, left by an interrupted creation", tmp)
            shutil.rmtree(tmp, ignore_errors=True)

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
        manifest = _manifest(folder)
        initial_bytes = _read_checked(folder, "initial.safetensors", manifest)
        if initial_bytes is None:
            raise ValueError(f"{folder / 'initial.safetensors'} is missing")
        try:
            initial = from_bytes(initial_bytes)
        except WeightsFormatError as exc:
            raise ValueError(f"{folder / 'initial.safetensors'}: {exc}") from None
        model_bytes = _read_checked(folder, "model_file", manifest)
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
        run = _Run(fid, spec, folder, RemotePool(self.liveness), initial, model_bytes)
        for party in self.store.parties(fid):
            if party["kind"] == "hosted":
                party_id = party["party_id"]
                path = folder / "parties" / f"{party_id}.npz"
                if not path.exists():
                    raise ValueError(f"{path}, the data of hosted party {party_id}, is missing")
                hosted = self._hosted_party(run, party_id, party["handler"], path.read_bytes())
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
        run = _Run(fed["id"], spec, folder, RemotePool(self.liveness), initial, None)
        run.status = "failed"
        with self._lock:
            self._runs[fed["id"]] = run

    def shutdown(self) -> None:
        """Ask training threads to end after their current round (the store stays usable)."""
        for run in list(self._runs.values()):
            run.stop.set()
            run.pool.interrupt()


class _Stopped(Exception):
    pass
