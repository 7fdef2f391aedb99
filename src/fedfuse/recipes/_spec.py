"""One federation spec: nested plain data, the same from Python, a TOML/JSON file and REST.

A ``FederationSpec`` is composed of the parts each layer reads (see ``fedfuse._settings``)::

    rounds, num_parties, seed, auto_start
    training     TrainConfig      fedfuse.models    how parties train, and reply
    fusion       FusionSpec       fedfuse.fusion    name + the transform's own parameters
    sampling     Sampling         fedfuse.federation  parties per round / in flight
    aggregation  Aggregation      fedfuse.federation  sync or buffered, quorum, deadline, bounds
    model        ModelSpec        fedfuse.models    zoo name, model type, shapes
    data         DataSpec         fedfuse.data      dataset and partition (simulations)
    evaluation   EvaluationSpec   here              federated / centralized evaluation
    use          UseSpec          here              one of the Model Fusion API's three uses
    privacy      Privacy          fedfuse.federation  differential privacy and its budget
    secure       SecureAggregation fedfuse.federation  SecAgg+: the aggregator sees only sums
    backend      Backend          fedfuse.runtime   where a simulation's parties train

As TOML::

    rounds = 10
    [training]
    learning_rate = 0.05
    [fusion]
    name = "fedadam"
    params = { server_learning_rate = 0.01 }

``FederationSpec.from_flat`` maps the flat names of the tutorial's form (``fusion_algorithm``,
``learning_rate``, ``round_timeout``...) and of ``simulate(**kwargs)`` onto the spec: this is
the one place that does. Flat names are derived from the parts' fields, so a new field of a
part is a new flat name too.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from numbers import Integral
from typing import Any, ClassVar

from fedfuse._settings import Interval, Options, Settings, SettingsError, read_settings_file
from fedfuse.data import DataSpec, partition_params
from fedfuse.federation import (
    Aggregation,
    Privacy,
    Sampling,
    SecureAggregation,
    privacy_problem,
    sampled_count,
)
from fedfuse.fusion import FusionSpec, fusion_params
from fedfuse.models import ModelSpec, TrainConfig
from fedfuse.recipes._ensemble import compare_ensemble
from fedfuse.recipes._personalize import compare_personalization
from fedfuse.recipes._uses import USES
from fedfuse.runtime import Backend

__all__ = [
    "EvaluationSpec",
    "FederationSpec",
    "UseSpec",
    "coerce_flat",
    "field_types",
    "flat_names",
    "flat_table",
    "load_spec",
    "parse_json_object",
    "use_params",
]

MAX_PARTIES = 1_000_000

_USE_RECIPES = {"personalize": compare_personalization, "ensemble": compare_ensemble}
_RECIPE_ARGS = {"fed", "model_fn", "config", "rounds", "sampling", "seed"}


def use_params(use: str) -> tuple[str, ...]:
    """The parameters use ``use`` takes, by its recipe's keyword names."""
    recipe = _USE_RECIPES.get(use)
    if recipe is None:
        return ()
    return tuple(p for p in inspect.signature(recipe).parameters if p not in _RECIPE_ARGS)


@dataclass(frozen=True)
class EvaluationSpec(Settings):
    """``federated``: every party evaluates each new global model on its own test split.
    ``piggyback``: with ``federated``, the next round's training tasks carry that evaluation
    instead of a second broadcast of the model (round r's metrics then come from round r+1's
    sampled parties; see ``fedfuse.federation.Federation``'s ``piggyback_eval``).
    ``centralized``: a simulation also trains the same model on the pooled data, as a baseline
    curve."""

    kind: ClassVar[str] = "evaluation"
    constraints: ClassVar[dict[str, list[Any]]] = {
        "federated": [bool],
        "piggyback": [bool],
        "centralized": [bool],
    }

    federated: bool = True
    piggyback: bool = False
    centralized: bool = True


