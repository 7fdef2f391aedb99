"""The party protocol (``/v1``): join, fetch tasks by long poll, post replies.

Task bodies are serialized once per federation and model version, and every download streams
that one buffer in 1 MiB slices (no copy). A long poll holds no thread and wakes for nothing but
its task, the federation's end, its deadline or its party going away.

A reply to a training task is received by ``DenseIntake`` straight into one buffer of its exact
size, checked against the model as it arrives (a poisoned body is refused before the rest is
read); other replies (compressed updates, evaluations, secure aggregation) are read whole,
spooled to disk past 1 MiB. One reply body per federation is received at a time and handed to
the round before the next is read, so the memory a federation spends on replies is O(model),
whatever the number of parties (the others wait unread, held back by TCP flow control).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import tempfile
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import IO, Annotated, Any

from anyio import to_thread
from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, Field

from fedfuse.federation._round import RefusedUpdate
from fedfuse.party import Malformed, TrainTask
from fedfuse.runtime import decode_meta, reply_from_wire, task_to_wire
from fedfuse.service._boundary import GuardedRoute, before_body
from fedfuse.service._config import ServiceSettings
from fedfuse.service._errors import Conflict, NotFound
from fedfuse.service._guards import Guards
from fedfuse.service._intake import DenseIntake, IntakeRefused, meta_allows_early
from fedfuse.service._manager import Manager
from fedfuse.weights import Weights, to_bytes

__all__ = ["META_HEADER", "party_routes"]

META_HEADER = "X-Fedfuse-Meta"
_CHUNK = 1024 * 1024  # a task body goes out in slices of this size
_SPOOL_IN_MEMORY = 1024 * 1024  # a reply body past this waits on disk, not in memory
_SETTLE = 5.0  # seconds the intake waits for the round to fold a reply before reading the next


class JoinRequest(BaseModel):
    token: str = Field(min_length=1, max_length=256)
    name: str | None = Field(default=None, max_length=128, pattern=r"^[A-Za-z0-9_.-]+$")
    party_secret: str | None = Field(default=None, max_length=256)


def _reply_from(spool: IO[bytes], meta: dict[str, Any], party_id: str) -> Any:
    """The reply in ``spool``: its arrays are views into one buffer of the body's size."""
    body = bytearray(spool.tell())
    spool.seek(0)
    spool.readinto(body)
    return reply_from_wire(meta, body, party_id)


def _until_disconnect(receive: Callable[[], Awaitable[dict[str, Any]]]) -> Awaitable[None]:
    """Returns once the client has gone away (for a request whose body has been read, the
    ASGI ``receive`` answers nothing else)."""

    async def wait() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    return wait()


