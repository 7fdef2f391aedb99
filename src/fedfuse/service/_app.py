"""The FastAPI application: the Model Fusion REST API, the party protocol and the ``/v1`` API.

Tutorial endpoints (unchanged from IBM's Model Fusion API): ``POST /start-aggregator``,
``POST /start-party``, ``POST /train``, ``POST /stop``. Everything else is versioned under
``/v1``. Errors are JSON ``{"detail": "..."}`` with a 4xx status that says what was wrong.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import math
import tempfile
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import IO, Annotated, Any

from anyio import to_thread
from fastapi import FastAPI, File, Form, Header, Query, Request, UploadFile
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, Field

from fedfuse.party import Malformed
from fedfuse.recipes import (
    FederationSpec,
    field_types,
    flat_names,
    flat_table,
    parse_json_object,
)
from fedfuse.runtime import UnexpectedReplyError
from fedfuse.runtime._wire import (
    decode_meta,
    reply_from_wire,
    task_to_wire,
)
from fedfuse.service._boundary import (
    Boundary,
    FailureLimiter,
    GuardedRoute,
    Refused,
    before_body,
    same_secret,
)
from fedfuse.service._manager import Conflict, Manager, NotFound, Unauthorized
from fedfuse.service._spec import SpecError, spec_from_form, spec_from_json
from fedfuse.weights import SizeLimits, Weights, num_bytes, to_bytes

__all__ = ["ServiceSettings", "create_app"]

META_HEADER = "X-Fedfuse-Meta"
_CHUNK = 64 * 1024
_SPOOL_IN_MEMORY = 1024 * 1024  # a reply body past this waits on disk, not in memory
log = logging.getLogger("fedfuse.service")


@dataclass(frozen=True)
class ServiceSettings:
    """Operator settings of one service.

    Args:
        max_upload_bytes: the most bytes one request body may carry (counted as they arrive).
        read_timeout: seconds a request body may go without a byte before the request ends (408).
        api_key: required to create and control federations, and to read them (a party token
            of a federation reads that federation too). ``None``: no key (loopback use).
        allowed_hosts: names besides loopback ones and the served address that ``Host`` and
            ``Origin`` may carry (``"*"``: any).
        max_json_model_bytes: ``/train`` puts ``global_model`` in its JSON answer only up to
            this many bytes of weights; larger models are downloaded as safetensors.
        limits: caps on what one uploaded model or data file may make the service allocate.
        max_auth_failures, auth_window: failed joins or authentications one client address may
            make per window (seconds) before it is refused with 429.
    """

    data_dir: str = "fedfuse-data"
    max_upload_bytes: int = 256 * 1024 * 1024
    allowed_import_paths: tuple[str, ...] = ()
    liveness: float = 30.0
    max_poll_wait: float = 30.0
    api_key: str | None = None
    read_timeout: float = 30.0
    allowed_hosts: tuple[str, ...] = ()
    max_json_model_bytes: int = 16 * 1024 * 1024
    limits: SizeLimits = field(default_factory=SizeLimits)
    max_auth_failures: int = 20
    auth_window: float = 60.0


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
    party_secret: str | None = Field(default=None, max_length=256)


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


_UPLOADS = ("model_file", "initial_weights")
_MAX_FIELD = 64 * 1024


async def _form(request: Request) -> tuple[dict[str, str], dict[str, Any]]:
    """A multipart (or urlencoded) form's text fields and its uploads, refused field by field:
    at most 2 files (``model_file``, ``initial_weights``) and short text values."""
    try:
        form = await request.form(max_files=len(_UPLOADS), max_fields=256)
    except Exception as exc:  # starlette raises its own parser errors for malformed bodies
        if isinstance(exc, MemoryError | OSError):
            raise
        raise SpecError(f"the form cannot be read: {exc}") from None
    fields: dict[str, str] = {}
    uploads: dict[str, Any] = {}
    for key, value in form.multi_items():
        if isinstance(value, str):
            if len(value) > _MAX_FIELD:
                raise SpecError(f"form field {key!r} is longer than {_MAX_FIELD} characters")
            fields[key] = value
        elif key in _UPLOADS:
            uploads[key] = value
        else:
            raise SpecError(f"unexpected file {key!r}; upload only {', '.join(_UPLOADS)}")
    return fields, uploads


def _form_schema() -> dict[str, Any]:
    """The form's OpenAPI schema, derived from the spec's flat names (not listed by hand)."""
    kinds = {"int": "integer", "float": "number", "bool": "boolean"}
    properties: dict[str, Any] = {name: {"type": "string", "format": "binary"} for name in _UPLOADS}
    table, types = flat_table(), field_types()
    for name in flat_names():
        kind = types.get(table.get(name, ""), "str").split(" ")[0].split("[")[0]
        properties[name] = {"type": kinds.get(kind, "string")}
    properties["join_token"] = {"type": "string", "minLength": 16, "maxLength": 256}
    schema = {"type": "object", "properties": properties, "required": ["fusion_algorithm"]}
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {"schema": schema},
                "application/x-www-form-urlencoded": {"schema": schema},
            },
        }
    }


_FORM_SCHEMA = _form_schema()


def _party_problems(rounds: list[dict[str, Any]], key: str) -> dict[str, dict[str, Any]]:
    """Per party: in how many rounds it ``failed`` (or was ``rejected``), and the last reason."""
    problems: dict[str, dict[str, Any]] = {}
    for record in rounds:
        for pid, reason in (record.get(key) or {}).items():
            entry = problems.setdefault(pid, {"rounds": 0, "reason": ""})
            entry["rounds"] += 1
            entry["reason"] = reason
    return problems


def _json_weights(weights: Weights) -> dict[str, Any]:
    return {name: arr.tolist() for name, arr in weights.items()}


_ID = {"aggregator_id": "$response.body#/aggregator_id"}
_CREATED = {  # OpenAPI links: what a client (or a stateful fuzzer) does with a new federation
    "StartParty": {"operationId": "start_party_start_party_post", "requestBody": _ID},
    "Train": {"operationId": "train_train_post", "requestBody": _ID},
    "Stop": {"operationId": "stop_stop_post", "requestBody": _ID},
    "Status": {
        "operationId": "federation_status_v1_federations__fid__get",
        "parameters": {"fid": "$response.body#/aggregator_id"},
    },
}


def _reply_from(spool: IO[bytes], meta: dict[str, Any], party_id: str) -> Any:
    """The reply in ``spool``: its arrays are views into one buffer of the body's size."""
    body = bytearray(spool.tell())
    spool.seek(0)
    spool.readinto(body)
    return reply_from_wire(meta, body, party_id)


