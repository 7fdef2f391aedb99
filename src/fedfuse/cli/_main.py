"""The ``fedfuse`` command: parse, call the API, print. Errors become one line and exit 2.

Start-up stays fast: ``fedfuse --help`` lists the sub-commands from a table that imports nothing
(``_commands.py``), and only the module of the chosen sub-command is imported (it derives its
flags from the spec, which imports torch).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Collection, Sequence

from fedfuse.cli._commands import COMMANDS

__all__ = ["build_parser", "main"]


def build_parser(commands: Collection[str] | None = None) -> argparse.ArgumentParser:
    """The ``fedfuse`` parser. Every sub-command is listed with its one-line help; those in
    ``commands`` (all of them when None, the default) also get their flags, which imports their
    module. The others can be listed by ``--help`` but not parsed."""
    parser = argparse.ArgumentParser(
        prog="fedfuse",
        description="Federated and decentralized learning. Start with `fedfuse demo`.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    chosen = COMMANDS if commands is None else commands
    modules = {COMMANDS[name].module for name in chosen}  # each adds all of its commands
    built = set()
    for name, command in COMMANDS.items():
        if command.module not in modules:
            sub.add_parser(name, help=command.help)
        elif command.module not in built:
            importlib.import_module(f"fedfuse.cli.{command.module}").add_parsers(sub)
            built.add(command.module)
    return parser


def _chosen(argv: Sequence[str]) -> list[str]:
    """The sub-command ``argv`` names: its first argument that is not an option (the top-level
    parser takes only ``--help``), or none."""
    first = next((arg for arg in argv if not arg.startswith("-")), None)
    return [first] if first in COMMANDS else []


def _failed(command: str, exc: Exception) -> int:
    print(f"fedfuse {command}: error: {exc}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(_chosen(argv)).parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, TypeError) as exc:
        return _failed(args.command, exc)
    except RuntimeError as exc:
        from fedfuse.runtime import ProtocolError  # here: importing it up front loads torch

        if not isinstance(exc, ProtocolError):
            raise
        return _failed(args.command, exc)
