"""The service's HTTP boundary: what every request must satisfy before a handler sees it.

``Boundary`` is one pure-ASGI middleware in front of every route, so no route can forget it:

* ``Host`` must name this service (an IP address, a loopback name, the address it serves, or an
  operator's ``allowed_hosts``) and ``Origin``, when a browser sends one, must be the same host:
  a web page elsewhere cannot drive a local service (DNS rebinding, cross-site forms). 403.
* Request bodies are counted as they arrive, chunked or not, whatever ``Content-Length``
  claims: the request ends with 413 at ``max_body_bytes`` and with 408 once no byte came for
  ``read_timeout`` seconds (a slow-loris body). Handlers read bodies before taking any lock.

Authentication runs before FastAPI reads a form or JSON body: ``GuardedRoute`` calls the
endpoint's ``before_body`` check first, so a wrong token with a huge body costs nothing.
``FailureLimiter`` counts failed authentications per client address (429 with Retry-After).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlsplit

from fastapi import HTTPException, Request
from fastapi.routing import APIRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["Boundary", "FailureLimiter", "GuardedRoute", "before_body", "same_secret"]

LOOPBACK_NAMES = frozenset({"localhost"})


class Refused(HTTPException):
    """A request the boundary ends (status and detail as any other HTTP error)."""

    def __init__(self, status_code: int, detail: str, headers: dict[str, str] | None = None):
        super().__init__(status_code, detail, {"Connection": "close", **(headers or {})})


def same_secret(given: str, expected: str) -> bool:
    """Compare two secrets in constant time (of their hashes, so lengths leak nothing)."""
    return hmac.compare_digest(
        hashlib.sha256(given.encode()).digest(), hashlib.sha256(expected.encode()).digest()
    )


# ---- Host and Origin ---------------------------------------------------------------------------
def _hostname(authority: str) -> str:
    """``example.org:8080`` -> ``example.org``; ``[::1]:80`` -> ``::1``."""
    return (urlsplit(f"//{authority}").hostname or "").rstrip(".").lower()


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def host_problem(headers: dict[str, str], served: str | None, allowed: Iterable[str]) -> str | None:
    """Why ``Host``/``Origin`` do not name this service, or None.

    An IP address cannot be rebound by DNS, so any address is accepted as ``Host``; a name must
    be a loopback name, the served address, or allowed by the operator (``*`` allows all)."""
    allowed = {a.lower() for a in allowed}
    host = _hostname(headers.get("host", ""))
    names = LOOPBACK_NAMES | allowed | ({served.lower()} if served else set())
    if "*" not in allowed and not (_is_ip(host) or host in names):
        return (
            f"Host header {headers.get('host', '')!r} does not name this service "
            "(start it with --allowed-host NAME to serve that name)"
        )
    origin = headers.get("origin")
    if origin is not None and "*" not in allowed:
        origin_host = urlsplit(origin).hostname or ""
        if origin_host.lower() != host and origin_host.lower() not in allowed:
            return (
                f"Origin header {origin[:200]!r} is not this service: requests from other web "
                "pages are refused (--allowed-host NAME allows an origin)"
            )
    return None


# ---- the middleware ----------------------------------------------------------------------------
class Boundary:
    """Host/Origin check, body byte count and body read deadline for every HTTP request."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        read_timeout: float,
        allowed_hosts: Iterable[str] = (),
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.read_timeout = read_timeout
        self.allowed_hosts = tuple(allowed_hosts)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        served = (scope.get("server") or (None, None))[0]
        problem = host_problem(headers, served, self.allowed_hosts)
        if problem is not None:
            await _answer(send, 403, problem)
            return
        refusal = self._declared_length_problem(headers.get("content-length"))
        if refusal is not None:
            await _answer(send, *refusal)
            return
        body = _CountedBody(receive, self.max_body_bytes, self.read_timeout, self._too_large())
        started = False

        async def send_checked(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, body.receive, send_checked)
        except Refused as exc:  # raised where nothing turned it into a response
            if started:
                raise
            await _answer(send, exc.status_code, str(exc.detail), exc.headers)

    def _declared_length_problem(self, declared: str | None) -> tuple[int, str] | None:
        """A ``Content-Length`` past the limit is refused before a byte of the body is read."""
        if declared is None:
            return None
        if not declared.isdigit():
            return 400, f"Content-Length {declared[:40]!r} is not a byte count"
        if int(declared) > self.max_body_bytes:
            return 413, self._too_large()
        return None

    def _too_large(self) -> str:
        return f"request body exceeds the limit of {self.max_body_bytes} bytes (--max-upload-mb)"


