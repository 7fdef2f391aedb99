"""Checkpoints: global weights and fusion state as safetensors, everything else as JSON.

Layout of a checkpoint folder::

    round_000012.safetensors   global weights ("weights/<name>") and fusion state arrays
    checkpoint.json            round, file name, fusion state skeleton, history

Each file is written to a temporary name and renamed, and ``checkpoint.json`` is replaced only
after the weights file it points to is complete, so a crash at any moment leaves the previous
checkpoint intact.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedfuse.weights import Weights, load_weights, save_weights

__all__ = ["Checkpoint", "load_checkpoint", "save_checkpoint"]

_INDEX = "checkpoint.json"


@dataclass
class Checkpoint:
    round: int
    weights: Weights
    fusion_state: Any
    history: list[dict[str, Any]]
    meta: dict[str, Any]


def _flatten(state: Any, prefix: str, arrays: dict[str, np.ndarray]) -> Any:
    """Replace arrays in a nested state by references, collecting them in ``arrays``."""
    if isinstance(state, np.ndarray):
        arrays[prefix] = state
        return {"__array__": prefix}
    if isinstance(state, dict):
        return {"__dict__": {k: _flatten(v, f"{prefix}/{k}", arrays) for k, v in state.items()}}
    if isinstance(state, tuple | list):
        items = [_flatten(v, f"{prefix}/{i}", arrays) for i, v in enumerate(state)]
        return {"__tuple__": items} if isinstance(state, tuple) else items
    if isinstance(state, np.generic):
        return state.item()
    if state is None or isinstance(state, bool | int | float | str):
        return state
    raise TypeError(f"cannot checkpoint fusion state of type {type(state).__name__}")


def _unflatten(node: Any, arrays: dict[str, np.ndarray]) -> Any:
    if isinstance(node, dict):
        if "__array__" in node:
            return arrays[node["__array__"]]
        if "__dict__" in node:
            return {k: _unflatten(v, arrays) for k, v in node["__dict__"].items()}
        if "__tuple__" in node:
            return tuple(_unflatten(v, arrays) for v in node["__tuple__"])
    if isinstance(node, list):
        return [_unflatten(v, arrays) for v in node]
    return node


def save_checkpoint(
    directory: str | os.PathLike,
    round_num: int,
    weights: Weights,
    fusion_state: Any,
    history: list[dict[str, Any]],
    meta: dict[str, Any] | None = None,
) -> Path:
    """Write the checkpoint of completed round ``round_num``; returns the weights file."""
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {f"weights/{k}": v for k, v in weights.items()}
    skeleton = _flatten(fusion_state, "fusion", arrays)
    weights_file = folder / f"round_{round_num:06d}.safetensors"
    save_weights(weights_file, arrays, metadata={"round": str(round_num)})
    index = {
        "round": round_num,
        "weights_file": weights_file.name,
        "fusion_state": skeleton,
        "history": history,
        "meta": meta or {},
    }
    tmp = folder / f"{_INDEX}.tmp"
    tmp.write_text(json.dumps(index, indent=1))
    previous = _read_index(folder)
    os.replace(tmp, folder / _INDEX)
    if previous and previous["weights_file"] != weights_file.name:
        (folder / previous["weights_file"]).unlink(missing_ok=True)
    return weights_file


def _read_index(folder: Path) -> dict[str, Any] | None:
    path = folder / _INDEX
    if not path.exists():
        return None
    return json.loads(path.read_text())


def load_checkpoint(directory: str | os.PathLike) -> Checkpoint | None:
    """The latest checkpoint in ``directory``, or ``None`` if there is none."""
    folder = Path(directory)
    index = _read_index(folder)
    if index is None:
        return None
    arrays = load_weights(folder / index["weights_file"])
    weights = {k[len("weights/") :]: v for k, v in arrays.items() if k.startswith("weights/")}
    return Checkpoint(
        round=int(index["round"]),
        weights=weights,
        fusion_state=_unflatten(index["fusion_state"], arrays),
        history=index["history"],
        meta=index.get("meta", {}),
    )
