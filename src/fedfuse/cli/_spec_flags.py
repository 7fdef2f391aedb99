"""Command-line flags for every flat setting of a ``FederationSpec``, derived from the spec.

``fedfuse simulate`` and ``fedfuse create`` take ``--config FILE`` (TOML or JSON, the nested
spec or flat names) and one flag per flat setting (``--learning-rate``); parameters of the
chosen fusion, partition or use have flags too (``--server-learning-rate``, ``--alpha``). Nothing
here lists a setting by hand: a new field of a spec part is a new flag.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from fedfuse.data import PARTITIONS, partition_params
from fedfuse.fusion import FUSIONS, fusion_params
from fedfuse.recipes import (
    USES,
    FederationSpec,
    field_types,
    flat_names,
    flat_table,
    load_spec,
    use_params,
)

__all__ = ["add_spec_flags", "spec_from_args", "spec_value"]

_SKIP = {"train_options", "fusion_params", "partition_params"}  # tables: --config, or the flags


def _dest(name: str) -> str:
    return f"spec__{name}"


def _json_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _lookup(nested: dict[str, Any], path: str) -> Any:
    for name in path.split("."):
        nested = nested.get(name, {}) if isinstance(nested, dict) else {}
    return nested


def _param_flags() -> dict[str, str]:
    """Parameter name -> what takes it (``fusion fedadam|fedyogi; partition dirichlet``)."""
    owners: dict[str, dict[str, list[str]]] = {}
    for kind, names, params in (
        ("fusion", FUSIONS, fusion_params),
        ("partition", PARTITIONS, partition_params),
        ("use", USES, use_params),
    ):
        for name in names:
            for p in params(name):
                if p != "groups":
                    owners.setdefault(p, {}).setdefault(kind, []).append(name)
    described = {}
    for p, kinds in owners.items():
        parts = []
        for kind, names in kinds.items():
            every = kind == "fusion" and len(names) == len(FUSIONS)
            parts.append(f"any {kind}" if every else f"{kind} {'|'.join(names)}")
        described[p] = "; ".join(parts)
    return described


def add_spec_flags(parser: argparse.ArgumentParser, base: FederationSpec) -> None:
    """``--config`` and one flag per flat setting; help texts show ``base``'s defaults."""
    parser.add_argument(
        "--config",
        help="a TOML or JSON file: the nested spec ([training], [fusion]...) or flat names; "
        "flags override it (default: none)",
    )
    defaults = base.to_dict()
    table, types = flat_table(), field_types()
    aliased = {path: name for name, path in table.items() if name != path.rsplit(".", 1)[-1]}
    for name in flat_names():
        if name in _SKIP or aliased.get(table.get(name), name) != name:
            continue  # one flag per setting: the tutorial's name where it has one
        path = table[name]
        kind = types.get(path, "str")
        default = _lookup(defaults, path)
        flags = ["--" + name.replace("_", "-")]
        if name == "fusion_algorithm":
            flags.append("--fusion")
        help_text = f"{path} (default: {default})"
        if kind.startswith("bool"):
            parser.add_argument(
                *flags, dest=_dest(name), action=argparse.BooleanOptionalAction, default=None,
                help=help_text,
            )  # fmt: skip
            continue
        if kind.startswith("tuple"):
            convert: Any = lambda text: tuple(int(d) for d in text.split(","))  # noqa: E731
        elif kind.startswith("int"):
            convert = int
        elif kind.startswith("float"):
            convert = float
        else:
            convert = str if kind.startswith("str") else _json_value
        parser.add_argument(
            *flags,
            dest=_dest(name),
            metavar=name.upper(),
            type=convert,
            default=None,
            help=help_text,
        )
    for name, owners in sorted(_param_flags().items()):
        if name in table:
            continue
        parser.add_argument(
            "--" + name.replace("_", "-"),
            dest=_dest(name),
            metavar=name.upper(),
            type=_json_value,
            default=None,
            help=f"parameter of {owners} (default: its own)",
        )


def spec_from_args(args: argparse.Namespace, base: FederationSpec) -> FederationSpec:
    """``base``, then the ``--config`` file, then the flags that were given."""
    spec = load_spec(args.config, base=base) if getattr(args, "config", None) else base
    given = {
        key[len("spec__") :]: value
        for key, value in vars(args).items()
        if key.startswith("spec__") and value is not None
    }
    return FederationSpec.from_flat(given, base=spec)


def spec_value(spec: FederationSpec, name: str) -> Any:
    """The value of the flat setting ``name`` (``"learning_rate"``) in ``spec``."""
    return _lookup(spec.to_dict(), flat_table()[name])
