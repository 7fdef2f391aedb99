"""One federation living in the service: its spec, transport, model and training thread.

A ``FederationRunner`` runs the very same ``Federation`` round loop as a simulation, on a
``RemotePool`` fed by the party protocol's routes, in a thread of its own. It records every
round in the store and a checkpoint after every round in its folder, so a restarted service
rebuilds it (``Manager.recover``) and training continues where it was.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedfuse.data import get_data_handler, load_party_npz
from fedfuse.federation import CheckpointError, Federation, PrivacyBudgetExceeded, load_checkpoint
from fedfuse.models import TorchAdapter, build_model, get_model_type, torch_seed
from fedfuse.party import Party
from fedfuse.recipes import FederationSpec
from fedfuse.runtime import RemotePool
from fedfuse.service._errors import Conflict
from fedfuse.service._folders import store_file
from fedfuse.service._spec import SpecError
from fedfuse.service._store import Store
from fedfuse.weights import SizeLimits, Weights, to_bytes

__all__ = ["FINISHED", "FederationRunner", "Finished", "build_adapter", "describe_round"]

FINISHED = ("completed", "stopped", "failed")
log = logging.getLogger("fedfuse.service")


def describe_round(fid: str, record: dict[str, Any]) -> str:
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
    if "epsilon" in record:
        parts.append(f"epsilon {record['epsilon']:.4g} at delta {record['delta']:g}")
    if record.get("not_fused"):
        parts.append(f"not fused: {record['not_fused']}")
    return f"federation {fid[:8]} round {record['round']}: " + ", ".join(parts)


def check_labels(adapter: Any, data: Any) -> None:
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


class Finished(threading.Event):
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


def build_adapter(
    spec: FederationSpec,
    model_bytes: bytes | None,
    allowed_import_paths: Sequence[str],
    limits: SizeLimits,
) -> Any:
    """The model of ``spec``: from an uploaded model file, the zoo, or ``None`` (the parties
    bring their own)."""
    if model_bytes is not None:
        model_type = get_model_type(spec.model.model_type)
        return model_type.load(model_bytes, allowed_import_paths, limits=limits)
    if spec.model.name is not None:
        # seeded under torch_seed's lock: other federations' threads draw from the same
        # process-wide generator, and must neither disturb this draw nor be disturbed
        with torch_seed(spec.seed):
            model = build_model(
                spec.model.name, spec.model.input_shape, spec.model.num_classes, limits=limits
            )
            return TorchAdapter(model)
    return None


class _Stopped(Exception):
    pass


class FederationRunner:
    """One federation of the service (see the module docstring).

    Args:
        fid: its id; ``spec`` its settings; ``folder`` where its files and checkpoints are.
        pool: the transport its parties reach it through.
        initial: the initial global weights (empty until a doc2vec federation is prepared).
        model_bytes: the uploaded model file, if any.
        store: the service's store (status, rounds); ``limits`` and ``allowed_import_paths``
            bound what the model file may build.
    """

    def __init__(
        self,
        fid: str,
        spec: FederationSpec,
        folder: Path,
        pool: RemotePool,
        initial: Weights,
        model_bytes: bytes | None,
        *,
        store: Store,
        limits: SizeLimits,
        allowed_import_paths: Sequence[str] = (),
    ) -> None:
        self.fid, self.spec, self.folder, self.pool = fid, spec, folder, pool
        self.initial, self.model_bytes = initial, model_bytes
        self.store, self.limits = store, limits
        self.allowed_import_paths = tuple(allowed_import_paths)
        self.thread: threading.Thread | None = None
        self.stop_event = threading.Event()
        self.done = Finished()
        self.federation: Federation | None = None
        self.lock = threading.Lock()
        self.status: str | None = None  # mirrors the store, for the long poll
        self.tokens: dict[str, str] = {}  # token hash -> party id
        self.hosted_adapter: Any = None  # the model the hosted parties share
        self.order: list[list[Any]] | None = None  # [name, shape] in the model's own order

    # ---- the model ---------------------------------------------------------------------------
    def adapter(self) -> Any:
        return build_adapter(self.spec, self.model_bytes, self.allowed_import_paths, self.limits)

    @property
    def prepared_later(self) -> bool:
        """Model types such as doc2vec fix their weights only once all parties are known."""
        model_type = get_model_type(self.spec.model.model_type)
        return self.model_bytes is not None and model_type.prepare is not None

    def parameters(self) -> list[list[Any]] | None:
        """``[name, shape]`` of every weight in the model's own order (a torch module's
        ``state_dict()`` order), for parties whose code lists parameters by position (Flower
        clients); ``None`` when the service has no model to read it from."""
        if self.order is None and (self.model_bytes is not None or self.spec.model.name):
            names = getattr(self.hosted_adapter or self.adapter(), "parameter_order", None)
            if names is not None and self.initial:
                self.order = [
                    [n, list(self.initial[n].shape)] for n in names() if n in self.initial
                ]
        return self.order

    def model_description(self) -> dict[str, Any]:
        """How a joining party builds its model (the join answer's ``model``)."""
        parameters = self.parameters()
        extra = {"parameters": parameters} if parameters else {}
        model = self.spec.model
        if self.model_bytes is not None:
            return {"source": "model_file", "model_type": model.model_type, **extra}
        if model.name is not None:
            return {
                **extra,
                "source": "zoo",
                "model": model.name,
                "input_shape": list(model.input_shape),
                "num_classes": model.num_classes,
                "seed": self.spec.seed,
            }
        return {"source": "party"}

    def global_weights(self) -> Weights:
        """The newest global model: in memory while training, else the newest checkpoint."""
        if self.federation is not None:
            return self.federation.weights
        try:
            checkpoint = load_checkpoint(self.folder / "checkpoint")
        except (CheckpointError, OSError) as exc:
            raise Conflict(f"the model of federation {self.fid} cannot be read: {exc}") from None
        if checkpoint is None and not self.initial and self.status == "failed":
            raise Conflict(f"federation {self.fid} failed before it had a model to download")
        return checkpoint.weights if checkpoint else self.initial

    def hosted_party(self, party_id: str, handler: str, npz: bytes) -> Party:
        """A party that trains here on uploaded data (checked against the model first)."""
        if self.model_bytes is None and self.spec.model.name is None:
            raise SpecError(
                "this federation was created from initial weights only; a party hosted by the "
                "service needs a model (create the federation with a model_file or a zoo model)"
            )
        data = get_data_handler(handler)(load_party_npz(npz, limits=self.limits))
        if self.prepared_later:
            # each party keeps its own model (doc2vec: its document vectors); the weights
            # exist after the prepare step
            return Party(self.adapter(), data, party_id)
        # hosted parties run one task at a time and every task loads its weights first, so
        # they share one model in memory, as in the simulation
        if self.hosted_adapter is None:
            self.hosted_adapter = self.adapter()
        adapter = self.hosted_adapter
        adapter.set_weights(self.initial)
        try:
            adapter.evaluate(data.train.subset(np.arange(min(2, len(data.train)))))
            check_labels(adapter, data)
        except (RuntimeError, ValueError, IndexError) as exc:
            first = str(exc).splitlines()[0]
            raise SpecError(
                f"party data with examples of shape {data.train.x.shape[1:]} does not fit the "
                f"model: {first}"
            ) from None
        return Party(adapter, data, party_id)

    # ---- status ------------------------------------------------------------------------------
    def set_status(self, status: str, error: str | None = None) -> None:
        self.store.set_status(self.fid, status, error)
        self.status = status

    def fail(self, reason: str) -> None:
        """Mark it failed with ``reason``; if even the store cannot be written (a full disk),
        the service still knows and says so until it restarts."""
        log.warning("federation %s failed: %s", self.fid[:8], reason)
        try:
            self.set_status("failed", reason)
        except sqlite3.Error as exc:
            log.error("federation %s: could not record the failure: %s", self.fid[:8], exc)
            self.status = "failed"

    # ---- training ----------------------------------------------------------------------------
    def start(self) -> None:
        """Start the training thread (the caller checked that it may start, under ``lock``)."""
        self.set_status("training")
        self.done.clear()
        self.stop_event.clear()
        self.thread = threading.Thread(
            target=self._train, daemon=True, name=f"federation-{self.fid[:8]}"
        )
        self.thread.start()

    @property
    def training(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def stop(self) -> None:
        """Ask the training thread to end: a step waiting for replies ends now."""
        self.stop_event.set()
        self.pool.interrupt()

    def when_done(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (from the training thread) once training ends."""
        self.done.when_set(callback)

    def _store_completed(self, federation: Federation, step: int) -> None:
        """Store again the round whose federated evaluation came with step ``step``'s
        training tasks (``evaluation.piggyback``): its record is complete only now."""
        if len(federation.history) > 1:
            previous = federation.history[-2]
            if previous.get("federated_with_round") == step:
                self.store.record_round(self.fid, previous)

    def _finish(self, federation: Federation, reason: str | None = None) -> None:
        """Evaluate the last model if its evaluation waits for a next round that will not
        come (piggybacking), then mark the federation completed."""
        last = federation.evaluate_pending()
        if last is not None:
            self.store.record_round(self.fid, last)
        self.set_status("completed", reason)

    def _train(self) -> None:
        spec = self.spec
        try:
            if self.prepared_later:
                hosted = self.pool.hosted()
                get_model_type(spec.model.model_type).prepare(
                    [p.adapter for p in hosted], [p.data.train for p in hosted]
                )
                self.initial = hosted[0].adapter.get_weights()
                store_file(self.folder, "initial.safetensors", to_bytes(self.initial))
            federation = Federation(
                self.pool,
                self.initial,
                fusion=spec.fusion,
                config=spec.training,
                sampling=spec.sampling,
                aggregation=spec.aggregation,
                seed=spec.seed,
                federated_eval=spec.evaluation.federated,
                checkpoint_dir=self.folder / "checkpoint",
                privacy=spec.privacy,
                secure=spec.secure,
                population=spec.num_parties,
                piggyback_eval=spec.evaluation.piggyback,
            )
            self.federation = federation
            # the checkpoint is the truth: rounds recorded after it (its newest file was
            # damaged, so it fell back one round) are trained again
            self.store.rewind(self.fid, federation.round)
            for record in federation.history:  # rounds completed before a restart
                self.store.record_round(self.fid, record)

            def on_round(record: dict[str, Any]) -> None:
                self.store.record_round(self.fid, record)
                log.info(describe_round(self.fid, record))
                if self.stop_event.is_set():
                    raise _Stopped

            spent = None
            try:
                while federation.round < spec.rounds and not self.stop_event.is_set():
                    # a round starts once a quorum of parties is live (after a restart,
                    # remote parties come back as they poll again)
                    if self.pool.wait_for_parties(spec.aggregation.quorum, timeout=1.0):
                        record = federation.run_round()
                        self._store_completed(federation, record["round"])
                        on_round(record)
            except PrivacyBudgetExceeded as exc:  # the budget is spent: training is complete
                spent = str(exc)
            if not self.stop_event.is_set():
                self._finish(federation, spent)
        except _Stopped:
            pass
        except Exception as exc:  # a failed federation is recorded, never crashes the service
            self.fail(f"{type(exc).__name__}: {exc}")
        finally:
            self.done.set()
