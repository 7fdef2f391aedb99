"""Build a party process's ``Party`` from what the service said at join time."""

from __future__ import annotations

import torch

from fedfuse.data import get_data_handler, load_party_npz
from fedfuse.models import TorchAdapter, build_model, get_model_type
from fedfuse.party import Party
from fedfuse.runtime._http_party import PartyClient

__all__ = ["party_from_join"]


def party_from_join(
    client: PartyClient, info: dict, data_path: str, handler: str | None = None
) -> Party:
    """A ``Party`` for ``data_path`` with the federation's model: a zoo model built locally,
    or the federation's model file, loaded with the same allowlist as the service uses."""
    data = load_party_npz(data_path)
    if handler:
        data = get_data_handler(handler)(data)
    model = info["model"]
    if model["source"] == "zoo":
        torch.manual_seed(int(model.get("seed", 0)))
        adapter = TorchAdapter(
            build_model(model["model"], model["input_shape"], model["num_classes"])
        )
    elif model["source"] == "model_file":
        adapter = get_model_type(model["model_type"]).load(client.model_file(), ())
    else:
        raise ValueError(
            "this federation expects each party to bring its own model: use "
            "fedfuse.runtime.PartyClient with your own Party or ClientParty from Python"
        )
    return Party(adapter, data, info["party_id"])
