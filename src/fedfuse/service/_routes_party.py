"""The party protocol (``/v1``): join, fetch tasks by long poll, post replies.

Task bodies are serialized once per federation and model version, and every download streams
that one buffer in 1 MiB slices (no copy). A long poll holds no thread and wakes for nothing but
its task, the federation's end, its deadline or its party going away.

A reply to a training task is received by ``DenseIntake`` straight into one buffer of its exact
size, checked against the model as it arrives (a poisoned body is refused before the rest is
read); other replies (compressed updates, evaluations, secure aggregation) are read whole,
spooled to disk past 1 MiB. One reply body per federation at a time has the federation's turn
and goes straight in; it is handed to the round, which folds it, before the next goes in, so
the memory a federation spends on replies is O(model) whatever the number of parties (the
others wait unread, held back by TCP flow control; the HTTP server keeps at most one socket
read, ~256 KiB, of each). A body that is slow while it has the turn, or that waited long for
it, is spooled instead and gives the turn up: a slow party holds up no one.
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
_TURN_WAIT = 10.0  # seconds a dense reply waits for its federation's turn before it is spooled
_SPILL_IN_MEMORY = 64 * 1024  # a spooled dense body past this waits on disk (many may wait)
_GAP = 2.0  # seconds without a byte after which a body holding the turn is spooled instead
_MIN_RATE = 32e6  # bytes per second a body holding the turn must keep up, or it is spooled


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


class _Spillable:
    """One dense reply body on its way in: straight into a ``DenseIntake`` while it holds its
    federation's turn, spooled (in memory up to 64 KiB, then on disk) once it does not.

    ``take_turn`` waits up to ``_TURN_WAIT`` for the turn; while the body holds it, a gap of
    ``_GAP`` seconds between chunks or a pace under ``_MIN_RATE`` spills what came so far to
    the spool and gives the turn up. ``finish`` (with the turn held again for a spooled body)
    returns the reply; the caller submits it, then ``close`` gives the turn back."""

    def __init__(
        self,
        make_intake: Callable[[], DenseIntake],
        turn: asyncio.Semaphore,
        loop: asyncio.AbstractEventLoop,
        size: int | None,
    ) -> None:
        self._make_intake = make_intake
        self._turn = turn
        self._loop = loop
        self._size = size
        self._held = False
        self.intake: DenseIntake | None = None
        self.spool: IO[bytes] | None = None
        self._timers: list[asyncio.TimerHandle] = []

    async def take_turn(self) -> None:
        try:
            async with asyncio.timeout(_TURN_WAIT):
                await self._turn.acquire()
        except TimeoutError:
            self.spool = tempfile.SpooledTemporaryFile(_SPILL_IN_MEMORY)  # noqa: SIM115 (close)
            return
        self._held = True
        self.intake = self._make_intake()
        budget = _GAP + (self._size or 0) / _MIN_RATE
        self._timers = [self._loop.call_later(budget, self._spill), self._gap_timer()]

    def _gap_timer(self) -> asyncio.TimerHandle:
        return self._loop.call_later(_GAP, self._spill)

    def write(self, chunk: bytes) -> None:
        if self.intake is not None:
            self.intake.feed(chunk)
            if self._held and len(self._timers) == 2:
                self._timers[1].cancel()
                self._timers[1] = self._gap_timer()
        else:
            assert self.spool is not None
            self.spool.write(chunk)

    def _spill(self) -> None:
        """Too slow for the turn: what came so far goes to a spool, the turn to the next."""
        if not self._held or self.intake is None:
            return
        self._cancel_timers()
        if self.intake.reason is None:  # a refused body is only counted, and keeps no bytes
            self.spool = tempfile.SpooledTemporaryFile(_SPILL_IN_MEMORY)  # noqa: SIM115 (close)
            self.spool.write(self.intake.prefix())
            self.intake = None
        self._give_turn()

    async def finish(self, meta: dict[str, Any], party_id: str) -> tuple[Any, int]:
        """The reply the whole body makes, and the status to answer; the turn is held."""
        self._cancel_timers()
        if self.intake is None:  # spooled: into an intake now, with the turn again
            await self._turn.acquire()
            self._held = True
            self.intake = self._make_intake()
            await to_thread.run_sync(_feed_from, self.spool, self.intake)
        intake = self.intake
        if intake.reason is not None:
            return RefusedUpdate(intake.reason, intake.data_bytes), 400
        reply = reply_from_wire(meta, intake.body(), party_id)
        return reply, 400 if isinstance(reply, Malformed) else 200

    def _cancel_timers(self) -> None:
        for timer in self._timers:
            timer.cancel()
        self._timers = []

    def _give_turn(self) -> None:
        if self._held:
            self._held = False
            self._turn.release()

    def close(self) -> None:
        self._cancel_timers()
        self._give_turn()
        self.intake = None
        if self.spool is not None:
            self.spool.close()


def _feed_from(spool: IO[bytes], intake: DenseIntake) -> None:
    """Feed ``intake`` what ``spool`` holds, 1 MiB at a time."""
    spool.seek(0)
    while chunk := spool.read(_CHUNK):
        intake.feed(chunk)


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
        request: Request,
        meta: dict[str, Any],
        reference: Weights,
        fid: str,
        party_id: str,
        submit: Callable[[Any], Awaitable[None]],
    ) -> tuple[Any, int]:
        """Receive a training reply with ``DenseIntake`` and ``submit`` it; the reply and the
        HTTP status to answer (200, or 4xx with the reason).

        It goes straight into the intake while it holds its federation's turn (``intakes``);
        one that waited ``_TURN_WAIT`` for the turn, or that is slow once it has it (no bytes
        for ``_GAP`` seconds, or slower than ``_MIN_RATE`` overall), is spooled instead (memory,
        then disk) and gives the turn up, so a slow or stalling party holds up no one; it is
        fed to an intake when its body is in and the turn is its again."""
        declared = request.headers.get("content-length")
        size = int(declared) if declared and declared.isdigit() else None
        turn = intakes.setdefault(fid, asyncio.Semaphore(1))

        def make_intake() -> DenseIntake:
            return DenseIntake(
                reference, size, early=meta_allows_early(meta), spares=spares.setdefault(fid, [])
            )

        body = _Spillable(make_intake, turn, asyncio.get_running_loop(), size)
        try:
            await body.take_turn()
            async for chunk in request.stream():  # counted and timed by the boundary
                body.write(chunk)
            reply, status = await body.finish(meta, party_id)
            await submit(reply)
        except IntakeRefused as exc:
            reply, status = Malformed(f"malformed update reply: {exc}"), exc.status
            await submit(reply)
        finally:
            body.close()
        return reply, status

    async def _whole_reply(
        request: Request,
        meta: dict[str, Any],
        fid: str,
        party_id: str,
        submit: Callable[[Any], Awaitable[None]],
    ) -> Any:
        """A reply that is not a dense update: spooled outside any lock, then read whole and
        submitted in its federation's turn."""
        with tempfile.SpooledTemporaryFile(_SPOOL_IN_MEMORY) as spool:
            async for chunk in request.stream():  # counted and timed by the boundary
                spool.write(chunk)
            async with intakes.setdefault(fid, asyncio.Semaphore(1)):
                reply = await to_thread.run_sync(_reply_from, spool, meta, party_id)
                await submit(reply)
                return reply

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

        Only a party the round waits for may send a body. A training update goes straight
        into one buffer when its federation's turn is free and is handed to the round, which
        folds it, before the next is read there; a slow one is spooled and gives the turn up
        (see ``_dense_reply``), so the memory a federation spends on replies is O(model) and
        a slow party holds up no one. A dense update is refused as soon as it is known bad
        (its header does not match the model, a value is not finite), with the reason the
        round records."""
        party_id = request.state.party_id
        meta = decode_meta(x_fedfuse_meta)
        pool = manager.pool(fid)
        task = pool.task_of(party_id, task_id)
        if (fid, party_id) in receiving:
            raise Conflict(f"a reply of {party_id!r} is already being received")
        receiving.add((fid, party_id))

        async def submit(reply: Any) -> None:
            pool.expects(party_id, task_id)  # (the round may have ended while it came in)
            # the next body goes straight in once the round has folded this one
            handed = functools.partial(pool.submit, settle=_SETTLE)
            await to_thread.run_sync(handed, party_id, task_id, reply)

        try:
            dense = (
                isinstance(task, TrainTask)
                and meta.get("kind") == "update"
                and task.config.compression == "none"
            )
            if dense:
                reply, status = await _dense_reply(
                    request, meta, task.weights, fid, party_id, submit
                )
            else:
                reply = await _whole_reply(request, meta, fid, party_id, submit)
                status = 400 if isinstance(reply, Malformed) else 200
        finally:
            receiving.discard((fid, party_id))
        if status != 200:  # the round records it as rejected; the party learns why
            return JSONResponse({"detail": getattr(reply, "reason", "")}, status_code=status)
        return JSONResponse({"accepted": True})

    return router