@dataclass(frozen=True)
class UseSpec(Settings):
    """One of the Model Fusion API's three uses, or plain aggregation (see
    ``fedfuse.recipes.run_use``); ``params`` are the recipe's own keyword arguments
    (``personal``, ``finetune_epochs`` for ``personalize``; ``weighting``, ``distill_epochs`` for
    ``ensemble``)."""

    kind: ClassVar[str] = "use"
    constraints: ClassVar[dict[str, list[Any]]] = {"name": [Options(USES)], "params": [dict]}

    name: str = "aggregate"
    params: dict[str, Any] = field(default_factory=dict)

    def check_together(self) -> list[str]:
        unknown = sorted(set(self.params) - set(use_params(self.name)))
        if unknown:
            allowed = ", ".join(use_params(self.name)) or "(none)"
            return [f"params: use {self.name!r} takes {allowed}; not {unknown}"]
        return []


@dataclass(frozen=True)
class FederationSpec(Settings):
    """Everything a federation is started with (see the module docstring)."""

    kind: ClassVar[str] = "federation"
    constraints: ClassVar[dict[str, list[Any]]] = {
        "rounds": [Interval(Integral, 1, 100_000)],
        "num_parties": [Interval(Integral, 1, MAX_PARTIES)],
        "seed": [Interval(Integral, 0, 2**63 - 1)],
        "auto_start": [bool],
    }

    rounds: int = 20
    num_parties: int = 10
    seed: int = 0
    auto_start: bool = False
    training: TrainConfig = field(default_factory=TrainConfig)
    fusion: FusionSpec = field(default_factory=FusionSpec)
    sampling: Sampling = field(default_factory=Sampling)
    aggregation: Aggregation = field(default_factory=Aggregation)
    model: ModelSpec = field(default_factory=ModelSpec)
    data: DataSpec = field(default_factory=DataSpec)
    evaluation: EvaluationSpec = field(default_factory=EvaluationSpec)
    use: UseSpec = field(default_factory=UseSpec)
    privacy: Privacy = field(default_factory=Privacy)
    secure: SecureAggregation = field(default_factory=SecureAggregation)
    backend: Backend = field(default_factory=Backend)

    def check_together(self) -> list[str]:
        problems = []
        problem = privacy_problem(
            self.fusion,
            self.privacy,
            self.secure,
            self.sampling,
            self.aggregation,
            self.training.compression,
        )
        if problem is not None:
            problems.append(problem)
        if self.backend.name != "local" and self.use.name != "aggregate":
            problems.append(
                f"backend: use {self.use.name!r} trains in this process; backend "
                f"{self.backend.name!r} is for use 'aggregate'"
            )
        if self.aggregation.quorum > self.num_parties:
            problems.append(
                f"aggregation.quorum={self.aggregation.quorum} exceeds "
                f"num_parties={self.num_parties}"
            )
        try:
            per_step = self.aggregation.updates_per_step or sampled_count(
                self.num_parties, self.sampling.fraction, self.sampling.count
            )
            self.fusion.check_size(per_step)
        except ValueError as exc:
            problems.append(f"fusion: {exc}")
        try:
            self.model.check_optimizer(self.training.optimizer)
        except ValueError as exc:
            problems.append(f"training.optimizer: {exc}")
        return problems

    def validate(self) -> None:
        """Raise ``SettingsError`` naming the first bad setting by its path."""
        self.check()

    # ---- the flat names ----------------------------------------------------------------------
    @classmethod
    def from_flat(
        cls, values: Mapping[str, Any], *, base: FederationSpec | None = None
    ) -> FederationSpec:
        """The spec ``base`` (defaults) with flat settings applied: ``learning_rate`` is
        ``training.learning_rate``, ``fusion_algorithm`` is ``fusion.name``; a parameter of
        the chosen fusion, partition or use (``server_learning_rate``, ``alpha``,
        ``finetune_epochs``) goes to that part's ``params``. See ``flat_names()``."""
        nested = (base or cls()).to_dict()
        before = {choice: _get(nested, choice) for choice, _, _ in _CHOICES.values()}
        table = flat_table()
        rest = {}
        parts = cls.parts()
        touched = set()
        for key, value in values.items():
            if key in parts and isinstance(value, Mapping):  # a whole part, as a table
                for inner, v in value.items():
                    _put(nested, f"{key}.{inner}", v)
                    touched.add(f"{key}.{inner}")
            elif key in table:
                _put(nested, table[key], value)
                touched.add(table[key])
            elif key in _DICT_ALIASES:
                if not isinstance(value, Mapping):
                    raise SettingsError(f"{key} must be a table (mapping), got {value!r}")
                if "seed" in value:
                    raise SettingsError(
                        f"{key}: seed is derived per party and round from the federation's seed"
                    )
                for inner, v in value.items():
                    _put(nested, f"{_DICT_ALIASES[key]}.{inner}", v)
            else:
                rest[key] = value
        for choice, params, _ in _CHOICES.values():  # a new fusion/partition/use: its params
            if _get(nested, choice) != before[choice] and params not in touched:
                given = {t.rsplit(".", 1)[-1] for t in touched if t.startswith(f"{params}.")}
                kept = {k: v for k, v in _get(nested, params).items() if k in given}
                _put(nested, params, kept)
        for key, value in rest.items():
            path = _param_path(nested, key)
            if path is None:
                raise SettingsError(_unknown_flat(nested, key))
            _put(nested, path, value)
        return cls.from_dict(nested)


