"""Run the service inside this process, on a background thread (notebooks, examples, tests)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn

from fedfuse.service._app import ServiceSettings, create_app
from fedfuse.service._boundary import FailureLimiter

__all__ = ["background_service"]


@contextmanager
def background_service(
    settings: ServiceSettings | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    limiter: FailureLimiter | None = None,
) -> Iterator[str]:
    """Serve on ``host:port`` (a free port if 0) while the ``with`` block runs; yields the URL.

    On leaving, requests still open (e.g. waiting ``/train`` calls) get 5 seconds to end."""
    if port == 0:
        with socket.socket() as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings, limiter=limiter),
            host=host,
            port=port,
            log_level="warning",
            timeout_graceful_shutdown=5,
        )
    )
    thread = threading.Thread(target=server.run, daemon=True, name="fedfuse-service")
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the service did not start on {host}:{port}")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
