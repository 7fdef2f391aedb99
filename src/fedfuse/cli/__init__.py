"""Command-line entry points (thin: parse, call the API, print)."""

from fedfuse.cli._main import build_parser, main

__all__ = ["build_parser", "main"]
