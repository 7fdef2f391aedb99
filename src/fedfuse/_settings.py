"""Plain-data settings built from mappings and TOML files, checked by name (used by any layer)."""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from typing import Any, ClassVar, Self

__all__ = ["Settings"]


class Settings:
    """A mixin for frozen dataclasses of settings.

    ``kind`` names both the TOML table the settings may sit under and the settings in errors.
    Values are stored as given; checking them is the job of whoever uses them.
    """

    kind: ClassVar[str] = "settings"

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Self:
        """Build from a mapping; unknown keys are an error that lists the known ones."""
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"unknown {cls.kind} setting(s) {unknown}; "
                f"known settings: {', '.join(sorted(known))}"
            )
        return cls(**values)

    @classmethod
    def from_toml(cls, path: str | os.PathLike) -> Self:
        """Read a TOML file whose top-level keys (or ``[<kind>]`` table) are the fields."""
        with open(path, "rb") as f:
            data = tomllib.load(f)
        return cls.from_dict(data.get(cls.kind, data))

    def replace(self, **changes: Any) -> Self:
        """A copy with ``changes``, checked like ``from_dict``."""
        return self.from_dict({**dataclasses.asdict(self), **changes})  # type: ignore[call-overload]
