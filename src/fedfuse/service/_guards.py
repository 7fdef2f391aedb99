"""Who may ask: the checks the routes run before any body is read (see ``GuardedRoute``).

Creating and controlling federations needs the API key (if the service has one); reading a
federation, the key or a party token of it; the party protocol, a party token of the
federation in the path. Failed checks are counted per client address (``FailureLimiter``).
The dashboard reads like the read API; a browser's ``EventSource`` cannot send a header, so
it may carry the same key or token in the dashboard's HttpOnly cookie instead (``viewer``).
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Callable
from typing import Any

from fastapi import Request

from fedfuse.service._boundary import FailureLimiter, Refused, same_secret
from fedfuse.service._config import ServiceSettings
from fedfuse.service._errors import NotFound, Unauthorized
from fedfuse.service._manager import Manager

__all__ = ["DASHBOARD_COOKIE", "Guards", "bearer", "client_address", "cookie_value"]

#: The cookie the dashboard's login sets: the key or token, base64url-encoded.
DASHBOARD_COOKIE = "fedfuse_dashboard"


def bearer(authorization: str | None) -> str:
    if not authorization or not authorization.startswith("Bearer "):
        raise Unauthorized("missing 'Authorization: Bearer <token>' header")
    return authorization[len("Bearer ") :].strip()


def cookie_value(token: str) -> str:
    """The dashboard cookie's value for ``token`` (cookie-safe characters only)."""
    return base64.urlsafe_b64encode(token.encode()).decode()


def _dashboard_token(request: Request) -> str:
    """The ``Authorization`` header's token, else the dashboard cookie's."""
    header = request.headers.get("authorization")
    cookie = request.cookies.get(DASHBOARD_COOKIE)
    if header is not None or not cookie:
        return bearer(header)
    try:
        return base64.urlsafe_b64decode(cookie.encode()).decode()
    except (binascii.Error, UnicodeError, ValueError):
        raise Unauthorized(f"the {DASHBOARD_COOKIE} cookie is not one the login set") from None


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


class Guards:
    """The before-body checks of one app (``settings``, ``manager``, ``limiter``)."""

    def __init__(
        self, settings: ServiceSettings, manager: Manager, limiter: FailureLimiter
    ) -> None:
        self.settings, self.manager, self.limiter = settings, manager, limiter

    def counted(self, request: Request, check: Callable[[], Any]) -> Any:
        """Run ``check``; an address with too many failed checks is refused (429) first."""
        address = client_address(request)
        wait = self.limiter.retry_after(address)
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
            self.limiter.failed(address)
            raise

    def _is_api_key(self, token: str) -> bool:
        return self.settings.api_key is not None and same_secret(token, self.settings.api_key)

    def control(self, request: Request) -> None:
        """Creating and controlling federations: the API key, if the service has one."""
        if self.settings.api_key is None:
            return

        def check() -> None:
            if not self._is_api_key(bearer(request.headers.get("authorization"))):
                raise Unauthorized("invalid API key")

        self.counted(request, check)

    def reader(self, request: Request) -> None:
        """Reading a federation: the API key or a party token of that federation."""
        self._read(request, lambda: bearer(request.headers.get("authorization")))

    def viewer(self, request: Request) -> None:
        """The dashboard: as ``reader``, with the token from the header or the login cookie."""
        self._read(request, lambda: _dashboard_token(request))

    def login(self, request: Request, token: str, fid: str | None) -> None:
        """The dashboard's login form: ``token`` must read ``fid`` (all of them: the API key)."""
        if self.settings.api_key is not None:
            self.counted(request, lambda: self._may_read(token, fid))

    def _read(self, request: Request, token_of: Callable[[], str]) -> None:
        if self.settings.api_key is not None:
            fid = request.path_params.get("fid")
            self.counted(request, lambda: self._may_read(token_of(), fid))

    def _may_read(self, token: str, fid: str | None) -> None:
        if self._is_api_key(token):
            return
        if fid is None:
            raise Unauthorized("invalid API key")
        try:
            self.manager.party_of(fid, token)
        except (Unauthorized, NotFound):  # no hint whether the federation exists
            raise Unauthorized("invalid API key or party token") from None

    def party(self, request: Request) -> None:
        """The party protocol: a party token of the federation in the path."""
        fid = request.path_params["fid"]
        token = bearer(request.headers.get("authorization"))
        request.state.party_id = self.counted(
            request, lambda: self.manager.authenticate(fid, token)
        )

    def joining(self, request: Request) -> None:
        """A join is checked once its body is read; an address with failed joins waits."""
        self.counted(request, lambda: None)
