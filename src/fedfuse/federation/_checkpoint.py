"""Checkpoints: global weights and fusion state as safetensors, everything else as JSON.

Layout of a checkpoint folder::

    round_000012.safetensors   global weights ("weights/<name>"), fusion state arrays, and in
                               its metadata the index below: each file is a whole checkpoint
    round_000011.safetensors   the previous checkpoint, kept in case the newest is damaged
    checkpoint.json            the index: round, file name, fusion state skeleton, history

A new checkpoint is written under a temporary name, flushed to disk, verified (its header read
back and the file's size checked against it) and only then renamed into place; the index follows
the same way, and only then is the checkpoint before the previous one deleted. A crash at any
moment, or one damaged file, costs at most one round: ``load_checkpoint`` falls back to the
previous file and says so.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedfuse.weights import Weights, load_weights, save_weights

__all__ = ["Checkpoint", "CheckpointError", "load_checkpoint", "save_checkpoint"]

_INDEX = "checkpoint.json"
_META_KEY = "fedfuse_checkpoint"
_ROUND_FILE = re.compile(r"round_(\d{6,})\.safetensors")
log = logging.getLogger("fedfuse.federation")


class CheckpointError(ValueError):
    """A checkpoint folder holds checkpoints, but none of them can be read."""


@dataclass
class Checkpoint:
    """One completed round. ``file`` is the weights file it was read from; ``skipped`` names
    the newer files that were damaged and why (empty when the newest checkpoint was used)."""

    round: int
    weights: Weights
    fusion_state: Any
    history: list[dict[str, Any]]
    meta: dict[str, Any]
    file: str = ""
    skipped: list[str] = field(default_factory=list)


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


# durable files -------------------------------------------------------------------------------
def fsync_directory(folder: str | os.PathLike) -> None:
    """Make a rename or a new file in ``folder`` survive a power cut (POSIX needs the folder
    itself flushed, not only the file)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def write_synced(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file, flushed to disk before the rename
    and the folder after it: ``path`` holds either its old content or all of ``data``."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)


def _header(path: Path) -> dict[str, Any]:
    """The safetensors header of ``path``, after checking that the file is exactly as long as
    the header says (a truncated or padded file is refused before any array is read)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise ValueError(f"{path.name} is {size} bytes, shorter than a safetensors header")
        length = int.from_bytes(prefix, "little")
        if length > size - 8:
            raise ValueError(f"{path.name} is truncated: its header alone claims {length} bytes")
        try:
            header = json.loads(f.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path.name} has an unreadable header: {exc}") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path.name} has an unreadable header")
    ends = [
        t["data_offsets"][1]
        for name, t in header.items()
        if name != "__metadata__" and isinstance(t, dict) and "data_offsets" in t
    ]
    expected = 8 + length + max(ends, default=0)
    if size != expected:
        raise ValueError(f"{path.name} is {size} bytes, its header describes {expected}")
    return header


# saving --------------------------------------------------------------------------------------
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
    index = {
        "round": round_num,
        "weights_file": weights_file.name,
        "fusion_state": skeleton,
        "history": history,
        "meta": meta or {},
    }
    tmp = weights_file.with_name(f"{weights_file.name}.tmp")
    try:
        save_weights(tmp, arrays, metadata={"round": str(round_num), _META_KEY: json.dumps(index)})
        _fsync_file(tmp)
        _header(tmp)
        os.replace(tmp, weights_file)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_directory(folder)
    write_synced(folder / _INDEX, json.dumps(index, indent=1).encode())
    _prune(folder, round_num)
    return weights_file


def _round_files(folder: Path) -> list[tuple[int, str]]:
    """``(round, name)`` of every checkpoint weights file, newest first."""
    found = []
    for path in folder.iterdir():
        match = _ROUND_FILE.fullmatch(path.name)
        if match:
            found.append((int(match.group(1)), path.name))
    return sorted(found, reverse=True)


def _prune(folder: Path, round_num: int) -> None:
    """Keep the new checkpoint and the newest one before it; delete the rest."""
    older = [name for r, name in _round_files(folder) if r < round_num]
    newer = [name for r, name in _round_files(folder) if r > round_num]  # a resume's leftovers
    for name in older[1:] + newer:
        (folder / name).unlink(missing_ok=True)


# loading -------------------------------------------------------------------------------------
def _read_index(folder: Path) -> dict[str, Any] | None:
    path = folder / _INDEX
    if not path.exists():
        return None
    index = json.loads(path.read_text())
    name = index.get("weights_file") if isinstance(index, dict) else None
    if not isinstance(name, str) or not _ROUND_FILE.fullmatch(name):  # no path out of here
        raise ValueError("not a checkpoint index")
    return index


def _load(path: Path, index: dict[str, Any] | None) -> Checkpoint:
    """One checkpoint file, with the index stored inside it (or ``index`` for files written
    before checkpoints carried their own)."""
    if not path.exists():
        raise ValueError(f"{path.name} is missing")
    embedded = (_header(path).get("__metadata__") or {}).get(_META_KEY)
    if embedded is not None:
        index = json.loads(embedded)
    if index is None:
        raise ValueError(f"{path.name} carries no checkpoint index")
    arrays = load_weights(path)
    weights = {k[len("weights/") :]: v for k, v in arrays.items() if k.startswith("weights/")}
    return Checkpoint(
        round=int(index["round"]),
        weights=weights,
        fusion_state=_unflatten(index["fusion_state"], arrays),
        history=index["history"],
        meta=index.get("meta", {}),
        file=path.name,
    )


def load_checkpoint(directory: str | os.PathLike) -> Checkpoint | None:
    """The latest usable checkpoint in ``directory``, or ``None`` if there is none.

    The file ``checkpoint.json`` points to comes first, then every other checkpoint file,
    newest first: a damaged newest checkpoint costs one round. Raises ``CheckpointError``
    naming every file and what is wrong with it when checkpoints exist but none can be read.
    """
    folder = Path(directory)
    if not folder.is_dir():
        return None
    skipped: list[str] = []
    try:
        index = _read_index(folder)
    except (OSError, ValueError) as exc:
        index = None
        skipped.append(f"{_INDEX}: {exc}")
    names = [name for _, name in _round_files(folder)]
    if index is not None:
        names = [index["weights_file"]] + [n for n in names if n != index["weights_file"]]
    for name in names:
        try:
            checkpoint = _load(
                folder / name, index if index and index["weights_file"] == name else None
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            skipped.append(f"{name}: {exc}")
            continue
        if skipped:
            log.warning("checkpoint %s: using %s; skipped %s", folder, name, "; ".join(skipped))
        checkpoint.skipped = skipped
        return checkpoint
    if skipped:
        raise CheckpointError(f"no usable checkpoint in {folder}: {'; '.join(skipped)}")
    return None
