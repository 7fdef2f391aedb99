"""The aggregator service: Model Fusion REST API, party protocol, SQLite store."""

from fedfuse.service._app import ServiceSettings, create_app
from fedfuse.service._background import background_service
from fedfuse.service._manager import Conflict, Manager, NotFound, Unauthorized
from fedfuse.service._spec import FederationSpec, SpecError
from fedfuse.service._store import Store

__all__ = [
    "Conflict",
    "FederationSpec",
    "Manager",
    "NotFound",
    "ServiceSettings",
    "SpecError",
    "Store",
    "Unauthorized",
    "background_service",
    "create_app",
]
