"""The operator's settings of one service."""

from __future__ import annotations

from dataclasses import dataclass, field

from fedfuse.weights import SizeLimits

__all__ = ["ServiceSettings"]


@dataclass(frozen=True)
class ServiceSettings:
    """Operator settings of one service.

    Args:
        max_upload_bytes: the most bytes one request body may carry (counted as they arrive).
        read_timeout: seconds a request body may go without a byte before the request ends (408).
        api_key: required to create and control federations, and to read them (a party token
            of a federation reads that federation too). ``None``: no key (loopback use).
        allowed_hosts: names besides loopback ones and the served address that ``Host`` and
            ``Origin`` may carry (``"*"``: any).
        max_json_model_bytes: ``/train`` puts ``global_model`` in its JSON answer only up to
            this many bytes of weights; larger models are downloaded as safetensors.
        limits: caps on what one uploaded model or data file may make the service allocate.
        max_auth_failures, auth_window: failed joins or authentications one client address may
            make per window (seconds) before it is refused with 429.
    """

    data_dir: str = "fedfuse-data"
    max_upload_bytes: int = 256 * 1024 * 1024
    allowed_import_paths: tuple[str, ...] = ()
    liveness: float = 30.0
    max_poll_wait: float = 30.0
    api_key: str | None = None
    read_timeout: float = 30.0
    allowed_hosts: tuple[str, ...] = ()
    max_json_model_bytes: int = 16 * 1024 * 1024
    limits: SizeLimits = field(default_factory=SizeLimits)
    max_auth_failures: int = 20
    auth_window: float = 60.0