# flat names that are not a field's own name (the tutorial's form, and older spellings)
_ALIASES = {
    "fusion_algorithm": "fusion.name",
    "fusion_params": "fusion.params",
    "model": "model.name",
    "use": "use.name",
    "backend": "backend.name",
    "round_timeout": "aggregation.deadline",
    "federated_eval": "evaluation.federated",
    "personal_layers": "use.params.personal",
    "ensemble_weighting": "use.params.weighting",
}
_DICT_ALIASES = {"train_options": "training"}
# what is chosen -> (its path, the path of its parameters, the parameters each choice takes)
_CHOICES = {
    "fusion": ("fusion.name", "fusion.params", fusion_params),
    "partition": ("data.partition", "data.partition_params", partition_params),
    "use": ("use.name", "use.params", use_params),
}
_NOT_FLAT = {"training.seed", "fusion.name", "fusion.params", "model.name", "use.name",
             "use.params", "backend.name"}  # fmt: skip


def flat_table() -> dict[str, str]:
    """Flat name -> dotted path: every field of every part whose name is unique, plus aliases."""
    seen: dict[str, list[str]] = {}
    for f in dataclasses.fields(FederationSpec):
        part = FederationSpec.parts().get(f.name)
        if part is None:
            seen.setdefault(f.name, []).append(f.name)
            continue
        for inner in dataclasses.fields(part):
            path = f"{f.name}.{inner.name}"
            if path not in _NOT_FLAT:
                seen.setdefault(inner.name, []).append(path)
    table = {name: paths[0] for name, paths in seen.items() if len(paths) == 1}
    return table | _ALIASES


def flat_names() -> list[str]:
    """Every flat setting name ``from_flat`` knows (besides fusion/partition/use params)."""
    return sorted([*flat_table(), *_DICT_ALIASES])


def _get(nested: dict[str, Any], path: str) -> Any:
    for name in path.split("."):
        nested = nested.get(name, {})
    return nested