def party_routes(settings: ServiceSettings, manager: Manager, guards: Guards) -> APIRouter:
    """The party protocol's routes, with the state they share: who is sending a reply, the
    serialized task bodies, and the futures of the long polls waiting now."""
    router = APIRouter(route_class=GuardedRoute)
    intakes: dict[str, asyncio.Semaphore] = {}  # per federation: memory O(model) per federation
    receiving: set[tuple[str, str]] = set()  # (federation, party) whose reply body is arriving
    spares: dict[str, list[bytearray]] = {}  # per federation: body buffers to reuse
    body_cache: dict[str, tuple[Weights, bytes]] = {}  # federation id -> (weights, bytes)
    body_lock = threading.Lock()
    # (federation, party) -> the futures of its polls waiting now; an entry lives only as long
    # as a poll waits, so 10,000 idle parties cost 10,000 futures and nothing grows over time
    waiting: dict[tuple[str, str], set[asyncio.Future[None]]] = {}
    # federation -> (its pool, the loop its polls wait on) that wake-ups are wired for
    hooked: dict[str, tuple[Any, asyncio.AbstractEventLoop]] = {}

    def _wake(fid: str, party_ids: list[str]) -> None:
        for pid in party_ids:
            for future in waiting.get((fid, pid), ()):
                if not future.done():
                    future.set_result(None)

    def _wake_all(fid: str) -> None:
        _wake(fid, [pid for f, pid in list(waiting) if f == fid])

    def _hook(fid: str, loop: asyncio.AbstractEventLoop) -> None:
        """Task posts and the end of ``fid`` wake its polls, on ``loop`` (from any thread)."""
        pool = manager.pool(fid)
        wired = hooked.get(fid)
        if wired is not None and wired[0] is pool and wired[1] is loop:
            return
        hooked[fid] = (pool, loop)

        def call(wake: Callable[..., None], *args: Any) -> None:
            with contextlib.suppress(RuntimeError):  # that loop has closed: nothing waits on it
                loop.call_soon_threadsafe(wake, *args)

        pool.on_post = lambda ids: call(_wake, fid, ids)
        manager.when_done(fid, lambda: call(_wake_all, fid))
        manager.when_done(fid, lambda: (spares.pop(fid, None), body_cache.pop(fid, None)))

    @router.post("/v1/join", tags=["party protocol"])
    @before_body(guards.joining)
    def join(body: JoinRequest, request: Request) -> dict[str, Any]:
        """Join a federation with its join token; answers this party's own token and id, and
        its ``party_secret``: a rejoin with the same ``name`` must send it (or its current
        ``party_token``) as ``party_secret``, so a name alone takes no identity."""
        return guards.counted(
            request, lambda: manager.join(body.token, body.name, body.party_secret)
        )

    @router.get("/v1/federations/{fid}/model-file", tags=["party protocol"])
    @before_body(guards.party)
    def model_file(fid: str, authorization: Annotated[str | None, Header()] = None) -> Response:
        """The uploaded model file, for parties that build their model from it."""
        data = manager.model_file(fid)
        if data is None:
            raise NotFound("this federation has no model file")
        return Response(data, media_type="application/octet-stream")

    def _cached(fid: str, weights: Weights) -> bytes | None:
        cached = body_cache.get(fid)
        return cached[1] if cached is not None and cached[0] is weights else None

    def _body(fid: str, weights: Weights) -> bytes:
        """The task body for ``weights``, serialized once per federation and model version."""
        with body_lock:
            data = _cached(fid, weights)
            if data is None:
                body_cache[fid] = (weights, data := to_bytes(weights))
            return data

    async def _stream(data: bytes) -> AsyncIterator[memoryview]:
        view = memoryview(data)
        for start in range(0, len(view), _CHUNK):
            yield view[start : start + _CHUNK]  # no copy: the transport applies back-pressure

    @router.get("/v1/federations/{fid}/tasks/next", tags=["party protocol"])
    @before_body(guards.party)
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
        _hook(fid, loop)
        deadline = loop.time() + min(wait, settings.max_poll_wait)
        gone: asyncio.Future[None] | None = None
        key = (fid, party_id)
        try:
            with pool.polling(party_id):
                while True:
                    status = manager.status_of(fid)
                    if status in ("completed", "stopped", "failed"):
                        return JSONResponse({"detail": f"federation is {status}"}, status_code=410)
                    pending = pool.next_task(party_id, 0)
                    if pending is not None:
                        break
                    remaining = deadline - loop.time()
                    if remaining <= 0 or (gone is not None and gone.done()):
                        # a party that went away (killed, network lost) takes no task it can
                        # never answer
                        return Response(status_code=204)
                    if gone is None:
                        gone = asyncio.ensure_future(_until_disconnect(request.receive))
                    woken = loop.create_future()
                    waiting.setdefault(key, set()).add(woken)
                    try:
                        await asyncio.wait(
                            (woken, gone), timeout=remaining, return_when=asyncio.FIRST_COMPLETED
                        )
                    finally:
                        futures = waiting.get(key)
                        if futures is not None:
                            futures.discard(woken)
                            if not futures:
                                del waiting[key]
        finally:
            if gone is not None:
                gone.cancel()
        meta, weights = task_to_wire(pending)
        body = _cached(fid, weights) or await to_thread.run_sync(_body, fid, weights)
        return StreamingResponse(
            _stream(body),
            media_type="application/octet-stream",
            headers={META_HEADER: json.dumps(meta), "Content-Length": str(len(body))},
        )

    async def _dense_reply(
        request: Request, meta: dict[str, Any], reference: Weights, fid: str, party_id: str
    ) -> tuple[Any, int]:
        """A training reply received by ``DenseIntake``: the reply for the round and the HTTP
        status to answer (200, or 4xx with the reason)."""
        declared = request.headers.get("content-length")
        try:
            intake = DenseIntake(
                reference,
                int(declared) if declared and declared.isdigit() else None,
                early=meta_allows_early(meta),
                spares=spares.setdefault(fid, []),
            )
            async for chunk in request.stream():  # counted and timed by the boundary
                intake.feed(chunk)
            if intake.reason is not None:
                return RefusedUpdate(intake.reason, intake.data_bytes), 400
            body = intake.body()
        except IntakeRefused as exc:
            return Malformed(f"malformed update reply: {exc}"), exc.status
        reply = reply_from_wire(meta, body, party_id)
        return reply, 400 if isinstance(reply, Malformed) else 200

    async def _whole_reply(request: Request, meta: dict[str, Any], party_id: str) -> Any:
        with tempfile.SpooledTemporaryFile(_SPOOL_IN_MEMORY) as spool:
            async for chunk in request.stream():  # counted and timed by the boundary
                spool.write(chunk)
            return await to_thread.run_sync(_reply_from, spool, meta, party_id)

    @router.post("/v1/federations/{fid}/tasks/{task_id}/reply", tags=["party protocol"])
    @before_body(guards.party)
    async def post_reply(
        fid: str,
        task_id: int,
        request: Request,
        authorization: Annotated[str | None, Header()] = None,
        x_fedfuse_meta: Annotated[str | None, Header()] = None,
    ) -> Response:
        """Post the reply to a task: ``X-Fedfuse-Meta`` JSON (``kind`` update | evaluation |
        error, ``num_examples``, ``metrics``) and, for an update, a safetensors body.

        Only a party the round waits for may send a body. One body per federation is read at
        a time (a stalled one is ended by the boundary's read deadline) and handed to the
        round before the next is read, so the memory a federation spends on replies is
        O(model). A dense update is refused as soon as it is known bad (its header does not
        match the model, a value is not finite), with the reason the round records."""
        party_id = request.state.party_id
        meta = decode_meta(x_fedfuse_meta)
        pool = manager.pool(fid)
        task = pool.task_of(party_id, task_id)
        if (fid, party_id) in receiving:
            raise Conflict(f"a reply of {party_id!r} is already being received")
        receiving.add((fid, party_id))
        status = 200
        try:
            async with intakes.setdefault(fid, asyncio.Semaphore(1)):
                pool.expects(party_id, task_id)  # (the round may have ended while it waited)
                dense = (
                    isinstance(task, TrainTask)
                    and meta.get("kind") == "update"
                    and task.config.compression == "none"
                )
                if dense:
                    reply, status = await _dense_reply(request, meta, task.weights, fid, party_id)
                else:
                    reply = await _whole_reply(request, meta, party_id)
                    status = 400 if isinstance(reply, Malformed) else 200
                # the next body is read once the round has folded this one and let it go
                submit = functools.partial(pool.submit, settle=_SETTLE)
                await to_thread.run_sync(submit, party_id, task_id, reply)
        finally:
            receiving.discard((fid, party_id))
        if status != 200:  # the round records it as rejected; the party learns why
            return JSONResponse({"detail": getattr(reply, "reason", "")}, status_code=status)
        return JSONResponse({"accepted": True})

    return router
