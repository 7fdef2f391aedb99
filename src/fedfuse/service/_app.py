"""The FastAPI application: the Model Fusion REST API, the party protocol and the ``/v1`` API.

Tutorial endpoints (unchanged from IBM's Model Fusion API): ``POST /start-aggregator``,
``POST /start-party``, ``POST /train``, ``POST /stop``. Everything else is versioned under
``/v1``. Errors are JSON ``{"detail": "..."}`` with a 4xx status that says what was wrong.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any

from anyio import to_thread
from fastapi import FastAPI, File, Form, Header, Query, Request, UploadFile
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, Field

from fedfuse.runtime import UnexpectedReplyError
from fedfuse.runtime._wire import (
    decode_meta,
    reply_from_wire,
    task_to_wire,
)
from fedfuse.service._manager import Conflict, Manager, NotFound, Unauthorized
from fedfuse.service._spec import FederationSpec, SpecError
from fedfuse.weights import Weights, to_bytes

__all__ = ["ServiceSettings", "create_app"]

META_HEADER = "X-Fedfuse-Meta"
_CHUNK = 64 * 1024


@dataclass(frozen=True)
class ServiceSettings:
    """Operator settings of one service."""

    data_dir: str = "fedfuse-data"
    max_upload_bytes: int = 256 * 1024 * 1024
    allowed_import_paths: tuple[str, ...] = ()
    liveness: float = 30.0
    max_poll_wait: float = 30.0
    api_key: str | None = None


class RequestTooLarge(ValueError):
    pass


class TrainRequest(BaseModel):
    aggregator_id: str = Field(max_length=64)
    wait: bool = True


class StopRequest(BaseModel):
    aggregator_id: str = Field(max_length=64)


class JoinRequest(BaseModel):
    token: str = Field(min_length=1, max_length=256)
    name: str | None = Field(default=None, max_length=128, pattern=r"^[A-Za-z0-9_.-]+$")


_ERRORS = (
    (NotFound, 404),
    (Unauthorized, 401),
    (Conflict, 409),
    (UnexpectedReplyError, 409),
    (RequestTooLarge, 413),
    (ValueError, 400),
)


def _bearer(authorization: str | None) -> str:
    if not authorization or not authorization.startswith("Bearer "):
        raise Unauthorized("missing 'Authorization: Bearer <token>' header")
    return authorization[len("Bearer ") :].strip()


async def _read_upload(upload: UploadFile | None, name: str, limit: int) -> bytes | None:
    if upload is None:
        return None
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise RequestTooLarge(f"file {name!r} exceeds the limit of {limit} bytes")
    return data


def _json_object(text: str | None, name: str) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SpecError(f"{name} must be a JSON object: {exc}") from None
    if not isinstance(value, dict):
        raise SpecError(f"{name} must be a JSON object, got {type(value).__name__}")
    return value


def _json_weights(weights: Weights) -> dict[str, Any]:
    return {name: arr.tolist() for name, arr in weights.items()}


def create_app(settings: ServiceSettings | None = None, manager: Manager | None = None) -> FastAPI:
    """Build the service app over ``settings.data_dir`` (recovering federations found there)."""
    settings = settings or ServiceSettings()
    manager = manager or Manager(
        settings.data_dir,
        allowed_import_paths=settings.allowed_import_paths,
        liveness=settings.liveness,
    )
    intake = asyncio.Semaphore(1)  # one reply read at a time: memory O(model), not O(parties)
    body_cache: dict[str, tuple[Weights, bytes]] = {}  # federation id -> (weights, bytes)
    body_lock = threading.Lock()
    wakers: dict[tuple[str, str], asyncio.Event] = {}

    def _wake(fid: str, party_ids: list[str]) -> None:
        for pid in party_ids:
            event = wakers.get((fid, pid))
            if event is not None:
                event.set()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await to_thread.run_sync(manager.recover)
        yield
        manager.shutdown()

    app = FastAPI(
        title="fedfuse aggregator service",
        version="1",
        description=__doc__,
        lifespan=lifespan,
    )
    app.state.manager = manager

    for exc_type, status in _ERRORS:

        def handler(request: Request, exc: Exception, status: int = status) -> JSONResponse:
            return JSONResponse({"detail": str(exc)}, status_code=status)

        app.add_exception_handler(exc_type, handler)

    @app.middleware("http")
    async def limit_size(request: Request, call_next):
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > settings.max_upload_bytes):
            return JSONResponse(
                {"detail": f"request body exceeds the limit of {settings.max_upload_bytes} bytes"},
                status_code=413,
            )
        return await call_next(request)

    def require_api_key(authorization: str | None) -> None:
        if settings.api_key is not None and _bearer(authorization) != settings.api_key:
            raise Unauthorized("invalid API key")

    # ---- the Model Fusion tutorial's endpoints ------------------------------------------------
    @app.post("/start-aggregator", tags=["model fusion"])
    async def start_aggregator(
        fusion_algorithm: Annotated[str, Form(max_length=64)],
        model_type: Annotated[str, Form(max_length=64)] = "pytorch",
        num_parties: Annotated[int, Form()] = 2,
        rounds: Annotated[int, Form()] = 5,
        epochs: Annotated[int, Form()] = 1,
        learning_rate: Annotated[float, Form()] = 0.01,
        optimizer: Annotated[str, Form(max_length=64)] = "sgd",
        batch_size: Annotated[int, Form()] = 32,
        fraction: Annotated[float | None, Form()] = None,
        count: Annotated[int | None, Form()] = None,
        quorum: Annotated[int, Form()] = 1,
        round_timeout: Annotated[float, Form()] = 600.0,
        seed: Annotated[int, Form()] = 0,
        model: Annotated[str | None, Form(max_length=64)] = None,
        input_shape: Annotated[str | None, Form(max_length=64, pattern=r"^\d+(,\d+)*$")] = None,
        num_classes: Annotated[int | None, Form()] = None,
        auto_start: Annotated[bool, Form()] = False,
        max_update_norm: Annotated[float | None, Form()] = None,
        max_update_ratio: Annotated[float | None, Form()] = FederationSpec.max_update_ratio,
        join_token: Annotated[str | None, Form(max_length=256)] = None,
        fusion_params: Annotated[str | None, Form(max_length=4096)] = None,
        train_options: Annotated[str | None, Form(max_length=4096)] = None,
        model_file: Annotated[UploadFile | None, File()] = None,
        initial_weights: Annotated[UploadFile | None, File()] = None,
        authorization: Annotated[str | None, Header()] = None,
    ) -> dict[str, Any]:
        """Create a federation (an aggregator). Upload ``model_file`` written by
        ``torch.save(model)``, or name a zoo ``model``, or upload ``initial_weights``
        (safetensors). ``fusion_params`` (JSON, e.g. ``{"server_learning_rate": 0.01}`` for
        ``fedadam``) parametrize the fusion; ``train_options`` (JSON, e.g.
        ``{"compression": "int8"}`` or ``{"proximal_mu": 0.1}``) the parties' local training.
        Returns ``aggregator_id`` and the ``join_token`` remote parties use."""
        require_api_key(authorization)
        spec = FederationSpec(
            fusion_algorithm=fusion_algorithm, model_type=model_type, num_parties=num_parties,
            rounds=rounds, epochs=epochs, learning_rate=learning_rate, optimizer=optimizer,
            batch_size=batch_size, fraction=fraction, count=count, quorum=quorum,
            round_timeout=round_timeout, seed=seed, model=model,
            input_shape=tuple(int(d) for d in input_shape.split(",")) if input_shape else None,
            num_classes=num_classes, auto_start=auto_start,
            max_update_norm=max_update_norm, max_update_ratio=max_update_ratio,
            fusion_params=_json_object(fusion_params, "fusion_params"),
            train_options=_json_object(train_options, "train_options"),
        )  # fmt: skip
        limit = settings.max_upload_bytes
        model_bytes = await _read_upload(model_file, "model_file", limit)
        weights_bytes = await _read_upload(initial_weights, "initial_weights", limit)
        fid, token = await to_thread.run_sync(
            lambda: manager.create(
                spec, model_bytes=model_bytes, initial_weights=weights_bytes, join_token=join_token
            )
        )
        return {"aggregator_id": fid, "join_token": token, "status": "registering"}

    @app.post("/start-party", tags=["model fusion"])
    async def start_party(
        aggregator_id: Annotated[str, Form(max_length=64)],
        data_handler_class_name: Annotated[str, Form(max_length=128)],
        data: Annotated[UploadFile, File()],
        authorization: Annotated[str | None, Header()] = None,
    ) -> dict[str, Any]:
        """Register a party that trains on the service host on the uploaded ``.npz``
        (``x_train, y_train, x_test, y_test``). Answers how many parties are still to register."""
        require_api_key(authorization)
        npz = await _read_upload(data, "data", settings.max_upload_bytes)
        result = await to_thread.run_sync(
            manager.add_hosted_party, aggregator_id, data_handler_class_name, npz
        )
        remaining = result["parties_remaining"]
        return {
            "aggregator_id": aggregator_id,
            **result,
            "message": f"party registered; {remaining} more to register"
            if remaining
            else "all parties registered; ready to train",
        }

    @app.post("/train", tags=["model fusion"])
    async def train(body: TrainRequest, authorization: Annotated[str | None, Header()] = None):
        """Start training. With ``wait`` (the default, as in the tutorial) answer when it ends,
        with ``global_model`` (name -> nested lists, loadable with ``load_state_dict``) and the
        metrics of every round; with ``"wait": false`` answer 202 at once and let the caller
        poll ``GET /v1/federations/{id}``."""
        require_api_key(authorization)
        fid = body.aggregator_id
        await to_thread.run_sync(manager.start, fid)
        if not body.wait:
            return JSONResponse({"aggregator_id": fid, "status": "training"}, status_code=202)
        await to_thread.run_sync(manager.wait, fid)
        status = manager.status(fid)
        weights = manager.global_weights(fid)
        return {
            "aggregator_id": fid,
            "status": status["status"],
            "error": status["error"],
            "rounds_done": status["rounds_done"],
            "global_model": await to_thread.run_sync(_json_weights, weights),
            "metrics": manager.store.rounds(fid),
        }

    @app.post("/stop", tags=["model fusion"])
    async def stop(body: StopRequest, authorization: Annotated[str | None, Header()] = None):
        """End a federation. Stopping twice is a 409."""
        require_api_key(authorization)
        await to_thread.run_sync(manager.stop, body.aggregator_id)
        return {
            "aggregator_id": body.aggregator_id,
            "status": manager.status(body.aggregator_id)["status"],
        }

    # ---- /v1: status, history, model ----------------------------------------------------------
    @app.get("/v1/federations", tags=["federations"])
    def list_federations() -> list[dict[str, Any]]:
        return manager.list()

    @app.get("/v1/federations/{fid}", tags=["federations"])
    def federation_status(fid: str) -> dict[str, Any]:
        return manager.status(fid)

    @app.get("/v1/federations/{fid}/history", tags=["federations"])
    def federation_history(fid: str) -> dict[str, Any]:
        manager.status(fid)
        return {"rounds": manager.store.rounds(fid), "rejected": manager.store.rejected(fid)}

    @app.get("/v1/federations/{fid}/model", tags=["federations"])
    def download_model(fid: str) -> Response:
        """The current global model as a safetensors file."""
        weights = manager.global_weights(fid)
        rounds = manager.status(fid)["rounds_done"]
        return Response(
            to_bytes(weights, {"rounds_done": str(rounds)}),
            media_type="application/octet-stream",
            headers={"Content-Disposition": f'attachment; filename="{fid}.safetensors"'},
        )

    # ---- /v1: the party protocol --------------------------------------------------------------
    @app.post("/v1/join", tags=["party protocol"])
    def join(body: JoinRequest) -> dict[str, Any]:
        """Join a federation with its join token; answers this party's own token and id."""
        return manager.join(body.token, body.name)

    @app.get("/v1/federations/{fid}/model-file", tags=["party protocol"])
    def model_file(fid: str, authorization: Annotated[str | None, Header()] = None) -> Response:
        """The uploaded model file, for parties that build their model from it."""
        manager.authenticate(fid, _bearer(authorization))
        data = manager.model_file(fid)
        if data is None:
            raise NotFound("this federation has no model file")
        return Response(data, media_type="application/octet-stream")

    def _body(fid: str, weights: Weights) -> bytes:
        """The task body for ``weights``, serialized once per federation and model version."""
        with body_lock:
            cached = body_cache.get(fid)
            if cached is None or cached[0] is not weights:
                cached = (weights, to_bytes(weights))
                body_cache[fid] = cached
            return cached[1]

    async def _stream(data: bytes) -> AsyncIterator[memoryview]:
        view = memoryview(data)
        for start in range(0, len(view), _CHUNK):
            yield view[start : start + _CHUNK]  # no copy: the transport applies back-pressure

    @app.get("/v1/federations/{fid}/tasks/next", tags=["party protocol"])
    async def next_task(
        fid: str,
        wait: Annotated[float, Query(ge=0)] = 20.0,
        authorization: Annotated[str | None, Header()] = None,
    ) -> Response:
        """Long-poll for this party's next task: 200 with the task (metadata in the
        ``X-Fedfuse-Meta`` header, weights as a safetensors body), 204 if none came within
        ``wait`` seconds, 410 once the federation has ended."""
        party_id = manager.authenticate(fid, _bearer(authorization))
        pool = manager._run(fid).pool
        loop = asyncio.get_running_loop()
        if pool.on_post is None:
            pool.on_post = lambda ids, fid=fid: loop.call_soon_threadsafe(_wake, fid, ids)
        event = wakers.setdefault((fid, party_id), asyncio.Event())
        deadline = loop.time() + min(wait, settings.max_poll_wait)
        while True:
            status = manager.status_of(fid)
            if status in ("completed", "stopped", "failed"):
                return JSONResponse({"detail": f"federation is {status}"}, status_code=410)
            event.clear()
            pending = pool.next_task(party_id, 0)
            if pending is not None:
                break
            remaining = deadline - loop.time()
            if remaining <= 0:
                return Response(status_code=204)
            # woken when a task is posted; every second at most, to notice the federation end
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), timeout=min(remaining, 1.0))
        meta, weights = task_to_wire(pending)
        body = await to_thread.run_sync(_body, fid, weights)
        return StreamingResponse(
            _stream(body),
            media_type="application/octet-stream",
            headers={META_HEADER: json.dumps(meta), "Content-Length": str(len(body))},
        )

    @app.post("/v1/federations/{fid}/tasks/{task_id}/reply", tags=["party protocol"])
    async def post_reply(
        fid: str,
        task_id: int,
        request: Request,
        authorization: Annotated[str | None, Header()] = None,
        x_fedfuse_meta: Annotated[str | None, Header()] = None,
    ) -> dict[str, Any]:
        """Post the reply to a task: ``X-Fedfuse-Meta`` JSON (``kind`` update | evaluation |
        error, ``num_examples``, ``metrics``) and, for an update, a safetensors body."""
        party_id = manager.authenticate(fid, _bearer(authorization))
        meta = decode_meta(x_fedfuse_meta)
        pool = manager._run(fid).pool
        async with intake:
            length = request.headers.get("content-length", "")
            body = bytearray(int(length)) if length.isdigit() else bytearray()
            size = 0
            async for chunk in request.stream():
                if size + len(chunk) > settings.max_upload_bytes:
                    raise RequestTooLarge("reply body exceeds the size limit")
                if size + len(chunk) <= len(body):
                    body[size : size + len(chunk)] = chunk
                else:
                    body[size:] = chunk
                size += len(chunk)
            del body[size:]

            def hand_over() -> None:
                pool.submit(party_id, task_id, reply_from_wire(meta, body, party_id))

            await to_thread.run_sync(hand_over)
        return {"accepted": True}

    @app.get("/healthz", tags=["service"])
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