def _put(nested: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    target = nested
    for name in parents:
        target = target.setdefault(name, {})
    target[last] = value


def _chosen_params(nested: dict[str, Any]) -> list[tuple[str, str, str, tuple[str, ...]]]:
    """For the chosen fusion, partition and use: ``(what, name, params path, parameters)``
    (a name no part knows is left out: its own check reports it)."""
    chosen = []
    for what, (choice, params, names) in _CHOICES.items():
        name = _get(nested, choice)
        with contextlib.suppress(ValueError):
            chosen.append((what, name, params, names(name)))
    return chosen


def _unknown_flat(nested: dict[str, Any], key: str) -> str:
    """Why ``key`` is not a flat setting, naming what the chosen fusion, partition and use take."""
    chosen = [f"{what} {name!r} takes {', '.join(names) or 'none'}"
              for what, name, _, names in _chosen_params(nested)]  # fmt: skip
    return (
        f"unknown setting {key!r}: it is no flat setting, and {'; '.join(chosen)} "
        f"(flat settings: {', '.join(flat_names())})"
    )


def _param_path(nested: dict[str, Any], key: str) -> str | None:
    """Where a flat ``key`` goes when it names a parameter of the chosen fusion, partition or
    use (they are chosen by then: flat names are applied first)."""
    for _, _, params, names in _chosen_params(nested):
        if key in names:
            return f"{params}.{key}"
    return None


def load_spec(path: str | os.PathLike, *, base: FederationSpec | None = None) -> FederationSpec:
    """A spec from a TOML or JSON file, on top of ``base``: the nested form (``[training]``,
    ``[fusion]`` tables...), flat names (``learning_rate = 0.1``), or both; everything under
    a ``[federation]`` table if there is one."""
    data = read_settings_file(path, "spec")
    data = data.get("federation", data)
    parts = FederationSpec.parts()
    nested = {k: v for k, v in data.items() if k in parts and isinstance(v, Mapping)}
    flat = {k: v for k, v in data.items() if k not in nested}
    spec = base or FederationSpec()
    return FederationSpec.from_flat(flat, base=spec.replace(**nested) if nested else spec)


# ---- form values (strings) -------------------------------------------------------------------
def coerce_flat(values: Mapping[str, str]) -> dict[str, Any]:
    """Form fields (all strings) as typed values: the type comes from the field the flat name
    maps to; a parameter is read as JSON when it parses (``0.01``, ``true``), else kept as text.
    An empty field means "not given"."""
    table = flat_table()
    types = field_types()
    out: dict[str, Any] = {}
    for key, text in values.items():
        if text == "":
            continue
        if key in _DICT_ALIASES or table.get(key) in ("fusion.params",):
            out[key] = parse_json_object(text, key)
            continue
        kind = types.get(table.get(key, ""), "json")
        out[key] = _coerce(key, text, kind)
    return out


def field_types() -> dict[str, str]:
    types = {}
    for f in dataclasses.fields(FederationSpec):
        part = FederationSpec.parts().get(f.name)
        if part is None:
            types[f.name] = str(f.type)
        else:
            for inner in dataclasses.fields(part):
                types[f"{f.name}.{inner.name}"] = str(inner.type)
    return types


def _coerce(key: str, text: str, kind: str) -> Any:
    try:
        if kind.startswith("bool"):
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError
            return text.lower() in ("true", "1")
        if kind.startswith("int"):
            return int(text)
        if kind.startswith("float"):
            return float(text)
        if kind.startswith("tuple"):
            return tuple(int(d) for d in text.split(","))
        if kind.startswith("str"):
            return text
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return text
    except ValueError:
        raise SettingsError(f"{key} must be {kind.split(' ')[0]}, got {text!r}") from None


def _depth(value: Any) -> int:
    """How deeply ``value`` nests lists and objects (iteratively: any depth is safe)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, depth)
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return deepest


def parse_json_object(text: str, name: str, max_depth: int = 32) -> dict[str, Any]:
    """``text`` as a JSON object nesting at most ``max_depth`` levels (a spec is shallow)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SettingsError(f"{name} must be a JSON object: {exc}") from None
    except RecursionError:
        raise SettingsError(f"{name} nests deeper than {max_depth} levels") from None
    if not isinstance(value, dict):
        raise SettingsError(f"{name} must be a JSON object, got {type(value).__name__}")
    if _depth(value) > max_depth:
        raise SettingsError(f"{name} nests deeper than {max_depth} levels")
    return value
