"""The party protocol (``/v1``): join, fetch tasks by long poll, post replies.

Task bodies are serialized once per federation and model version and streamed without copies;
reply bodies are received outside any lock, spooled to disk past 1 MiB, and handed to the round
one at a time per federation, so the memory a federation spends on replies is O(model).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import tempfile
import threading
from collections.abc import AsyncIterator
from typing import IO, Annotated, Any

from anyio import to_thread
from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, Field

from fedfuse.party import Malformed
from fedfuse.runtime import decode_meta, reply_from_wire, task_to_wire
from fedfuse.service._boundary import GuardedRoute, before_body
from fedfuse.service._config import ServiceSettings
from fedfuse.service._errors import Conflict, NotFound
from fedfuse.service._guards import Guards
from fedfuse.service._manager import Manager
from fedfuse.weights import Weights, to_bytes

__all__ = ["META_HEADER", "party_routes"]

META_HEADER = "X-Fedfuse-Meta"
_CHUNK = 64 * 1024
_SPOOL_IN_MEMORY = 1024 * 1024  # a reply body past this waits on disk, not in memory


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


def party_routes(settings: ServiceSettings, manager: Manager, guards: Guards) -> APIRouter:
    """The party protocol's routes, with the state they share: who is sending a reply, the
    serialized task bodies, and the events that wake long polls."""
    router = APIRouter(route_class=GuardedRoute)
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

    return router
