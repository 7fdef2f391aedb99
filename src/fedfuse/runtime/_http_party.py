"""The party side of the HTTP protocol: join, long-poll for tasks, post replies.

Parties always dial out (they may sit behind NAT); the service never connects to a party.
The protocol logic lives in the sans-I/O ``Party`` and in ``_wire``; this module only moves
bytes with httpx, and retries while the service is unreachable (e.g. restarting).

The aggregator is not trusted with the party's memory: every answer is streamed and read with
a byte limit as it arrives (``limits.max_bytes`` for a task body or the model file, a small
limit for the rest), and a task body's safetensors header is checked against
``limits.max_params`` before its arrays are built.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx

from fedfuse.party import (
    ClientParty,
    Evaluated,
    EvaluateTask,
    Evaluation,
    NumPyClient,
    Reply,
    SecureTask,
    Task,
    TaskError,
    TrainTask,
)
from fedfuse.runtime._wire import decode_meta, reply_to_wire, task_from_wire
from fedfuse.weights import SizeLimits, Weights, to_bytes

__all__ = [
    "PartyClient",
    "PartyRunSummary",
    "ProtocolError",
    "TaskHandler",
    "create_federation",
    "run_party",
]

log = logging.getLogger("fedfuse.party")
META_HEADER = "X-Fedfuse-Meta"
_LIMITS = SizeLimits()  # the default caps (an immutable value)
_CONTROL_BYTES = 1 << 20  # a join answer, an error detail, an acknowledgement
_REPLY_WAIT = 300.0  # seconds a posted reply may wait for the service's answer


_TASK_NAMES = {TrainTask: "train", EvaluateTask: "evaluate", SecureTask: "secure aggregation"}


class TaskHandler(Protocol):
    def handle(self, task: Task) -> Reply: ...


class ProtocolError(RuntimeError):
    """The service refused a request (the message carries its ``detail``)."""


@dataclass
class PartyRunSummary:
    """What one party's ``serve`` did: ``tasks`` answered over ``rounds``, ``failed`` of them
    failed (the party's ``TaskError`` or a refused reply), with the first reason of each
    round in ``failures`` (round -> reason); ``final_status`` is the service's last word."""

    federation_id: str
    party_id: str
    tasks: int = 0
    final_status: str = ""
    rounds: list[int] = field(default_factory=list)
    failed: int = 0
    failures: dict[int, str] = field(default_factory=dict)

    @property
    def all_failed(self) -> bool:
        """True when the party answered tasks and every one of them failed."""
        return self.tasks > 0 and self.failed == self.tasks

    def _fail(self, round_: int, reason: str) -> None:
        self.failed += 1
        self.failures.setdefault(round_, reason)


def _read_capped(response: httpx.Response, limit: int, what: str) -> bytes:
    """The body of a streamed ``response``, refused as soon as it passes ``limit`` bytes
    (decoded: a compressed body counts what it inflates to)."""
    limits = SizeLimits(max_bytes=limit)
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and "content-encoding" not in response.headers:
        limits.check_bytes(int(declared), what)
    chunks, size = [], 0
    for chunk in response.iter_bytes():
        size += len(chunk)
        limits.check_bytes(size, what)
        chunks.append(chunk)
    return b"".join(chunks)


def _read_secret(path: Path | None) -> str | None:
    if path is None or not path.exists():
        return None
    return path.read_text().strip() or None


def _write_secret(path: Path, secret: str) -> None:
    """Owner-only from the start: the file is created with mode 0600, never widened."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret)


def _detail(response: httpx.Response) -> str:
    try:
        return str(response.json().get("detail", response.text))[:2000]
    except (ValueError, RecursionError, AttributeError):
        return response.text[:2000]


def _join_answer(response: httpx.Response) -> dict[str, Any]:
    """The join answer, refused unless it is an object naming the federation and the party."""
    try:
        info = response.json()
    except (ValueError, RecursionError):
        info = None
    names = ("federation_id", "party_id", "party_token")
    if not isinstance(info, dict) or not all(isinstance(info.get(k), str) for k in names):
        raise ProtocolError(f"the join answer is not an object with {', '.join(names)}")
    return info


class PartyClient:
    """Connects one party to a fedfuse service.

    Args:
        server: base URL, e.g. ``http://127.0.0.1:8080`` or ``https://...``.
        token: the federation's join token.
        name: a stable name; joining again with the same name rejoins as the same party.
        verify: TLS verification (``True``, or a CA bundle path for a self-signed service).
        poll_wait: seconds each long poll may wait at the service.
        reconnect_timeout: how long to keep retrying while the service is unreachable.
        limits: caps on what the aggregator's answers may make this party allocate.
        secret_file: where this party keeps the secret the service gives it at its first join
            (written owner-only); a restarted party that rejoins by ``name`` proves with it that it
            is the same party. Without it, only this process can rejoin by ``name``.
        transport: an httpx transport (e.g. ``httpx.MockTransport`` in tests); the network
            when not given.
    """

    def __init__(
        self,
        server: str,
        token: str,
        *,
        name: str | None = None,
        verify: bool | str = True,
        poll_wait: float = 20.0,
        reconnect_timeout: float = 120.0,
        limits: SizeLimits = _LIMITS,
        secret_file: str | os.PathLike | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.server = server.rstrip("/")
        self.token = token
        self.name = name
        self.poll_wait = poll_wait
        self.reconnect_timeout = reconnect_timeout
        self.limits = limits
        self.secret_file = Path(secret_file) if secret_file is not None else None
        self.party_secret = _read_secret(self.secret_file)
        self.http = httpx.Client(
            base_url=self.server, verify=verify, timeout=poll_wait + 30, transport=transport
        )
        self.info: dict[str, Any] | None = None

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> PartyClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(
        self, method: str, url: str, *, max_body: int = _CONTROL_BYTES, **kwargs: Any
    ) -> httpx.Response:
        """The answer to one request, its body read at most ``max_body`` bytes far."""
        deadline = time.monotonic() + self.reconnect_timeout
        delay = 0.2
        while True:
            try:
                with self.http.stream(method, url, **kwargs) as streamed:
                    body = _read_capped(streamed, max_body, f"answer to {method} {url}")
                kept = [
                    (k, v)
                    for k, v in streamed.headers.multi_items()
                    if k not in ("content-encoding", "content-length", "transfer-encoding")
                ]
                return httpx.Response(
                    streamed.status_code, headers=kept, content=body, request=streamed.request
                )
            except httpx.TransportError as exc:
                if time.monotonic() >= deadline:
                    raise ProtocolError(f"service unreachable at {self.server}: {exc}") from exc
                log.warning("service unreachable (%s); retrying in %.1fs", exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, 2.0)

    def join(self) -> dict[str, Any]:
        """Join with the token; returns the federation id, this party's id and token, and how
        to build the model (``info["model"]``). A rejoin by ``name`` sends the party secret
        of the first join; the secret the service answers is kept (in ``secret_file`` if set)."""
        if self.party_secret is None and self.name is not None:
            # a secret of its own for the first join: if the answer is lost on the way, the
            # retry proves the name with it instead of being refused as an impostor
            self.party_secret = secrets.token_urlsafe(24)
            if self.secret_file is not None:
                _write_secret(self.secret_file, self.party_secret)
        body = {"token": self.token, "name": self.name}
        if self.party_secret is not None:
            body["party_secret"] = self.party_secret
        response = self._request("POST", "/v1/join", json=body)
        if response.status_code != 200:
            raise ProtocolError(f"join refused ({response.status_code}): {_detail(response)}")
        self.info = _join_answer(response)
        secret = self.info.get("party_secret")
        if isinstance(secret, str) and secret != self.party_secret:
            self.party_secret = secret
            if self.secret_file is not None:
                _write_secret(self.secret_file, secret)
        return self.info

    @property
    def _auth(self) -> dict[str, str]:
        assert self.info is not None, "join() first"
        return {"Authorization": f"Bearer {self.info['party_token']}"}

    def model_file(self) -> bytes:
        """Download the federation's model file (for ``model.source == "model_file"``)."""
        fid = self.info["federation_id"]
        response = self._request(
            "GET",
            f"/v1/federations/{fid}/model-file",
            headers=self._auth,
            max_body=self.limits.max_bytes,
        )
        if response.status_code != 200:
            raise ProtocolError(f"model file refused ({response.status_code}): {_detail(response)}")
        return response.content

    def serve(self, party: TaskHandler, max_tasks: int | None = None) -> PartyRunSummary:
        """Answer tasks until the federation ends (or ``max_tasks`` have been answered)."""
        if self.info is None:
            self.join()
        fid, party_id = self.info["federation_id"], self.info["party_id"]
        summary = PartyRunSummary(fid, party_id)
        while max_tasks is None or summary.tasks < max_tasks:
            response = self._request(
                "GET", f"/v1/federations/{fid}/tasks/next",
                params={"wait": self.poll_wait}, headers=self._auth,
                max_body=self.limits.max_bytes,
            )  # fmt: skip
            if response.status_code == 204:
                continue
            if response.status_code == 410:
                summary.final_status = _detail(response)
                break
            if response.status_code != 200:
                raise ProtocolError(
                    f"task poll refused ({response.status_code}): {_detail(response)}"
                )
            self.limits.check_safetensors(response.content, "task body from the aggregator")
            pending = task_from_wire(
                decode_meta(response.headers.get(META_HEADER)), response.content
            )
            reply = party.handle(pending.task)
            evaluation = reply.evaluation if isinstance(reply, Evaluated) else None
            if isinstance(evaluation, Evaluation):  # piggybacked: the model it received
                shown = ", ".join(f"{k} {v:.4f}" for k, v in evaluation.metrics.items())
                log.info(
                    "round %d: received model on local test data: %s", pending.task.round, shown
                )
            trained = reply.reply if isinstance(reply, Evaluated) else reply
            if isinstance(trained, TaskError):
                log.warning(
                    "round %d: %s task failed: %s",
                    pending.task.round,
                    _TASK_NAMES.get(type(pending.task), "a"),
                    trained.message,
                )
                summary._fail(pending.task.round, trained.message)
            elif isinstance(pending.task, TrainTask) and hasattr(trained, "metrics"):
                shown = ", ".join(f"{k} {v:.4f}" for k, v in trained.metrics.items())
                log.info("round %d: trained locally (%s)", pending.task.round, shown)
            elif isinstance(reply, Evaluation):
                shown = ", ".join(f"{k} {v:.4f}" for k, v in reply.metrics.items())
                log.info("round %d: global model on local test data: %s", pending.task.round, shown)
            meta, weights = reply_to_wire(reply)
            response = self._request(
                "POST",
                f"/v1/federations/{fid}/tasks/{pending.task_id}/reply",
                headers={**self._auth, META_HEADER: json.dumps(meta)},
                content=to_bytes(weights) if weights is not None else b"",
                # the service answers once the round has taken the reply: with many parties
                # it queues there, and a retry after a read timeout would be a second reply
                timeout=httpx.Timeout(self.poll_wait + 30, read=_REPLY_WAIT),
            )
            if response.status_code != 200:
                refused = f"reply refused ({response.status_code}): {_detail(response)}"
                log.warning("round %d: task %s: %s", pending.task.round, pending.task_id, refused)
                if not isinstance(trained, TaskError):
                    summary._fail(pending.task.round, refused)
            summary.tasks += 1
            if pending.task.round not in summary.rounds:
                summary.rounds.append(pending.task.round)
        return summary


def run_party(
    server: str,
    token: str,
    party: TaskHandler | NumPyClient,
    *,
    name: str | None = None,
    verify: bool | str = True,
    **client_options: Any,
) -> PartyRunSummary:
    """Join the federation behind ``token`` and answer its tasks until it ends.

    ``party`` is a ``Party`` (or anything with ``handle(task)``), or a Flower-style client
    with ``fit(parameters, config)`` and ``evaluate(parameters, config)`` (and optionally
    ``get_parameters(config)``). A Flower-style client gets its arrays in the model's own
    order, which the service names at join; a client whose ``get_parameters`` shapes do not
    match it is refused (``ValueError``) before any task. The summary counts failed tasks.
    """
    handler = party if hasattr(party, "handle") else ClientParty(party)
    with PartyClient(server, token, name=name, verify=verify, **client_options) as client:
        info = client.join()
        if isinstance(handler, ClientParty):
            handler.party_id = info["party_id"]
            handler.check(_model_parameters(info))
        return client.serve(handler)


def _model_parameters(info: dict[str, Any]) -> Any:
    """The join answer's ``model.parameters`` (``[[name, shape], ...]`` in the model's own
    order), ``None`` when the service sent none."""
    model = info.get("model")
    return model.get("parameters") if isinstance(model, dict) else None


def create_federation(
    server: str,
    spec: Any = None,
    *,
    initial_weights: Weights | None = None,
    model_file: bytes | None = None,
    join_token: str | None = None,
    verify: bool | str = True,
    api_key: str | None = None,
    **flat: Any,
) -> dict[str, Any]:
    """Create a federation on a running service.

    ``spec`` is a ``fedfuse.FederationSpec`` (or its nested dict); flat settings
    (``num_parties=3, rounds=5, learning_rate=0.05, fusion_algorithm="fedadam"``, any name of
    ``fedfuse.recipes.flat_names``) are applied on top of it. The model comes from the spec
    (``model={"name": "mlp", "input_shape": [64], "num_classes": 10}``), from ``model_file``
    (``torch.save(model)`` bytes) or from ``initial_weights`` (parties bring their own model).
    ``api_key`` is the service's key, if it was started with one. Returns ``aggregator_id`` and
    ``join_token``.
    """
    from fedfuse.recipes import FederationSpec  # the spec is a recipe-level shape

    if spec is None or isinstance(spec, dict):
        spec = FederationSpec.from_dict(spec or {})
    document = FederationSpec.from_flat(flat, base=spec).to_dict()
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
    url = server.rstrip("/")
    if model_file is None and initial_weights is None:
        body = document | ({"join_token": join_token} if join_token else {})
        response = httpx.post(
            f"{url}/v1/federations", json=body, headers=headers, verify=verify, timeout=120
        )
    else:
        files = {}
        if initial_weights is not None:
            files["initial_weights"] = ("weights.safetensors", to_bytes(initial_weights))
        if model_file is not None:
            files["model_file"] = ("model.pt", model_file)
        form = {"spec": json.dumps(document)} | ({"join_token": join_token} if join_token else {})
        response = httpx.post(
            f"{url}/start-aggregator",
            data=form,
            files=files,
            headers=headers,
            verify=verify,
            timeout=120,
        )
    if response.status_code != 200:
        raise ProtocolError(f"service refused ({response.status_code}): {_detail(response)}")
    return response.json()
