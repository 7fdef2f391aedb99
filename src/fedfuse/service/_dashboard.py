"""The dashboard's routes: pages, assets, the live event stream and the login form.

* ``GET /`` and ``GET /dashboard``: the runs; ``GET /dashboard/federations/{fid}``: one run,
  as tables rendered here (JavaScript off) that ``dashboard.js`` turns into live charts.
* ``GET /v1/federations/{fid}/events``: server-sent events (see ``_dashboard_feed``).
* ``GET /dashboard/assets/{name}``: the script, styles and the vendored uPlot.
* ``GET/POST /dashboard/login``, ``POST /dashboard/logout``: the cookie a browser uses in
  place of an ``Authorization`` header (the service's only; ``fedfuse dashboard`` is open).

Who may read is the read API's rule (``Guards.viewer``). Every answer carries
``Content-Security-Policy: default-src 'self'`` and ``nosniff``: the pages run only this
origin's files, and nothing is fetched from elsewhere.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, quote

from anyio import to_thread
from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi.responses import (
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)

from fedfuse.service._boundary import Boundary
from fedfuse.service._dashboard_feed import Feeds
from fedfuse.service._dashboard_page import (
    ASSETS,
    asset,
    index_page,
    login_page,
    message_page,
    run_page,
)
from fedfuse.service._dashboard_view import Source
from fedfuse.service._errors import NotFound, Unauthorized
from fedfuse.service._guards import DASHBOARD_COOKIE, Guards, cookie_value

__all__ = ["dashboard_app", "dashboard_routes"]

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; base-uri 'none'; frame-ancestors 'none'; "
    "form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",  # no-referrer would make a form's Origin "null"
}
MAX_LOGIN_BYTES = 4096
_FID = re.compile(r"[0-9a-f]{32}")


def _secure(response: Response) -> Response:
    response.headers.update(SECURITY_HEADERS)
    return response


def _html(text: str, status: int = 200) -> Response:
    return _secure(HTMLResponse(text, status, headers={"Cache-Control": "no-store"}))


def _json_error(status: int, detail: str, headers: dict[str, str] | None = None) -> Response:
    return _secure(JSONResponse({"detail": detail}, status, headers=headers))


def _last_event_id(value: str | None) -> int | None:
    """The round a reconnecting browser saw last; ``ValueError`` naming the problem."""
    if value is None:
        return None
    if not value.isascii() or not value.isdigit() or len(value) > 9:
        raise ValueError(
            f"Last-Event-ID must be the number of a round (up to 9 digits), got {value[:40]!r}"
        )
    return int(value)


def dashboard_routes(
    source: Source,
    viewer: Callable[[Request], None],
    guards: Guards | None = None,
    feeds: Feeds | None = None,
) -> APIRouter:
    """The dashboard over ``source``; ``viewer(request)`` raises ``Unauthorized`` for a
    reader it refuses. ``guards``: the service's, for the login form (none: no login)."""
    feeds = feeds or Feeds(source)
    router = APIRouter()

    def page(request: Request, render: Callable[[], str]) -> Response:
        try:
            viewer(request)
        except Unauthorized as exc:
            federation = request.path_params.get("fid", "")
            return _html(
                login_page(str(exc), federation if _FID.fullmatch(federation) else ""), 401
            )
        except HTTPException as exc:  # too many failed attempts
            return _json_error(exc.status_code, str(exc.detail), exc.headers)
        try:
            return _html(render())
        except NotFound as exc:
            return _html(message_page("not found", str(exc)), 404)

    @router.get("/", include_in_schema=False)
    @router.get("/dashboard", tags=["dashboard"])
    def dashboard_index(request: Request) -> Response:
        """The runs, each linked to its live page (HTML)."""
        return page(request, lambda: index_page(source.runs()))

    @router.get("/dashboard/federations/{fid}", tags=["dashboard"])
    def dashboard_run(fid: str, request: Request) -> Response:
        """One run's live page (HTML; tables without JavaScript)."""
        return page(request, lambda: run_page(source.view(fid)))

    @router.get("/favicon.ico", include_in_schema=False)
    def favicon() -> Response:  # browsers ask for it; the dashboard has none
        return _secure(Response(status_code=204))

    @router.get("/dashboard/assets/{name}", include_in_schema=False)
    def dashboard_asset(name: str) -> Response:
        if name not in ASSETS:
            return _json_error(404, f"no dashboard asset {name[:80]!r}")
        data, _ = asset(name)
        cache = {"Cache-Control": "public, max-age=31536000, immutable"}
        return _secure(Response(data, media_type=ASSETS[name], headers=cache))

    # not in the OpenAPI schema: a generated client (or fuzzer) would wait on it for 30 s
    @router.get("/v1/federations/{fid}/events", include_in_schema=False)
    async def federation_events(fid: str, request: Request) -> Response:
        """Server-sent events: a snapshot, then each new round and party-state change.

        Authorization: the read API's (header or the dashboard's login cookie)."""
        try:
            await to_thread.run_sync(viewer, request)
            last_id = _last_event_id(request.headers.get("last-event-id"))
            view = await to_thread.run_sync(source.view, fid)
        except Unauthorized as exc:
            return _json_error(401, str(exc), {"WWW-Authenticate": "Bearer"})
        except HTTPException as exc:
            return _json_error(exc.status_code, str(exc.detail), exc.headers)
        except NotFound as exc:
            return _json_error(404, str(exc))
        except ValueError as exc:
            return _json_error(400, str(exc))
        if feeds.full(fid):
            return _json_error(503, "too many open dashboards on this run", {"Retry-After": "30"})
        headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
        stream = feeds.stream(view, last_id)
        return _secure(StreamingResponse(stream, media_type="text/event-stream", headers=headers))

    if guards is not None:
        _login_routes(router, guards)
    return router


