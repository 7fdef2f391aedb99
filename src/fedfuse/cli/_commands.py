"""The table of ``fedfuse`` sub-commands: each one's one-line help and the module that adds it.

It lives apart from those modules because they import torch and the spec machinery (their
flags are derived from the spec) and this table imports nothing: ``fedfuse --help`` lists every
sub-command from here alone, and only the chosen sub-command's module is imported (see
``fedfuse.cli._main.build_parser``). Each module takes its commands' help texts from here.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["COMMANDS", "Command"]


class Command(NamedTuple):
    """Where a sub-command is built (a module of ``fedfuse.cli`` with ``add_parsers``) and the
    line ``fedfuse --help`` shows for it."""

    module: str
    help: str


COMMANDS = {  # in the order `fedfuse --help` lists them
    "demo": Command("_simulate", "FedAvg on scikit-learn's digits: 10 non-IID parties, offline"),
    "simulate": Command(
        "_simulate", "run a simulated federation from flags or a TOML/JSON spec file"
    ),
    "partition": Command(
        "_simulate", "split a dataset into one .npz per party (x_train, y_train, x_test, y_test)"
    ),
    "consensus": Command(
        "_consensus",
        "decentralized training on a graph of nodes (ECL, gossip, D-PSGD), no aggregator",
    ),
    "node": Command(
        "_consensus", "one decentralized node: train and exchange with neighbours over HTTP"
    ),
    "serve": Command("_service", "run the aggregator service (REST API + party protocol)"),
    "create": Command("_service", "create a federation on a running service"),
    "party": Command("_party", "join a federation as a party and train on local data"),
    "dashboard": Command(
        "_dashboard", "watch a simulation's or consensus run's out_dir live in a browser"
    ),
}
