"""Small facts about network addresses, shared by the service's and the nodes' listeners."""

from __future__ import annotations

import ipaddress

__all__ = ["is_loopback"]


def is_loopback(host: str) -> bool:
    """Whether listening on ``host`` is reachable from this machine only.

    A host name other than ``localhost`` (or ``""``, every interface) is not provably loopback.
    """
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
