"""Federations living in the service: creation, parties, the training thread, restart recovery.

Each federation owns a ``RemotePool`` and, while it trains, a thread running the very same
``Federation`` round loop as a simulation. Everything needed to rebuild it after a crash is on
disk: the spec and parties in SQLite, the model file and hosted parties' data in its folder,
and a checkpoint after every completed round.
"""

from __future__ import annotations

import logging
import secrets
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedfuse.data import get_data_handler, load_party_npz
from fedfuse.federation import Federation, load_checkpoint
from fedfuse.fusion import get_fusion
from fedfuse.models import TorchAdapter, build_model, get_model_type
from fedfuse.party import Party
from fedfuse.runtime import RemotePool
from fedfuse.service._spec import FederationSpec, SpecError
from fedfuse.service._store import Store, hash_token
from fedfuse.weights import Weights, WeightsFormatError, from_bytes, load_weights, save_weights

__all__ = ["Conflict", "Manager", "NotFound", "Unauthorized"]

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
    if record.get("rejected"):
        parts.append(f"rejected {sorted(record['rejected'])}")
    if record.get("failed"):
        parts.append(f"failed {sorted(record['failed'])}")
    return f"federation {fid[:8]} round {record['round']}: " + ", ".join(parts)


class NotFound(LookupError):
    """No such federation or party."""


class Conflict(RuntimeError):
    """The request does not fit the federation's state (training twice, stopping twice...)."""


