"""``fedfuse dashboard PATH``: the service's dashboard over a simulation's or consensus run's
out_dir, live while the run writes ``events.jsonl`` and whole once ``history.json`` is there."""

from __future__ import annotations

import argparse
from pathlib import Path

from fedfuse._net import is_loopback
from fedfuse.cli._commands import COMMANDS

__all__ = ["add_parsers"]


def _cmd_dashboard(args: argparse.Namespace) -> int:
    import uvicorn

    from fedfuse.service._dashboard import dashboard_app
    from fedfuse.service._dashboard_view import FolderSource

    folder = Path(args.path)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder (give a simulate or consensus --out)")
    if not is_loopback(args.host) and not args.insecure:
        raise ValueError(
            f"refusing to serve the dashboard without authentication on {args.host}: "
            "keep it on 127.0.0.1, or give --insecure"
        )
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"fedfuse dashboard of {folder} on http://{host}:{args.port}/", flush=True)
    app = dashboard_app(FolderSource(folder))
    # open event streams end at once on Ctrl-C (a browser viewing the run would hold it open)
    uvicorn.run(
        app, host=args.host, port=args.port, log_level=args.log_level, timeout_graceful_shutdown=1
    )
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    dash = sub.add_parser("dashboard", help=COMMANDS["dashboard"].help)
    dash.add_argument("path", help="a `fedfuse simulate --out` or `fedfuse consensus --out` folder")
    dash.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    dash.add_argument("--port", type=int, default=8050, help="port (default: %(default)s)")
    dash.add_argument(
        "--insecure",
        action="store_true",
        help="serve on a non-loopback address, with no authentication (default: refuse)",
    )
    dash.add_argument(
        "--log-level", default="warning", help="uvicorn's log level (default: %(default)s)"
    )
    dash.set_defaults(func=_cmd_dashboard)
