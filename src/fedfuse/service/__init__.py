"""The aggregator service: Model Fusion REST API, party protocol, SQLite store."""

from fedfuse.service._app import ServiceSettings, create_app
from fedfuse.service._background import background_service
from fedfuse.service._boundary import FailureLimiter
from fedfuse.service._errors import Conflict, NotFound, StorageError, Unauthorized
from fedfuse.service._manager import Manager
from fedfuse.service._runner import FederationRunner
from fedfuse.service._spec import SERVICE_DEFAULTS, SpecError
from fedfuse.service._store import Store, StoreError

__all__ = [
    "SERVICE_DEFAULTS",
    "Conflict",
    "FailureLimiter",
    "FederationRunner",
    "Manager",
    "NotFound",
    "ServiceSettings",
    "SpecError",
    "StorageError",
    "Store",
    "StoreError",
    "Unauthorized",
    "background_service",
    "create_app",
]
