"""Build a party process's ``Party`` from what the service said at join time.

The join answer comes from the aggregator, which the party does not trust with its memory: a
zoo model is built only once ``build_model`` has counted its parameters against the party's
``SizeLimits``, and a model file is checked against the same caps before it is loaded.
"""

from __future__ import annotations

from typing import Any

import torch

from fedfuse.data import get_data_handler, load_party_npz
from fedfuse.models import TorchAdapter, build_model, get_model_type, torch_seed
from fedfuse.party import Party
from fedfuse.runtime._http_party import PartyClient, ProtocolError

__all__ = ["party_from_join"]


def party_from_join(
    client: PartyClient, info: dict, data_path: str, handler: str | None = None
) -> Party:
    """A ``Party`` for ``data_path`` with the federation's model: a zoo model built locally,
    or the federation's model file, loaded with the same allowlist as the service uses."""
    data = load_party_npz(data_path, limits=client.limits)
    if handler:
        data = get_data_handler(handler)(data)
    model = _model_description(info)
    if model["source"] == "zoo":
        adapter = TorchAdapter(_zoo_model(model, client))
    elif model["source"] == "model_file":
        model_type = get_model_type(str(model.get("model_type")))
        adapter = model_type.load(client.model_file(), (), limits=client.limits)
    else:
        raise ValueError(
            "this federation expects each party to bring its own model: use "
            "fedfuse.runtime.PartyClient with your own Party or ClientParty from Python"
        )
    return Party(adapter, data, info["party_id"])


def _model_description(info: Any) -> dict[str, Any]:
    model = info.get("model") if isinstance(info, dict) else None
    if not isinstance(model, dict) or "source" not in model:
        raise ProtocolError("the join answer does not describe the federation's model")
    return model


def _zoo_model(model: dict[str, Any], client: PartyClient) -> torch.nn.Module:
    """The zoo model the join answer describes, seeded without touching the global RNG."""
    seed = model.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise ProtocolError(f"the join answer's model seed {seed!r} is not a valid seed")
    try:
        name, shape, classes = model["model"], model["input_shape"], model["num_classes"]
    except KeyError as exc:
        raise ProtocolError(f"the join answer's zoo model has no {exc.args[0]!r}") from None
    with torch_seed(seed):
        return build_model(str(name), shape, classes, limits=client.limits)
