"""Live updates for the dashboard: one producer per run, shared by all its viewers.

A ``Feed`` polls its run's view (``Source.view``, in a worker thread, every ``interval``
seconds) and turns what changed into server-sent events, encoded once and put on every
viewer's queue: 100 viewers cost 100 queue puts per change, not 100 database reads. Events:

* ``snapshot`` (id = latest round): the whole view; sent first, and whenever history was
  rewritten (a federation resumed from an older checkpoint).
* ``round`` (id = its round or epoch number): one new point.
* ``parties``: every party's row, when any changed. ``status``: the run's status word.
* ``end``: the run finished; the stream closes after it.

Ids are round numbers, so a browser that reconnects with ``Last-Event-ID: N`` gets the rounds
after N instead of a snapshot. A viewer whose queue fills (a stalled client) is disconnected;
its browser reconnects and resumes the same way. No thread is held per viewer.

A stream also ends after ``max_stream_seconds`` (30 s, as long as a party's long poll) and
the browser reconnects a second later (``retry: 1000``) and resumes: uvicorn waits for open
responses before it stops, so an endless stream would keep ``fedfuse serve`` from exiting.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from anyio import to_thread

from fedfuse.service._dashboard_view import Source

__all__ = ["Feeds", "encode"]

log = logging.getLogger("fedfuse.service")

_END = b"event: end\ndata: {}\n\n"
_RETRY = b"retry: 1000\n\n"  # a browser whose stream ended reconnects after 1 s
_DROP = b""  # put on a viewer's queue when it fell behind: its stream ends
HEARTBEAT = b": keep-alive\n\n"


def encode(event: str, data: Any, event_id: int | None = None) -> bytes:
    """One server-sent event (JSON data on a single line)."""
    head = f"event: {event}\n" + (f"id: {event_id}\n" if event_id is not None else "")
    return (head + f"data: {json.dumps(data, separators=(',', ':'))}\n\n").encode()


def _last_x(view: dict[str, Any]) -> int:
    return view["points"][-1]["x"] if view["points"] else 0


def _status(view: dict[str, Any]) -> dict[str, Any]:
    return {"status": view["status"], "finished": view["finished"], "error": view.get("error")}


def resume(view: dict[str, Any], last_id: int | None) -> list[bytes]:
    """What a viewer that saw up to round ``last_id`` (None: nothing) is sent first."""
    if last_id is None or last_id > _last_x(view):
        events = [encode("snapshot", view, _last_x(view))]
    else:
        events = [encode("round", p, p["x"]) for p in view["points"] if p["x"] > last_id]
        events += [encode("parties", view["parties"]), encode("status", _status(view))]
    return events + ([_END] if view["finished"] else [])


def changes(old: dict[str, Any], new: dict[str, Any]) -> list[bytes]:
    """The events that take a viewer of ``old`` to ``new``."""
    known = {p["x"]: p for p in old["points"]}
    last = _last_x(old)
    if any(known.get(p["x"], p) != p for p in new["points"]) or _last_x(new) < last:
        return [encode("snapshot", new, _last_x(new))]
    events = [encode("round", p, p["x"]) for p in new["points"] if p["x"] > last]
    if new["parties"] != old["parties"]:
        events.append(encode("parties", new["parties"]))
    if _status(new) != _status(old):
        events.append(encode("status", _status(new)))
    return events


class Feed:
    """The producer of one run; it stops when its last viewer leaves or the run finishes."""

    def __init__(self, source: Source, run_id: str, interval: float, queue_size: int) -> None:
        self.source, self.run_id = source, run_id
        self.interval, self.queue_size = interval, queue_size
        self.viewers: set[asyncio.Queue[bytes]] = set()
        self.view: dict[str, Any] | None = None
        self.task: asyncio.Task[None] | None = None

    def _send(self, chunks: list[bytes]) -> None:
        for queue in list(self.viewers):
            try:
                for chunk in chunks:
                    queue.put_nowait(chunk)
            except asyncio.QueueFull:
                self.viewers.discard(queue)
                queue.get_nowait()  # room for the word that it was dropped
                queue.put_nowait(_DROP)

    async def run(self) -> None:
        try:
            while self.viewers and not (self.view and self.view["finished"]):
                await asyncio.sleep(self.interval)
                try:
                    new = await to_thread.run_sync(self.source.view, self.run_id)
                except Exception as exc:  # the run went away: its viewers' streams end
                    log.warning("dashboard feed of %s ended: %s", self.run_id[:8], exc)
                    self._send([_END])
                    return
                if self.view is not None:
                    # one poll's events go out as one write per viewer, not one per event
                    events = changes(self.view, new)
                    self._send(([b"".join(events)] if events else []) + ([_END] * new["finished"]))
                self.view = new
        finally:
            self.task = None


class Feeds:
    """Every run's feed, made on a run's first viewer.

    Args:
        interval: seconds between two polls of a watched run.
        heartbeat: seconds of silence after which a comment keeps the connection open.
        max_viewers: open streams per run; past it a new one is refused (503).
        max_stream_seconds: a stream's life; the browser then reconnects and resumes.
    """

    def __init__(
        self,
        source: Source,
        *,
        interval: float = 0.25,
        heartbeat: float = 15.0,
        max_viewers: int = 1000,
        queue_size: int = 256,
        max_stream_seconds: float = 30.0,
    ) -> None:
        self.source = source
        self.interval, self.heartbeat = interval, heartbeat
        self.max_stream_seconds = max_stream_seconds
        self.max_viewers, self.queue_size = max_viewers, queue_size
        self._feeds: dict[str, Feed] = {}

    def full(self, run_id: str) -> bool:
        feed = self._feeds.get(run_id)
        return feed is not None and len(feed.viewers) >= self.max_viewers

    def stream(self, view: dict[str, Any], last_id: int | None) -> AsyncIterator[bytes]:
        """A viewer's events: ``view`` (just read) resumed from ``last_id``, then live ones."""
        run_id = view["id"]
        feed = self._feeds.get(run_id)
        if feed is None or feed.task is None:
            feed = self._feeds[run_id] = Feed(self.source, run_id, self.interval, self.queue_size)
        current = feed.view if feed.view is not None else view
        feed.view = current
        queue: asyncio.Queue[bytes] = asyncio.Queue(self.queue_size)
        if not current["finished"]:
            feed.viewers.add(queue)
            if feed.task is None:
                feed.task = asyncio.get_running_loop().create_task(feed.run())
        return self._events(feed, queue, resume(current, last_id))

    async def _events(
        self, feed: Feed, queue: asyncio.Queue[bytes], first: list[bytes]
    ) -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        ends = loop.time() + self.max_stream_seconds
        try:
            yield _RETRY
            for chunk in first:
                yield chunk
            if first and first[-1] == _END:
                return
            while (left := ends - loop.time()) > 0:
                try:
                    chunk = await asyncio.wait_for(queue.get(), min(self.heartbeat, left))
                except TimeoutError:
                    if ends - loop.time() > 0:
                        yield HEARTBEAT
                    continue
                if chunk == _DROP:
                    return
                yield chunk
                if chunk == _END:
                    return
        finally:
            feed.viewers.discard(queue)
