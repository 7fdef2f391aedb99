"""Loading a model file uploaded by a user, without running anyone's code.

The Model Fusion tutorial uploads ``torch.save(model)``: a pickle. fedfuse never unpickles
arbitrary objects: it first lists the classes the file refers to (without executing it), refuses
any that is not a built-in ``torch.nn`` module class or a class under an import path the operator
allowed, and only then loads it with ``torch.load(weights_only=True)`` and exactly those classes
registered as safe.

Before that, sizes are checked without building anything (see ``SizeLimits``): the zip
directory's inflated sizes, and the pickle's opcodes, walked without executing them. From the
opcodes come the storages the file declares (their element counts, summed against
``max_params``) and every call the pickle would make. ``torch.save(model)`` creates modules with
``NEWOBJ`` on an empty tuple (``cls.__new__(cls)``: no ``__init__``) and rebuilds tensors from
its own storages, so a file that *calls* a class (``torch.nn.Linear(12000, 12000)``,
``torch.FloatStorage(10**10)``, ``bytearray(10**12)``) is refused by name: such a call may
allocate any amount from a few bytes of pickle.
"""

from __future__ import annotations

import importlib
import inspect
import io
import pickle
import pickletools
import pkgutil
import zipfile
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from fedfuse.weights import SizeLimitError, SizeLimits

__all__ = ["ModelFileError", "builtin_module_classes", "check_model_file", "load_torch_model"]


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


# What ``torch.save`` calls while rebuilding tensors; each costs at most what the file holds.
_REBUILDERS = frozenset(
    {
        "torch._utils._rebuild_tensor",
        "torch._utils._rebuild_tensor_v2",
        "torch._utils._rebuild_tensor_v3",
        "torch._utils._rebuild_parameter",
        "torch._utils._rebuild_parameter_with_state",
        "collections.OrderedDict",
        "builtins.set",
        "builtins.complex",
        "_codecs.encode",
    }
)
_LIMITS = SizeLimits()  # the default caps (an immutable value)
_MAX_PICKLE_BYTES = 16 << 20  # torch.save keeps tensors outside the pickle: it stays small
_OLD_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg"}


class _Global(str):
    """A class or function the pickle names (``GLOBAL`` / ``STACK_GLOBAL``), as a dotted name."""


_MARK, _OTHER = object(), object()  # a MARK on the symbolic stack; any value not tracked
_PUSH_LITERAL = frozenset({"str", "int", "bytes", "float"})


def _global(module: Any, name: Any) -> Any:
    if not isinstance(module, str) or not isinstance(name, str):
        return _OTHER
    return _Global(f"{_OLD_MODULES.get(module, module)}.{name}")