def _call_soon(loop: asyncio.AbstractEventLoop, callback: Callable[[], Any]) -> None:
    """``callback`` on ``loop`` from another thread; nothing once the loop has closed."""
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(callback)


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _server_error(exc: BaseException) -> tuple[int, str]:
    """The status and message for an exception no handler expected: never a bare 500."""
    if isinstance(exc, MemoryError):
        return 503, "the service has not enough memory for this request now; retry later"
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return 507, "the service's disk is full; nothing of this request was kept"
    if isinstance(exc, OSError):
        return 503, f"the service could not read or write its files ({exc.strerror or exc})"
    if isinstance(exc, RecursionError):
        return 400, "the request nests too deeply"
    # the message names the kind of failure only: its text may hold paths or internals
    return 400, f"the request could not be processed ({type(exc).__name__}; see the service log)"


def create_app(
    settings: ServiceSettings | None = None,
    manager: Manager | None = None,
    limiter: FailureLimiter | None = None,
) -> FastAPI:
    """Build the service app over ``settings.data_dir`` (recovering federations found there).

    ``limiter`` counts failed authentications per client address (default: from settings)."""
    settings = settings or ServiceSettings()
    manager = manager or Manager(
        settings.data_dir,
        allowed_import_paths=settings.allowed_import_paths,
        liveness=settings.liveness,
        limits=settings.limits,
    )
    limiter = limiter or FailureLimiter(settings.max_auth_failures, settings.auth_window)
    intakes: dict[str, asyncio.Semaphore] = {}  # per federation: memory O(model) per federation
    receiving: set[tuple[str, str]] = set()  # (federation, party) whose reply body is arriving
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
    app.router.route_class = GuardedRoute
    app.state.manager = manager
    app.add_middleware(
        Boundary,
        max_body_bytes=settings.max_upload_bytes,
        read_timeout=settings.read_timeout,
        allowed_hosts=settings.allowed_hosts,
    )

    for exc_type, status in _ERRORS:

        def handler(request: Request, exc: Exception, status: int = status) -> JSONResponse:
            return JSONResponse({"detail": str(exc)}, status_code=status)

        app.add_exception_handler(exc_type, handler)

    def unexpected(request: Request, exc: Exception) -> JSONResponse:
        status, detail = _server_error(exc)
        log.error("%s %s: %s", request.method, request.url.path, detail, exc_info=exc)
        headers = {"Retry-After": "30"} if status == 503 else None
        return JSONResponse({"detail": detail}, status_code=status, headers=headers)

    app.add_exception_handler(Exception, unexpected)

    # ---- who may ask: checked before any body is read (see GuardedRoute) ---------------------
    def counted(request: Request, check: Callable[[], Any]) -> Any:
        """Run ``check``; an address with too many failed checks is refused (429) first."""
        address = _client(request)
        wait = limiter.retry_after(address)
        if wait > 0:
            seconds = math.ceil(wait)
            raise Refused(
                429,
                f"too many failed authentications from {address}; retry in {seconds} s",
                {"Retry-After": str(seconds)},
            )
        try:
            return check()
        except Unauthorized:
            limiter.failed(address)
            raise

    def _is_api_key(token: str) -> bool:
        return settings.api_key is not None and same_secret(token, settings.api_key)

    def control(request: Request) -> None:
        """Creating and controlling federations: the API key, if the service has one."""
        if settings.api_key is None:
            return

        def check() -> None:
            if not _is_api_key(_bearer(request.headers.get("authorization"))):
                raise Unauthorized("invalid API key")

        counted(request, check)

    def reader(request: Request) -> None:
        """Reading a federation: the API key or a party token of that federation."""
        if settings.api_key is None:
            return

        def check() -> None:
            token = _bearer(request.headers.get("authorization"))
            fid = request.path_params.get("fid")
            if _is_api_key(token):
                return
            if fid is None:
                raise Unauthorized("invalid API key")
            try:
                manager.party_of(fid, token)
            except (Unauthorized, NotFound):  # no hint whether the federation exists
                raise Unauthorized("invalid API key or party token") from None

        counted(request, check)

    def party(request: Request) -> None:
        """The party protocol: a party token of the federation in the path."""
        fid = request.path_params["fid"]
        token = _bearer(request.headers.get("authorization"))
        request.state.party_id = counted(request, lambda: manager.authenticate(fid, token))

    def joining(request: Request) -> None:
        """A join is checked once its body is read; an address with failed joins waits."""
        counted(request, lambda: None)

    # ---- the Model Fusion tutorial's endpoints ------------------------------------------------
    async def _create(
        spec: FederationSpec,
        model_file: Any,
        initial_weights: Any,
        join_token: str | None,
    ) -> dict[str, Any]:
        limit = settings.max_upload_bytes
        model_bytes = await _read_upload(model_file, "model_file", limit)
        weights_bytes = await _read_upload(initial_weights, "initial_weights", limit)
        fid, token = await to_thread.run_sync(
            lambda: manager.create(
                spec, model_bytes=model_bytes, initial_weights=weights_bytes, join_token=join_token
            )
        )
        return {"aggregator_id": fid, "join_token": token, "status": "registering"}

    @app.post(
        "/start-aggregator",
        tags=["model fusion"],
        responses={200: {"links": _CREATED}},
        openapi_extra=_FORM_SCHEMA,
    )
    @before_body(control)
    async def start_aggregator(
        request: Request, authorization: Annotated[str | None, Header()] = None
    ) -> dict[str, Any]:
        """Create a federation (an aggregator) from the tutorial's form: ``fusion_algorithm``,
        ``model_type``, ``num_parties``, ``rounds``, ``epochs``, ``learning_rate``,
        ``optimizer``... any flat setting of the federation spec (``fedfuse.recipes.flat_names``)
        and the chosen fusion's parameters. Upload ``model_file`` written by
        ``torch.save(model)``, or name a zoo ``model`` (with ``input_shape`` and
        ``num_classes``), or upload ``initial_weights`` (safetensors). ``fusion_params`` and
        ``train_options`` may be JSON objects. Returns ``aggregator_id`` and the
        ``join_token`` remote parties use."""
        fields, uploads = await _form(request)
        join_token = fields.pop("join_token", None)
        if "spec" in fields:  # the nested spec as one JSON field, beside uploaded files
            document = parse_json_object(fields.pop("spec"), "spec")
            if fields:
                raise SpecError(f"give the nested spec or flat fields, not both: {sorted(fields)}")
            spec = spec_from_json(document)
        elif "fusion_algorithm" not in fields:
            raise SpecError("fusion_algorithm is required (e.g. fedavg)")
        else:
            spec = spec_from_form(fields)
        return await _create(
            spec, uploads.get("model_file"), uploads.get("initial_weights"), join_token
        )

    @app.post("/v1/federations", tags=["federations"], responses={200: {"links": _CREATED}})
    @before_body(control)
    async def create_federation(
        request: Request, authorization: Annotated[str | None, Header()] = None
    ) -> dict[str, Any]:
        """Create a federation from a nested JSON spec (``{"rounds": 10, "training":
        {"learning_rate": 0.05}, "fusion": {"name": "fedadam", "params": {...}},
        "aggregation": {"mode": "buffered", "buffer_size": 4}, "model": {"name": "mlp",
        "input_shape": [64], "num_classes": 10}}``), the same document ``fedfuse create
        --config`` sends. A ``join_token`` key sets the join token. The model is a zoo model or
        comes from parties (upload files through ``/start-aggregator``)."""
        body = await request.body()  # bounded by the boundary's body limit
        document = parse_json_object(body.decode("utf-8", errors="replace"), "the spec")
        join_token = document.pop("join_token", None)
        if join_token is not None and not isinstance(join_token, str):
            raise SpecError("join_token must be a string")
        return await _create(spec_from_json(document), None, None, join_token)

    @app.post("/start-party", tags=["model fusion"])
    @before_body(control)
    async def start_party(
        aggregator_id: Annotated[str, Form(max_length=64)],
        data_handler_class_name: Annotated[str, Form(max_length=128)],
        data: Annotated[UploadFile, File()],
        authorization: Annotated[str | None, Header()] = None,
    ) -> dict[str, Any]:
        """Register a party that trains on the service host on the uploaded ``.npz``
        (``x_train, y_train, x_test, y_test``). Answers how many parties are still to register."""
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
    @before_body(control)
    async def train(body: TrainRequest, authorization: Annotated[str | None, Header()] = None):
        """Start training. With ``wait`` (the default, as in the tutorial) answer when it ends,
        with ``global_model`` (name -> nested lists, loadable with ``load_state_dict``) and the
        metrics of every round; with ``"wait": false`` answer 202 at once and let the caller
        poll ``GET /v1/federations/{id}``. A model larger than the service's
        ``max_json_model_bytes`` is left out: download it from ``GET /v1/federations/{id}/model``.
        """
        fid = body.aggregator_id
        await to_thread.run_sync(manager.start, fid)
        if not body.wait:
            return JSONResponse({"aggregator_id": fid, "status": "training"}, status_code=202)
        done = asyncio.Event()  # set from the training thread: waiting costs no worker thread
        loop = asyncio.get_running_loop()
        manager.when_done(fid, lambda: _call_soon(loop, done.set))
        await done.wait()
        status = await to_thread.run_sync(manager.status, fid)
        weights = manager.global_weights(fid)
        answer = {
            "aggregator_id": fid,
            "status": status["status"],
            "error": status["error"],
            "rounds_done": status["rounds_done"],
        }
        size = num_bytes(weights)
        if size <= settings.max_json_model_bytes:
            answer["global_model"] = await to_thread.run_sync(_json_weights, weights)
        else:
            answer["global_model_url"] = f"/v1/federations/{fid}/model"
            answer["message"] = (
                f"the global model ({size} bytes) is larger than the JSON answer's limit of "
                f"{settings.max_json_model_bytes} bytes; download it as safetensors from "
                f"GET /v1/federations/{fid}/model"
            )
        rounds = await to_thread.run_sync(manager.store.rounds, fid)
        answer["metrics"] = rounds
        answer["failed_parties"] = _party_problems(rounds, "failed")
        answer["rejected_parties"] = _party_problems(rounds, "rejected")
        return answer

    @app.post("/stop", tags=["model fusion"])
    @before_body(control)
    async def stop(body: StopRequest, authorization: Annotated[str | None, Header()] = None):
        """End a federation. Stopping twice is a 409."""
        await to_thread.run_sync(manager.stop, body.aggregator_id)
        return {
            "aggregator_id": body.aggregator_id,
            "status": manager.status(body.aggregator_id)["status"],
        }

    # ---- /v1: status, history, model ----------------------------------------------------------
    # with an API key: the key, or for one federation a party token of it
    @app.get("/v1/federations", tags=["federations"])
    @before_body(reader)
    def list_federations(
        authorization: Annotated[str | None, Header()] = None,
    ) -> list[dict[str, Any]]:
        return manager.list()

    @app.get("/v1/federations/{fid}", tags=["federations"])
    @before_body(reader)
    def federation_status(
        fid: str, authorization: Annotated[str | None, Header()] = None
    ) -> dict[str, Any]:
        return manager.status(fid)

    @app.get("/v1/federations/{fid}/history", tags=["federations"])
    @before_body(reader)
    def federation_history(
        fid: str, authorization: Annotated[str | None, Header()] = None
    ) -> dict[str, Any]:
        manager.status(fid)
        return {"rounds": manager.store.rounds(fid), "rejected": manager.store.rejected(fid)}

    @app.get("/v1/federations/{fid}/model", tags=["federations"])
    @before_body(reader)
    def download_model(fid: str, authorization: Annotated[str | None, Header()] = None) -> Response:
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
    @before_body(joining)
    def join(body: JoinRequest, request: Request) -> dict[str, Any]:
        """Join a federation with its join token; answers this party's own token and id, and
        its ``party_secret``: a rejoin with the same ``name`` must send it (or its current
        ``party_token``) as ``party_secret``, so a name alone takes no identity."""
        return counted(request, lambda: manager.join(body.token, body.name, body.party_secret))

    @app.get("/v1/federations/{fid}/model-file", tags=["party protocol"])
    @before_body(party)
    def model_file(fid: str, authorization: Annotated[str | None, Header()] = None) -> Response:
        """The uploaded model file, for parties that build their model from it."""
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
    @before_body(party)
    async def next_task(
        fid: str,
        request: Request,
        wait: Annotated[float, Query(ge=0)] = 20.0,
        authorization: Annotated[str | None, Header()] = None,
    ) -> Response:
        """Long-poll for this party's next task: 200 with the task (metadata in the
        ``X-Fedfuse-Meta`` header, weights as a safetensors body), 204 if none came within
        ``wait`` seconds, 410 once the federation has ended."""
        party_id = request.state.party_id
        pool = manager.pool(fid)
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
            if await request.is_disconnected():
                # a party that went away (killed, network lost) neither looks live for the rest
                # of its poll nor takes a task it can never answer
                return Response(status_code=204)
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
    @before_body(party)
    async def post_reply(
        fid: str,
        task_id: int,
        request: Request,
        authorization: Annotated[str | None, Header()] = None,
        x_fedfuse_meta: Annotated[str | None, Header()] = None,
    ) -> Response:
        """Post the reply to a task: ``X-Fedfuse-Meta`` JSON (``kind`` update | evaluation |
        error, ``num_examples``, ``metrics``) and, for an update, a safetensors body.

        Only a party the round waits for may send a body. It is received outside any lock
        (a slow party delays no one; the boundary's read deadline ends a stalled one), kept on
        disk past 1 MiB, and handed to the round one reply at a time per federation, so the
        memory a federation spends on replies is O(model)."""
        party_id = request.state.party_id
        meta = decode_meta(x_fedfuse_meta)
        pool = manager.pool(fid)
        pool.expects(party_id, task_id)
        if (fid, party_id) in receiving:
            raise Conflict(f"a reply of {party_id!r} is already being received")
        receiving.add((fid, party_id))
        try:
            with tempfile.SpooledTemporaryFile(_SPOOL_IN_MEMORY) as spool:
                async for chunk in request.stream():  # counted and timed by the boundary
                    spool.write(chunk)
                async with intakes.setdefault(fid, asyncio.Semaphore(1)):
                    reply = await to_thread.run_sync(_reply_from, spool, meta, party_id)
                    await to_thread.run_sync(pool.submit, party_id, task_id, reply)
        finally:
            receiving.discard((fid, party_id))
        if isinstance(reply, Malformed):  # the round records it as rejected; the party learns why
            return JSONResponse({"detail": reply.reason}, status_code=400)
        return JSONResponse({"accepted": True})

    @app.get("/healthz", tags=["service"])
    async def healthz() -> dict[str, str]:  # on the event loop: answers however busy threads are
        return {"status": "ok"}

    return app