def _login_routes(router: APIRouter, guards: Guards) -> None:
    @router.get("/dashboard/login", tags=["dashboard"])
    def login_form(federation: str = "") -> Response:
        return _html(login_page("", federation if _FID.fullmatch(federation) else ""))

    @router.post("/dashboard/login", tags=["dashboard"])
    async def login(request: Request) -> Response:
        """Check an API key or party token (form field ``key``; ``federation`` for a party
        token) and keep it in an HttpOnly, SameSite=Strict cookie."""
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_LOGIN_BYTES:
                return _json_error(413, f"the login form takes at most {MAX_LOGIN_BYTES} bytes")
        try:
            form = parse_qs(body.decode(), max_num_fields=4)
        except (UnicodeError, ValueError):
            return _json_error(400, "the login form must be URL-encoded text")
        key = (form.get("key") or [""])[0]
        fid = (form.get("federation") or [""])[0].strip()
        if fid and not _FID.fullmatch(fid):
            return _html(login_page("a federation id is 32 hexadecimal characters"), 400)
        try:
            await to_thread.run_sync(guards.login, request, key, fid or None)
        except Unauthorized as exc:
            return _html(login_page(str(exc), fid), 401)
        except HTTPException as exc:
            return _json_error(exc.status_code, str(exc.detail), exc.headers)
        target = f"/dashboard/federations/{quote(fid)}" if fid else "/dashboard"
        answer = _secure(RedirectResponse(target, 303))
        if guards.settings.api_key is None:  # an open service: nothing to remember
            return answer
        answer.set_cookie(
            DASHBOARD_COOKIE,
            cookie_value(key),
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            path="/",
        )
        return answer

    @router.post("/dashboard/logout", tags=["dashboard"])
    def logout() -> Response:
        answer = _secure(RedirectResponse("/dashboard/login", 303))
        answer.delete_cookie(DASHBOARD_COOKIE, path="/", httponly=True, samesite="strict")
        return answer


def dashboard_app(source: Source, **feed_options: Any) -> FastAPI:
    """A read-only app serving only the dashboard over ``source`` (``fedfuse dashboard``):
    no authentication, so serve it on loopback; the service's Host/Origin checks apply."""
    app = FastAPI(title="fedfuse dashboard", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(Boundary, max_body_bytes=MAX_LOGIN_BYTES, read_timeout=30.0)
    app.include_router(
        dashboard_routes(source, lambda request: None, feeds=Feeds(source, **feed_options))
    )
    return app
