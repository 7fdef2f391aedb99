"""The ``fedfuse`` command: parse, call the API, print. Errors become one line and exit 2."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from fedfuse.cli import _consensus, _party, _service, _simulate
from fedfuse.runtime import ProtocolError

__all__ = ["main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedfuse",
        description="Federated and decentralized learning. Start with `fedfuse demo`.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _simulate.add_parsers(sub)
    _consensus.add_parsers(sub)
    _service.add_parsers(sub)
    _party.add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, TypeError, ProtocolError) as exc:
        print(f"fedfuse {args.command}: error: {exc}", file=sys.stderr)
        return 2
