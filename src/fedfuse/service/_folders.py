"""A federation's folder: built whole under a temporary name, with a manifest of its files.

A federation's folder is built under a temporary name and renamed into place once every file is
on disk, with a manifest of their sizes and hashes; recovery checks each file against it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from fedfuse.federation import fsync_directory, write_synced
from fedfuse.service._errors import storage_error

__all__ = [
    "MANIFEST",
    "federation_folders",
    "read_checked",
    "read_manifest",
    "remove_half_made",
    "store_file",
    "write_folder",
]

log = logging.getLogger("fedfuse.service")

MANIFEST = "manifest.json"


def store_file(folder: Path, name: str, data: bytes) -> None:
    """Write ``name`` durably into a federation folder and record its size and hash in the
    folder's manifest, which recovery checks the file against."""
    write_synced(folder / name, data)
    manifest = read_manifest(folder) or {}
    manifest[name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    write_synced(folder / MANIFEST, json.dumps(manifest, indent=1).encode())


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The manifest, or ``None`` for folders made before there was one."""
    path = folder / MANIFEST
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_bytes())
    except ValueError:
        manifest = None
    if not isinstance(manifest, dict):
        raise ValueError(f"{path} is unreadable")
    return manifest


def read_checked(folder: Path, name: str, manifest: dict[str, Any] | None) -> bytes | None:
    """The bytes of ``name`` as written at creation: ``ValueError`` naming the file if it is
    missing, shorter or different; ``None`` if the federation never had it."""
    path = folder / name
    if manifest is None:  # a folder made before manifests: only presence can be told
        return path.read_bytes() if path.exists() else None
    entry = manifest.get(name)
    if entry is None:
        return None
    if not path.exists():
        raise ValueError(f"{path} is missing")
    data = path.read_bytes()
    if len(data) != entry["bytes"]:
        raise ValueError(f"{path} is {len(data)} bytes; {entry['bytes']} were written")
    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise ValueError(f"{path} differs from the file written (sha256 mismatch)")
    return data


def federation_folders(data_dir: Path) -> list[Path]:
    """Every federation folder on disk (not those half-made by an interrupted creation)."""
    parent = data_dir / "federations"
    if not parent.is_dir():
        return []
    return [p for p in parent.iterdir() if p.is_dir() and not p.name.startswith(".")]


def write_folder(data_dir: Path, fid: str, files: dict[str, bytes]) -> Path:
    """Build a federation's folder under a temporary name beside its final place, every
    file flushed to disk, then rename it into place: a full disk or a crash while creating
    leaves no half-made federation (recovery deletes the temporary folder)."""
    parent = data_dir / "federations"
    folder = parent / fid
    tmp = parent / f".creating-{fid}"
    renamed = False
    try:
        (tmp / "parties").mkdir(parents=True)
        for name, data in files.items():
            store_file(tmp, name, data)
        fsync_directory(tmp / "parties")
        os.rename(tmp, folder)
        renamed = True
        fsync_directory(parent)
    except OSError as exc:
        shutil.rmtree(folder if renamed else tmp, ignore_errors=True)
        raise storage_error("could not store the federation's files", exc) from exc
    return folder


def remove_half_made(data_dir: Path) -> None:
    """Delete folders of creations that a crash interrupted (they never had a row)."""
    parent = data_dir / "federations"
    try:
        leftovers = list(parent.glob(".creating-*")) if parent.is_dir() else []
    except OSError as exc:
        log.warning("cannot look for half-made federations in %s: %s", parent, exc)
        return
    for tmp in leftovers:
        log.warning("removing %s, left by an interrupted creation", tmp)
        shutil.rmtree(tmp, ignore_errors=True)