class _PickleScan:
    """Walks a pickle's opcodes on a symbolic stack (nothing is executed or imported).

    Tracks literals, tuples, memo entries and the globals the pickle names, so that each call
    (``REDUCE``, ``NEWOBJ``...) is seen with its callable and each persistent id (a tensor
    storage) with its element count.
    """

    def __init__(self) -> None:
        self.stack: list[Any] = []
        self.memo: dict[int, Any] = {}
        self.storages: dict[str, int] = {}

    def pop(self, count: int = 1) -> list[Any]:
        if len(self.stack) < count:
            raise ModelFileError("not a model file written by torch.save: a malformed pickle")
        items = self.stack[len(self.stack) - count :]
        del self.stack[len(self.stack) - count :]
        return items

    def pop_to_mark(self) -> list[Any]:
        for i in range(len(self.stack) - 1, -1, -1):
            if self.stack[i] is _MARK:
                items = self.stack[i + 1 :]
                del self.stack[i:]
                return items
        raise ModelFileError("not a model file written by torch.save: a malformed pickle")

    def run(self, data: bytes) -> None:
        opcodes = pickletools.genops(data)
        while True:
            try:
                opcode, arg, _ = next(opcodes)
            except StopIteration:
                return
            except (ValueError, KeyError) as exc:
                raise ModelFileError(f"not a model file written by torch.save: {exc}") from None
            self.step(opcode, arg)

    def step(self, opcode: pickletools.OpcodeInfo, arg: Any) -> None:
        name = opcode.name
        if name == "MARK":
            self.stack.append(_MARK)
        elif name in ("GLOBAL", "INST"):
            module, _, attr = arg.partition(" ")
            if name == "INST":
                _refuse_call(_global(module, attr))
            self.stack.append(_global(module, attr))
        elif name == "STACK_GLOBAL":
            self.stack.append(_global(*self.pop(2)))
        elif name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):
            self.memo[len(self.memo) if name == "MEMOIZE" else arg] = self.pop()[0]
            self.stack.append(self.memo[len(self.memo) - 1 if name == "MEMOIZE" else arg])
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            self.stack.append(self.memo.get(arg, _OTHER))
        elif name == "DUP":
            self.stack.append(self.pop()[0])
            self.stack.append(self.stack[-1])
        elif name in ("EMPTY_TUPLE", "TUPLE1", "TUPLE2", "TUPLE3", "TUPLE"):
            count = {"EMPTY_TUPLE": 0, "TUPLE1": 1, "TUPLE2": 2, "TUPLE3": 3}.get(name)
            self.stack.append(tuple(self.pop_to_mark() if count is None else self.pop(count)))
        elif name == "REDUCE":
            func, _ = self.pop(2)
            if not (isinstance(func, _Global) and func in _REBUILDERS):
                _refuse_call(func)
            self.stack.append(_OTHER)
        elif name == "NEWOBJ":
            cls, args = self.pop(2)
            if args != ():
                _refuse_call(cls)
            self.stack.append(_OTHER)
        elif name in ("NEWOBJ_EX", "OBJ", "PERSID"):
            raise ModelFileError(
                f"model file uses the pickle opcode {name}, which torch.save(model) never writes"
            )
        elif name == "BINPERSID":
            self.storage(self.pop()[0])
            self.stack.append(_OTHER)
        else:
            self.generic(opcode, arg)

    def generic(self, opcode: pickletools.OpcodeInfo, arg: Any) -> None:
        for kind in reversed(opcode.stack_before):
            if kind is pickletools.stackslice:
                self.pop_to_mark()
            elif kind is not pickletools.markobject:
                self.pop()
        after = opcode.stack_after
        if not opcode.stack_before and len(after) == 1 and after[0].name in _PUSH_LITERAL:
            self.stack.append(arg)
        else:
            self.stack.extend(_MARK if kind is pickletools.markobject else _OTHER for kind in after)

    def storage(self, pid: Any) -> None:
        """Record a tensor storage: ``("storage", storage_type, key, location, numel)``."""
        if not (
            isinstance(pid, tuple)
            and len(pid) == 5
            and pid[0] == "storage"
            and isinstance(pid[2], str)
            and isinstance(pid[4], int)
            and pid[4] >= 0
        ):
            raise ModelFileError(
                "model file refers to a tensor storage it does not describe as torch.save does"
            )
        self.storages.setdefault(pid[2], pid[4])


def _refuse_call(func: Any) -> None:
    shown = repr(str(func)) if isinstance(func, _Global) else "an object the pickle built"
    raise ModelFileError(
        f"model file calls {shown} while loading, which torch.save(model) never does "
        "(a call can allocate any amount of memory): save the model with torch.save(model)"
    )


def check_model_file(data: bytes, *, limits: SizeLimits = _LIMITS) -> int:
    """Check a ``torch.save`` file's sizes and calls without loading it; its parameter count.

    Reads the zip directory (inflated sizes, compression ratios) and walks every pickle in
    it without executing anything: refuses calls ``torch.save(model)`` never writes and more
    storage elements than ``limits.max_params``.

    Raises:
        ModelFileError: not a zip written by ``torch.save``, or a call it never writes.
        SizeLimitError: past a cap (the message names the cap and the number).
    """
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise ModelFileError(
            "not a model file written by torch.save: expected its zip archive (the legacy "
            "format of _use_new_zipfile_serialization=False is not accepted)"
        ) from None
    with archive:
        records = limits.check_archive(archive, "model file")
        scan = _PickleScan()
        for record in records:
            if record.filename.endswith(".pkl"):
                if record.file_size > _MAX_PICKLE_BYTES:
                    raise SizeLimitError(
                        f"model file's pickle {record.filename!r} has {record.file_size:,} "
                        f"bytes; the limit is {_MAX_PICKLE_BYTES:,} (torch.save keeps tensors "
                        "outside it)"
                    )
                try:
                    scan.run(archive.read(record))
                except (zipfile.BadZipFile, EOFError, OSError) as exc:
                    raise ModelFileError(f"not a model file written by torch.save: {exc}") from None
    count = sum(scan.storages.values())
    limits.check_params(count, "model file")
    return count


def load_torch_model(
    data: bytes,
    *,
    allowed_import_paths: Sequence[str] = (),
    limits: SizeLimits = _LIMITS,
) -> nn.Module:
    """Load a whole model written by ``torch.save(model)`` from ``data``.

    Args:
        data: the file's bytes.
        allowed_import_paths: module prefixes (e.g. ``"mycompany.models"``) whose classes may
            also appear; set by the service operator, never by an upload.
        limits: caps on the file's inflated size and parameter count, checked before anything
            is built (``check_model_file``).

    Raises:
        ModelFileError: not a torch file, a state dict instead of a model, a class outside the
            allowlist (the message names it), or a call ``torch.save(model)`` never writes.
        SizeLimitError: the file is past a cap of ``limits``.
    """
    check_model_file(data, limits=limits)
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
