"""How the service reads a ``FederationSpec``: the tutorial's form, JSON, and what it stored.

The spec itself is ``fedfuse.recipes.FederationSpec``; this module holds only the service's
defaults (the tutorial's: 2 parties, 5 rounds, a 600 s round deadline) and the checks that
belong to a service (a zoo model needs its shapes; the parties are remote, so the backend
is the service's own).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fedfuse._settings import SettingsError
from fedfuse.recipes import FederationSpec, coerce_flat

__all__ = [
    "SERVICE_DEFAULTS",
    "SpecError",
    "check_spec",
    "spec_from_form",
    "spec_from_json",
    "stored_spec",
]

#: What a federation created on the service starts from (the Model Fusion tutorial's values).
SERVICE_DEFAULTS = FederationSpec.from_flat(
    {"num_parties": 2, "rounds": 5, "round_timeout": 600.0, "federated_eval": True}
)


class SpecError(SettingsError):
    """A federation setting is missing or out of range; the message names it."""


def spec_from_form(fields: Mapping[str, str]) -> FederationSpec:
    """The tutorial's flat form fields (strings) as a spec on the service's defaults."""
    try:
        return FederationSpec.from_flat(coerce_flat(fields), base=SERVICE_DEFAULTS)
    except (SettingsError, TypeError) as exc:
        raise SpecError(str(exc)) from None


def spec_from_json(document: Mapping[str, Any]) -> FederationSpec:
    """A nested JSON spec (``POST /v1/federations``) on the service's defaults."""
    try:
        return SERVICE_DEFAULTS.replace(**document)
    except (SettingsError, TypeError) as exc:
        raise SpecError(str(exc)) from None


def stored_spec(config: Mapping[str, Any]) -> FederationSpec:
    """The spec a federation was stored with (nested; flat for federations stored before the
    nested spec existed)."""
    if any(isinstance(v, Mapping) and k in FederationSpec.parts() for k, v in config.items()):
        return FederationSpec.from_dict(config)
    legacy = {k: v for k, v in config.items() if v is not None}
    return FederationSpec.from_flat(legacy, base=SERVICE_DEFAULTS)


def check_spec(spec: FederationSpec) -> None:
    """``SpecError`` naming the first bad setting, including a zoo model without shapes."""
    try:
        spec.validate()
    except (SettingsError, TypeError) as exc:
        raise SpecError(str(exc)) from None
    if spec.backend.name != "local":
        raise SpecError(
            f"backend: the service's parties are remote processes; backend {spec.backend.name!r} "
            "is for simulations (fedfuse simulate)"
        )
    model = spec.model
    if model.name is not None:
        if not model.input_shape:
            raise SpecError("model.input_shape is required with a zoo model, e.g. 1,28,28")
        if not model.num_classes:
            raise SpecError("model.num_classes (an integer >= 2) is required with a zoo model")
