"""The FastAPI application: the Model Fusion REST API, the party protocol and the ``/v1`` API.

Tutorial endpoints (unchanged from IBM's Model Fusion API): ``POST /start-aggregator``,
``POST /start-party``, ``POST /train``, ``POST /stop``. Everything else is versioned under
``/v1``. Errors are JSON ``{"detail": "..."}`` with a 4xx status that says what was wrong.
The routes live in small modules (``_routes_fusion``, ``_routes_federations``,
``_routes_party``, ``_dashboard``: the live page at ``/``); this one assembles them with the
boundary, the error handlers and the federations' recovery at start.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from anyio import to_thread
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from fedfuse.runtime import UnexpectedReplyError
from fedfuse.service._boundary import Boundary, FailureLimiter, GuardedRoute
from fedfuse.service._config import ServiceSettings
from fedfuse.service._dashboard import dashboard_routes
from fedfuse.service._dashboard_view import ServiceSource
from fedfuse.service._errors import Conflict, NotFound, Unauthorized
from fedfuse.service._guards import Guards
from fedfuse.service._http import RequestTooLarge
from fedfuse.service._manager import Manager
from fedfuse.service._routes_federations import federation_routes
from fedfuse.service._routes_fusion import fusion_routes
from fedfuse.service._routes_party import party_routes

__all__ = ["ServiceSettings", "create_app"]

log = logging.getLogger("fedfuse.service")

_ERRORS = (
    (NotFound, 404),
    (Unauthorized, 401),
    (Conflict, 409),
    (UnexpectedReplyError, 409),
    (RequestTooLarge, 413),
    (ValueError, 400),
)


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
    guards = Guards(settings, manager, limiter)

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

    def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        # the errors without the input they quote: a deeply nested or huge body is not
        # echoed back (a client could not even decode the answer)
        errors = [
            {
                "loc": list(e.get("loc", ())),
                "msg": str(e.get("msg", ""))[:500],
                "type": e.get("type"),
            }
            for e in exc.errors()[:20]
        ]
        return JSONResponse({"detail": errors}, status_code=422)

    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(Exception, unexpected)
    app.include_router(fusion_routes(settings, manager, guards))
    app.include_router(federation_routes(manager, guards))
    app.include_router(party_routes(settings, manager, guards))
    app.include_router(dashboard_routes(ServiceSource(manager), guards.viewer, guards))

    @app.get("/healthz", tags=["service"])
    async def healthz() -> dict[str, str]:  # on the event loop: answers however busy threads are
        return {"status": "ok"}

    return app