class Unauthorized(PermissionError):
    """A missing or wrong token."""


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
    done: threading.Event = field(default_factory=threading.Event)
    federation: Federation | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    status: str | None = None  # mirrors the store, for the long poll
    tokens: dict[str, str] = field(default_factory=dict)  # token hash -> party id
    hosted_adapter: Any = None  # the model the hosted parties share


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
    ) -> None:
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.store = Store(self.data_dir / "fedfuse.sqlite3")
        self.allowed_import_paths = tuple(allowed_import_paths)
        self.liveness = liveness
        self._runs: dict[str, _Run] = {}
        self._lock = threading.Lock()

    # building blocks --------------------------------------------------------------------------
    def _adapter(self, spec: FederationSpec, model_bytes: bytes | None) -> Any:
        if model_bytes is not None:
            return get_model_type(spec.model_type).load(model_bytes, self.allowed_import_paths)
        if spec.model is not None:
            torch.manual_seed(spec.seed)
            return TorchAdapter(build_model(spec.model, spec.input_shape, spec.num_classes))
        return None

    def _prepared_later(self, spec: FederationSpec, model_bytes: bytes | None) -> bool:
        """Model types such as doc2vec fix their weights only once all parties are known."""
        return model_bytes is not None and get_model_type(spec.model_type).prepare is not None

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
        spec.validate()
        sources = sum(x is not None for x in (model_bytes, initial_weights, spec.model))
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
        folder = self.data_dir / "federations" / fid
        (folder / "parties").mkdir(parents=True)
        save_weights(folder / "initial.safetensors", weights)
        if model_bytes is not None:
            (folder / "model_file").write_bytes(model_bytes)
        self.store.create_federation(fid, spec.to_dict(), token)
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
        fed["parties"] = [
            {
                "party_id": p["party_id"],
                "kind": p["kind"],
                "name": p["name"],
                "connected": p["party_id"] in live,
            }
            for p in parties
        ]
        fed["parties_remaining"] = max(0, fed["config"]["num_parties"] - len(parties))
        return fed

    def list(self) -> list[dict[str, Any]]:
        return [
            {k: f[k] for k in ("id", "created", "status", "rounds_done")}
            | {"rounds": f["config"]["rounds"], "fusion_algorithm": f["config"]["fusion_algorithm"]}
            for f in self.store.federations()
        ]

    def global_weights(self, fid: str) -> Weights:
        run = self._run(fid)
        if run.federation is not None:
            return run.federation.weights
        checkpoint = load_checkpoint(run.folder / "checkpoint")
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
        if run.model_bytes is None and run.spec.model is None:
            raise SpecError(
                "this federation was created from initial weights only; a party hosted by the "
                "service needs a model (create the federation with a model_file or a zoo model)"
            )
        data = get_data_handler(handler)(load_party_npz(npz))
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
        except (RuntimeError, ValueError) as exc:
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
            (run.folder / "parties" / f"{party_id}.npz").write_bytes(npz)
            self.store.add_party(fid, party_id, "hosted", handler=handler)
            run.pool.add_hosted(party_id, party)
            remaining = run.spec.num_parties - count - 1
        self._maybe_ready(fid, run, remaining, fed)
        return {"party_id": party_id, "parties_remaining": remaining}

    def join(self, token: str, name: str | None = None) -> dict[str, Any]:
        """A remote party joins with the federation's join token; it gets its own token."""
        fed = self.store.federation_by_join_token(token) if token else None
        if fed is None:
            raise Unauthorized("invalid join token")
        fid = fed["id"]
        self._check_open(fid)
        run = self._run(fid)
        if self._prepared_later(run.spec, run.model_bytes):
            raise Conflict(
                f"model_type {run.spec.model_type!r} agrees on its vocabulary among the parties "
                "the service hosts (POST /start-party); remote parties cannot join it"
            )
        with run.lock:
            parties = self.store.parties(fid)
            same = [p for p in parties if name and p["name"] == name and p["kind"] == "remote"]
            if same:
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
            "model": self._model_description(run),
        }

    def _model_description(self, run: _Run) -> dict[str, Any]:
        if run.model_bytes is not None:
            return {"source": "model_file", "model_type": run.spec.model_type}
        if run.spec.model is not None:
            return {
                "source": "zoo",
                "model": run.spec.model,
                "input_shape": list(run.spec.input_shape),
                "num_classes": run.spec.num_classes,
                "seed": run.spec.seed,
            }
        return {"source": "party"}

    def authenticate(self, fid: str, party_token: str) -> str:
        """The party id that ``party_token`` belongs to in federation ``fid``.

        Valid tokens are remembered (by hash) so that polls do not query the database."""
        run = self._run(fid)
        key = hash_token(party_token) if party_token else ""
        party_id = run.tokens.get(key)
        if party_id is None:
            party = self.store.party_by_token(fid, party_token) if party_token else None
            if party is None:
                raise Unauthorized("invalid party token")
            party_id = party["party_id"]
            run.tokens[key] = party_id
            run.pool.add_remote(party_id)
        return party_id

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
                get_model_type(spec.model_type).prepare(
                    [p.adapter for p in hosted], [p.data.train for p in hosted]
                )
                run.initial = hosted[0].adapter.get_weights()
                save_weights(run.folder / "initial.safetensors", run.initial)
            federation = Federation(
                run.pool,
                run.initial,
                fusion=get_fusion(spec.fusion_algorithm, **spec.fusion_params),
                config=spec.train_config(),
                fraction=spec.fraction,
                count=spec.count,
                seed=spec.seed,
                quorum=spec.quorum,
                timeout=spec.round_timeout,
                federated_eval=True,
                checkpoint_dir=run.folder / "checkpoint",
                max_update_norm=spec.max_update_norm,
                max_update_ratio=spec.max_update_ratio,
            )
            run.federation = federation
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
                if run.pool.wait_for_parties(spec.quorum, timeout=1.0):
                    on_round(federation.run_round())
            if not run.stop.is_set():
                self._set_status(run.fid, "completed")
        except _Stopped:
            pass
        except Exception as exc:  # a failed federation is recorded, never crashes the service
            self._set_status(run.fid, "failed", f"{type(exc).__name__}: {exc}")
        finally:
            run.done.set()

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

    # restart ----------------------------------------------------------------------------------
    def recover(self) -> list[str]:
        """Rebuild every federation from disk; restart those that were training."""
        resumed = []
        for fed in self.store.federations():
            fid = fed["id"]
            if fid in self._runs:
                continue
            spec = FederationSpec.from_dict(fed["config"])
            folder = self.data_dir / "federations" / fid
            model_file = folder / "model_file"
            model_bytes = model_file.read_bytes() if model_file.exists() else None
            run = _Run(
                fid,
                spec,
                folder,
                RemotePool(self.liveness),
                load_weights(folder / "initial.safetensors"),
                model_bytes,
            )
            for party in self.store.parties(fid):
                if party["kind"] == "hosted":
                    npz = (folder / "parties" / f"{party['party_id']}.npz").read_bytes()
                    run.pool.add_hosted(
                        party["party_id"],
                        self._hosted_party(run, party["party_id"], party["handler"], npz),
                    )
            with self._lock:
                self._runs[fid] = run
            if fed["status"] == "training":
                self._set_status(fid, "ready")
                self.start(fid)
                resumed.append(fid)
        return resumed

    def shutdown(self) -> None:
        """Ask training threads to end after their current round (the store stays usable)."""
        for run in list(self._runs.values()):
            run.stop.set()


class _Stopped(Exception):
    pass
