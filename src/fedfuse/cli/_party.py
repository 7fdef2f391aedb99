"""``fedfuse party``: join a federation from the command line and train on local data.

It exits 0 when the federation ends, 1 when every task it answered failed (each failure is
printed with its round and reason), 2 on an error before serving.
"""

from __future__ import annotations

import argparse
import logging
import socket
from pathlib import Path

from fedfuse.cli._commands import COMMANDS

__all__ = ["add_parsers"]


def _cmd_party(args: argparse.Namespace) -> int:
    from fedfuse.runtime import PartyClient, party_from_join

    logging.basicConfig(format="%(asctime)s %(message)s", level=logging.WARNING)
    logging.getLogger("fedfuse").setLevel(logging.INFO)
    name = args.name or f"{socket.gethostname()}-{Path(args.data).stem}"
    with PartyClient(
        args.server,
        args.token,
        name=name,
        verify=args.ca_cert or True,
        reconnect_timeout=args.reconnect_timeout,
        secret_file=args.secret_file,
    ) as client:
        info = client.join()
        party = party_from_join(client, info, args.data, args.handler)
        print(
            f"joined federation {info['federation_id']} as {info['party_id']} ({name}); "
            f"{len(party.data.train)} training examples",
            flush=True,
        )
        summary = client.serve(party)
    print(
        f"done: answered {summary.tasks} tasks over rounds {summary.rounds}, "
        f"{summary.failed} failed; {summary.final_status}",
        flush=True,
    )
    for round_, reason in summary.failures.items():
        print(f"round {round_} failed: {reason}", flush=True)
    if summary.all_failed:
        print(f"every one of the {summary.tasks} tasks failed", flush=True)
        return 1
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    party = sub.add_parser("party", help=COMMANDS["party"].help)
    party.add_argument("--server", required=True, help="e.g. http://127.0.0.1:8080")
    party.add_argument("--token", required=True, help="the federation's join token")
    party.add_argument("--data", required=True, help=".npz with x_train, y_train, x_test, y_test")
    party.add_argument(
        "--handler",
        help="data handler name, e.g. mnist_pytorch (default: none, the arrays as they are)",
    )
    party.add_argument(
        "--name", help="stable name; rejoining with it resumes the same party (default: none)"
    )
    party.add_argument(
        "--secret-file",
        help="keep this party's secret here: a restarted party proves its --name with it "
        "(default: none, only this process can rejoin by name)",
    )
    party.add_argument(
        "--ca-cert",
        help="CA bundle for a TLS service with its own certificate (default: the system's)",
    )
    party.add_argument(
        "--reconnect-timeout",
        type=float,
        default=120.0,
        help="seconds to keep retrying while the service is unreachable (default: %(default)s)",
    )
    party.set_defaults(func=_cmd_party)