class _CountedBody:
    """``receive`` that counts body bytes and waits at most ``timeout`` for each chunk."""

    def __init__(self, receive: Receive, limit: int, timeout: float, too_large: str) -> None:
        self._receive = receive
        self._limit = limit
        self._timeout = timeout
        self._too_large = too_large
        self._size = 0
        self._complete = False

    async def receive(self) -> Message:
        if self._complete:  # the body is in: what remains is waiting for a disconnect
            return await self._receive()
        try:
            async with asyncio.timeout(self._timeout):
                message = await self._receive()
        except TimeoutError:
            raise Refused(
                408, f"no request body bytes for {self._timeout:g} s (the read deadline)"
            ) from None
        if message["type"] == "http.request":
            self._size += len(message.get("body", b""))
            if self._size > self._limit:
                raise Refused(413, self._too_large)
            self._complete = not message.get("more_body", False)
        else:
            self._complete = True
        return message


async def _answer(
    send: Send, status: int, detail: str, headers: dict[str, str] | None = None
) -> None:
    """A JSON ``{"detail": ...}`` answer, and the connection closes (the body may be unread)."""
    body = json.dumps({"detail": detail}).encode()
    extra = {k.lower(): v for k, v in (headers or {}).items()} | {"connection": "close"}
    raw = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *((k.encode(), v.encode()) for k, v in extra.items()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


# ---- authentication before the body ------------------------------------------------------------
Check = Callable[[Request], None]


def before_body(check: Check) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Mark an endpoint so that ``check(request)`` runs before its body is read."""

    def mark(endpoint: Callable[..., Any]) -> Callable[..., Any]:
        endpoint.before_body = check  # type: ignore[attr-defined]
        return endpoint

    return mark


class GuardedRoute(APIRoute):
    """A route that runs its endpoint's ``before_body`` check before FastAPI parses the body
    (FastAPI reads forms and JSON before it solves any dependency)."""

    def get_route_handler(self) -> Callable[[Request], Any]:
        handler = super().get_route_handler()
        check: Check | None = getattr(self.endpoint, "before_body", None)
        if check is None:
            return handler

        async def guarded(request: Request) -> Any:
            check(request)
            return await handler(request)

        return guarded


# ---- failed authentications ------------------------------------------------------------------
class FailureLimiter:
    """At most ``max_failures`` failed authentications per client address in ``window``
    seconds; past that the address is refused (429) until its oldest failure is ``window`` old.

    ``clock`` is injectable so tests advance time without sleeping."""

    def __init__(
        self,
        max_failures: int,
        window: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_addresses: int = 10_000,
    ) -> None:
        self.max_failures = max_failures
        self.window = window
        self.clock = clock
        self.max_addresses = max_addresses
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()  # handlers run on the event loop and on worker threads

    def _recent(self, address: str) -> deque[float]:
        times = self._failures.get(address)
        if times is None:
            return deque()
        cutoff = self.clock() - self.window
        while times and times[0] <= cutoff:
            times.popleft()
        if not times:
            del self._failures[address]
        return times

    def retry_after(self, address: str) -> float:
        """Seconds until ``address`` may try again; 0 if it may now."""
        with self._lock:
            times = self._recent(address)
            if len(times) < self.max_failures:
                return 0.0
            return max(0.0, times[0] + self.window - self.clock())

    def failed(self, address: str) -> None:
        """Count one failed authentication from ``address``."""
        with self._lock:
            times = self._recent(address)
            self._failures[address] = times
            self._failures.move_to_end(address)
            times.append(self.clock())
            while len(self._failures) > self.max_addresses:  # bounded however many try
                self._failures.popitem(last=False)
