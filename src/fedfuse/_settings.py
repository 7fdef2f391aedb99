"""Plain-data settings: built from mappings and TOML/JSON files, checked from one table.

Every part of a federation's spec (``TrainConfig``, ``FusionSpec``, ``DataSpec``, ``Sampling``,
``Aggregation``...) is a frozen dataclass with this mixin. As in scikit-learn, values are stored
as given and checked when they are used: ``check()`` walks the class's ``constraints`` table (one
entry per field, a list of the things the value may be) and then ``check_together()``, for rules
that span fields. A part nested in another is checked with it, and errors name the full path
(``training.learning_rate must be a number > 0, got -1``).

Adding a setting is one field with its default and one line in the table.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from numbers import Integral
from pathlib import Path
from typing import Any, ClassVar, Self

__all__ = ["Interval", "Options", "Rule", "Settings", "SettingsError", "read_settings_file"]


class SettingsError(ValueError):
    """A setting is unknown, missing or out of range; the message names it by its path."""


@dataclass(frozen=True)
class Interval:
    """A number of ``kind`` (``Integral`` or ``Real``) within ``low``/``high`` (``None``: open).

    ``closed`` says which ends belong to the interval: ``both``, ``left``, ``right``, ``neither``.
    Booleans are never numbers here, and a real must be finite.
    """

    kind: type
    low: float | None = None
    high: float | None = None
    closed: str = "both"

    def accepts(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, self.kind):
            return False
        if isinstance(value, float) and not math.isfinite(value):
            return False
        left = self.closed in ("both", "left")
        right = self.closed in ("both", "right")
        if self.low is not None and (value < self.low or (value == self.low and not left)):
            return False
        return not (
            self.high is not None and (value > self.high or (value == self.high and not right))
        )

    def __str__(self) -> str:
        what = "an integer" if self.kind is Integral else "a number"

        def bound(sign: str, value: float) -> str:
            return f"{sign} {int(value) if self.kind is Integral else format(value, 'g')}"

        left = ">=" if self.closed in ("both", "left") else ">"
        right = "<=" if self.closed in ("both", "right") else "<"
        low = None if self.low is None else bound(left, self.low)
        high = None if self.high is None else bound(right, self.high)
        return " ".join([what, " and ".join(b for b in (low, high) if b)]).strip()


@dataclass(frozen=True)
class Options:
    """One of ``values`` (compared with ``==``; the type must match too)."""

    values: tuple[Any, ...]

    def accepts(self, value: Any) -> bool:
        return any(type(value) is type(v) and value == v for v in self.values)

    def __str__(self) -> str:
        return "one of " + ", ".join(repr(v) for v in self.values)


@dataclass(frozen=True)
class Rule:
    """Anything ``test(value)`` accepts; ``description`` says what that is."""

    test: Callable[[Any], bool]
    description: str | Callable[[], str]

    def accepts(self, value: Any) -> bool:
        return bool(self.test(value))

    def __str__(self) -> str:  # a callable: what is allowed when the error is raised
        return self.description() if callable(self.description) else self.description


def _accepts(constraint: Any, value: Any) -> bool:
    if constraint is None:
        return value is None
    if isinstance(constraint, type):
        return isinstance(value, constraint) and not (
            isinstance(value, bool) and constraint is not bool
        )
    return constraint.accepts(value)


def _describe(constraint: Any) -> str:
    if constraint is None:
        return "None"
    if isinstance(constraint, type):
        return {bool: "true or false", str: "a string", dict: "a table (mapping)"}.get(
            constraint, constraint.__name__
        )
    return str(constraint)


class Settings:
    """A mixin for frozen dataclasses of settings (see the module docstring).

    ``kind`` names the settings in errors and the TOML table they may sit under;
    ``constraints`` maps each field to the list of things its value may be (an ``Interval``,
    ``Options``, a ``Rule``, a type, or ``None`` for "may be None"). Fields that are themselves
    ``Settings`` are checked recursively and need no entry.
    """

    kind: ClassVar[str] = "settings"
    constraints: ClassVar[Mapping[str, list[Any]]] = {}

    # ---- building --------------------------------------------------------------------------
    @classmethod
    def parts(cls) -> dict[str, type[Settings]]:
        """The fields that are nested settings, by name."""
        return {
            f.name: f.default_factory  # type: ignore[misc]
            for f in dataclasses.fields(cls)  # type: ignore[arg-type]
            if isinstance(f.default_factory, type) and issubclass(f.default_factory, Settings)
        }

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], *, path: str = "") -> Self:
        """Build from a (nested) mapping; unknown keys are an error listing the known ones."""
        where = path.rstrip(".") or cls.kind
        if not isinstance(values, Mapping):
            raise SettingsError(f"{where} must be a table (mapping), got {type(values).__name__}")
        known = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
        unknown = sorted(set(values) - set(known), key=str)
        if unknown:
            raise SettingsError(f"unknown {where} setting(s) {unknown}; known: {', '.join(known)}")
        parts = cls.parts()
        kwargs = {}
        for name, value in values.items():
            part = parts.get(name)
            if part is not None and not isinstance(value, part):
                value = part.from_dict(value, path=f"{path}{name}.")
            kwargs[name] = value
        return cls(**kwargs)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> Self:
        """Read a ``.toml`` or ``.json`` file: its top level (or its ``[<kind>]`` table)."""
        data = read_settings_file(path)
        return cls.from_dict(data.get(cls.kind, data))

    def to_dict(self) -> dict[str, Any]:
        """Plain nested data (what a TOML/JSON file or the REST API holds)."""
        return {
            f.name: _plain(getattr(self, f.name))
            for f in dataclasses.fields(self)  # type: ignore[arg-type]
        }

    def replace(self, **changes: Any) -> Self:
        """A copy with ``changes`` (nested parts may be given as mappings of their changes)."""
        parts = self.parts()
        values = dict(self.__dict__)
        for name, value in changes.items():
            if name in parts and isinstance(value, Mapping):
                value = getattr(self, name).replace(**value)
            values[name] = value
        return self.from_dict(values)

    # ---- checking --------------------------------------------------------------------------
    def check(self, path: str = "") -> None:
        """Raise ``SettingsError`` naming the first setting that breaks the constraints table
        or a rule of ``check_together``; nested parts are checked too."""
        for name, allowed in self.constraints.items():
            value = getattr(self, name)
            if not any(_accepts(c, value) for c in allowed):
                what = " or ".join(_describe(c) for c in allowed)
                raise SettingsError(f"{path}{name} must be {what}, got {value!r}")
        for name in self.parts():
            getattr(self, name).check(f"{path}{name}.")
        for problem in self.check_together():
            raise SettingsError(f"{path}{problem}")

    def check_together(self) -> Iterable[str]:
        """Problems that involve several fields, each as ``"<field> ..."`` text."""
        return ()


def _plain(value: Any) -> Any:
    if isinstance(value, Settings):
        return value.to_dict()
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def read_settings_file(path: str | os.PathLike, what: str = "settings") -> dict[str, Any]:
    """A TOML (``.toml``) or JSON (anything else) file's top-level table; at most 1 MiB.
    ``what`` names the file in errors (``no spec file at ...``)."""
    path = Path(path)
    if not path.is_file():
        raise SettingsError(f"no {what} file at {path}")
    if path.stat().st_size > 1 << 20:
        raise SettingsError(f"{path} is larger than 1 MiB; a {what} file is small")
    try:
        if path.suffix == ".toml":
            with open(path, "rb") as f:
                data = tomllib.load(f)
        else:
            data = json.loads(path.read_text())
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        kind = path.suffix.lstrip(".") or "JSON"
        raise SettingsError(f"{path} is not valid {kind}: {exc}") from None
    if not isinstance(data, dict):
        raise SettingsError(f"{path} must hold a table (mapping) at its top level")
    return data
