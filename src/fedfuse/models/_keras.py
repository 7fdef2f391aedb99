"""The Keras 3 model adapter: a ``keras.Model`` (PyTorch backend) behind the ``ModelAdapter``
contract, so a Keras model federates exactly like a PyTorch one.

Weights are the model's floating-point variables (trainable ones and statistics such as
BatchNorm's moving mean) named by their Keras path (``"net/dense/kernel"``); optimizer state
stays local and is fresh in every ``fit``, as with ``TorchAdapter``. Optimizers are named the
way Keras users write them: ``"adam"``, ``"Adam"``, ``"optimizers.Adam"``,
``"keras.optimizers.Adam"``.

Keras is imported on first use with ``KERAS_BACKEND=torch`` (unless the user set another
backend, which is refused with a message): TensorFlow is never needed.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import math
import random
import tempfile
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fedfuse._extras import import_keras
from fedfuse.data import ArrayDataset
from fedfuse.models._config import TrainConfig
from fedfuse.models._files import ModelFileError
from fedfuse.models._registry import ModelType, register_model_type
from fedfuse.models._torch import torch_seed
from fedfuse.weights import SizeLimitError, SizeLimits, Weights, check_compatible

__all__ = ["KerasAdapter", "keras_optimizer", "load_keras_model"]

_PREFIXES = ("tf.keras.optimizers.", "keras.optimizers.", "optimizers.", "torch.optim.", "optim.")


def _optimizer_classes(keras: Any) -> dict[str, type]:
    base = keras.optimizers.Optimizer
    wrappers = {"LossScaleOptimizer", "MultiOptimizer", "Optimizer"}
    return {
        name.lower(): obj
        for name, obj in vars(keras.optimizers).items()
        if isinstance(obj, type) and issubclass(obj, base) and name not in wrappers
    }


def keras_optimizer(name: str, learning_rate: float) -> Any:
    """A fresh Keras optimizer for ``name`` (case-insensitive, with or without a module prefix)."""
    keras = import_keras()
    classes = _optimizer_classes(keras)
    key = str(name).strip()
    for prefix in _PREFIXES:
        if key.lower().startswith(prefix):
            key = key[len(prefix) :]
    try:
        cls = classes[key.lower()]
    except KeyError:
        raise ValueError(
            f"unknown Keras optimizer {name!r}; choose one of: {', '.join(sorted(classes))} "
            "(as written in Keras, e.g. 'adam' or 'optimizers.Adam')"
        ) from None
    return cls(learning_rate=learning_rate)


def _ends_in_softmax(model: Any) -> bool:
    last = model.layers[-1] if getattr(model, "layers", None) else None
    if last is None:
        return False
    if type(last).__name__ == "Softmax":
        return True
    return getattr(getattr(last, "activation", None), "__name__", "") == "softmax"


@contextlib.contextmanager
def _keras_seed(keras: Any, seed: int) -> Iterator[None]:
    """``keras.utils.set_random_seed(seed)`` for one block, without changing the caller's RNGs.

    Keras has no per-call generator: it seeds Python's, NumPy's and the backend's global ones.
    The block holds the lock of ``torch_seed`` (no other thread draws meanwhile) and the
    caller's Python, NumPy and torch states are put back afterwards.
    """
    with torch_seed(seed):
        python_state, numpy_state = random.getstate(), np.random.get_state()
        keras.utils.set_random_seed(seed)
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


class KerasAdapter:
    """Wraps a built ``keras.Model`` with get/set weights, local training and evaluation.

    Args:
        model: a Keras 3 model on the torch backend, already built (it has its variables).
        loss: a Keras loss; by default the loss the model was compiled with, else sparse
            categorical cross-entropy on logits, or on probabilities when the model ends in a
            softmax.
    """

    def __init__(self, model: Any, loss: Any = None) -> None:
        self.keras = import_keras()
        self.model = model
        self.loss = loss
        variables = {}
        for v in model.weights:
            if not v.value.is_floating_point():
                continue
            if v.path in variables:
                raise ValueError(f"two model variables share the path {v.path!r}; rename a layer")
            variables[v.path] = v
        if not variables:
            raise ValueError("the Keras model has no variables: build it (keras.Input) first")
        self._variables = dict(sorted(variables.items()))

    def _loss(self) -> Any:
        if self.loss is not None:
            return self.loss
        compiled = getattr(self.model, "loss", None)
        if compiled is not None:
            return compiled
        return self.keras.losses.SparseCategoricalCrossentropy(
            from_logits=not _ends_in_softmax(self.model)
        )

    def get_weights(self) -> Weights:
        """A copy of the current variables as named numpy arrays, sorted by path."""
        # On the torch backend a variable's value is a tensor: copy it without Keras'
        # numpy round trip (which warns under numpy 2).
        return {name: v.value.detach().cpu().numpy().copy() for name, v in self._variables.items()}

    def set_weights(self, weights: Mapping[str, np.ndarray]) -> None:
        """Assign ``weights``; names, shapes and dtypes must match exactly."""
        check_compatible(self.get_weights(), weights)
        for name, v in self._variables.items():
            v.assign(np.asarray(weights[name]))

    def fit(self, data: ArrayDataset, config: TrainConfig) -> dict[str, float]:
        """Train for ``config.epochs`` with a fresh ``config.optimizer``; mean loss and accuracy."""
        config.validate()
        optimizer = keras_optimizer(config.optimizer, config.learning_rate)
        if len(data) == 0:
            raise ValueError("cannot train on an empty dataset")
        seeded = (
            _keras_seed(self.keras, config.seed)
            if config.seed is not None
            else contextlib.nullcontext()
        )
        with seeded:
            return self._fit(data, config, optimizer)

    def _fit(self, data: ArrayDataset, config: TrainConfig, optimizer: Any) -> dict[str, float]:
        self.model.compile(optimizer=optimizer, loss=self._loss(), metrics=["accuracy"])
        history = self.model.fit(
            np.asarray(data.x, dtype=np.float32),
            np.asarray(data.y),
            epochs=config.epochs,
            batch_size=config.batch_size,
            shuffle=True,
            verbose=0,
        ).history
        return {
            "loss": float(np.mean(history["loss"])),
            "accuracy": float(np.mean(history["accuracy"])),
        }

    def evaluate(self, data: ArrayDataset, batch_size: int = 1024) -> dict[str, float]:
        """Mean loss and accuracy of the current weights on ``data``."""
        if len(data) == 0:
            raise ValueError("cannot evaluate on an empty dataset")
        if not getattr(self.model, "compiled", False) or "accuracy" not in str(
            self.model.metrics_names
        ):
            self.model.compile(optimizer="sgd", loss=self._loss(), metrics=["accuracy"])
        result = self.model.evaluate(
            np.asarray(data.x, dtype=np.float32),
            np.asarray(data.y),
            batch_size=batch_size,
            verbose=0,
            return_dict=True,
        )
        return {"loss": float(result["loss"]), "accuracy": float(result["accuracy"])}

    def predict(self, x: np.ndarray, batch_size: int = 1024) -> np.ndarray:
        """Model outputs for ``x`` as a numpy array."""
        return np.asarray(
            self.model.predict(np.asarray(x, dtype=np.float32), batch_size=batch_size, verbose=0)
        )


_LIMITS = SizeLimits()  # the default caps (an immutable value)


def load_keras_model(
    data: bytes, *, allowed_import_paths: Sequence[str] = (), limits: SizeLimits = _LIMITS
) -> Any:
    """Load a ``.keras`` file from its bytes with ``safe_mode=True`` (no Python from the file).

    Custom layers may come only from modules the operator allowed (``allowed_import_paths``):
    they are imported first, so classes they register with
    ``keras.saving.register_keras_serializable`` are known. Before Keras reads the weights, the
    zip's inflated size and the architecture's parameter count (built on torch's ``meta``
    device, which allocates nothing) are checked against ``limits``.

    Raises:
        ModelFileError: not a ``.keras`` file, or a file Keras refuses to load (e.g. a
            ``Lambda`` layer holding Python code, or an unknown class).
        SizeLimitError: the archive inflates past ``limits.max_bytes`` (or is a zip bomb), or
            the architecture holds more than ``limits.max_params`` parameters.
    """
    keras = import_keras()
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            limits.check_archive(archive, "Keras model file")
            config = json.loads(archive.read("config.json"))
    except (zipfile.BadZipFile, KeyError, ValueError, RecursionError) as exc:
        if isinstance(exc, SizeLimitError):
            raise
        raise ModelFileError(
            "not a .keras model file (expected the zip written by model.save, with its config.json)"
        ) from None
    for module in allowed_import_paths:
        importlib.import_module(module)
    try:
        # the architecture alone, its variables on torch's meta device: counted, not allocated
        with keras.device("meta"):
            shell = keras.saving.deserialize_keras_object(config, safe_mode=True)
        limits.check_params(sum(math.prod(v.shape) for v in shell.weights), "Keras model file")
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "model.keras"
            path.write_bytes(data)
            return keras.saving.load_model(path, safe_mode=True)
    except (ValueError, TypeError, KeyError, AttributeError, OSError, zipfile.BadZipFile) as exc:
        if isinstance(exc, SizeLimitError):
            raise
        raise ModelFileError(f"cannot load Keras model file: {str(exc).splitlines()[0]}") from None


def _load_keras_adapter(
    data: bytes, allowed_import_paths: Sequence[str], *, limits: SizeLimits = _LIMITS
) -> KerasAdapter:
    model = load_keras_model(data, allowed_import_paths=allowed_import_paths, limits=limits)
    return KerasAdapter(model)


register_model_type("keras", ModelType(_load_keras_adapter))
