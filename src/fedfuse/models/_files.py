"""Loading a model file uploaded by a user, without running anyone's code.

The Model Fusion tutorial uploads ``torch.save(model)``: a pickle. fedfuse never unpickles
arbitrary objects: it first lists the classes the file refers to (without executing it), refuses
any that is not a built-in ``torch.nn`` module class or a class under an import path the operator
allowed, and only then loads it with ``torch.load(weights_only=True)`` and exactly those classes
registered as safe.
"""

from __future__ import annotations

import importlib
import inspect
import io
import pickle
import pkgutil
import zipfile
from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["ModelFileError", "builtin_module_classes", "load_torch_model"]


class ModelFileError(ValueError):
    """An uploaded model file is malformed or refers to a class that is not allowed."""


def builtin_module_classes() -> dict[str, type]:
    """``"torch.nn.modules.linear.Linear" -> Linear`` for every built-in ``nn.Module`` class."""
    classes: dict[str, type] = {}
    for info in pkgutil.iter_modules(torch.nn.modules.__path__, "torch.nn.modules."):
        module = importlib.import_module(info.name)
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, nn.Module) and obj.__module__.startswith("torch.nn.modules."):
                classes[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return classes


_BUILTINS = builtin_module_classes()


def _resolve_allowed(name: str, allowed_prefixes: Sequence[str]) -> type | None:
    if name in _BUILTINS:
        return _BUILTINS[name]
    if not any(name == p or name.startswith(p.rstrip(".") + ".") for p in allowed_prefixes):
        return None
    module_name, _, attr = name.rpartition(".")
    try:
        obj = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError):
        return None
    return obj if isinstance(obj, type) else None


def load_torch_model(data: bytes, *, allowed_import_paths: Sequence[str] = ()) -> nn.Module:
    """Load a whole model written by ``torch.save(model)`` from ``data``.

    Args:
        data: the file's bytes.
        allowed_import_paths: module prefixes (e.g. ``"mycompany.models"``) whose classes may
            also appear; set by the service operator, never by an upload.

    Raises:
        ModelFileError: not a torch file, a state dict instead of a model, or a class outside the
            allowlist (the message names it).
    """
    try:
        referenced = torch.serialization.get_unsafe_globals_in_checkpoint(io.BytesIO(data))
    except (RuntimeError, zipfile.BadZipFile, pickle.UnpicklingError, EOFError, ValueError) as exc:
        reason = str(exc).split(". ")[0]
        raise ModelFileError(f"not a model file written by torch.save: {reason}") from None
    safe = []
    for name in referenced:
        cls = _resolve_allowed(name, allowed_import_paths)
        if cls is None:
            raise ModelFileError(
                f"model file refers to {name!r}, which is not allowed: only built-in torch.nn "
                "classes (and import paths the operator configured) can be loaded"
            )
        safe.append(cls)
    try:
        with torch.serialization.safe_globals(safe):
            obj = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except (RuntimeError, pickle.UnpicklingError, EOFError, ValueError, AttributeError) as exc:
        raise ModelFileError(f"cannot load model file: {str(exc).splitlines()[0]}") from None
    if not isinstance(obj, nn.Module):
        raise ModelFileError(
            f"model file holds a {type(obj).__name__}, not a model: save the whole model with "
            "torch.save(model)"
        )
    return obj
