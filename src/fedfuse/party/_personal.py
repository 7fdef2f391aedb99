"""Personalization recipes, as adapter wrappers a ``Party`` uses like any model adapter.

- **Personal layers** (``PersonalAdapter(adapter, personal=head_layer(w))``): the named
  parameters, typically the classifier head, never leave the party. ``get_weights`` shows only
  the shared parameters, so the party's updates omit the personal ones and the aggregator's
  global model never has them; ``set_weights`` loads the shared parameters next to the party's
  own personal ones, which only local training changes.
- **Fine-tuning** (``finetune=TrainConfig(...)``, ``finetune_data=party's train split``):
  ``evaluate`` and ``predict`` first train a copy of the received model on the party's data
  for a few epochs and measure *that* model, the one the party would deploy; the weights the
  party holds for federated training are restored afterwards.

Being adapters, both work with every transport and with the party's other options
(compression, skipping) unchanged. In simulation, give each party its own ``PersonalAdapter``
around one shared model adapter.

References:
    Arivazhagan et al., "Federated Learning with Personalization Layers", 2019 (FedPer).
    Wang et al., "Federated Evaluation of On-device Personalization", 2019 (fine-tuning).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fedfuse._natural import natural_key
from fedfuse.data import ArrayDataset
from fedfuse.models import TrainConfig
from fedfuse.weights import Weights

__all__ = ["PersonalAdapter", "head_layer", "split_personal"]


def head_layer(weights: Mapping[str, np.ndarray]) -> tuple[str, ...]:
    """The names of the last module's parameters (``("4.bias", "4.weight")`` for a Sequential)."""
    prefixes = {name.rpartition(".")[0] for name in weights}
    last = max(prefixes, key=natural_key)
    return tuple(sorted(n for n in weights if n.rpartition(".")[0] == last))


def split_personal(
    weights: Mapping[str, np.ndarray], personal: Sequence[str]
) -> tuple[Weights, Weights]:
    """``(shared, personal)``: a name is personal if it equals or starts with an entry + ``.``."""

    def is_personal(name: str) -> bool:
        return any(name == p or name.startswith(p.rstrip(".") + ".") for p in personal)

    shared = {n: a for n, a in weights.items() if not is_personal(n)}
    own = {n: a for n, a in weights.items() if is_personal(n)}
    return shared, own


class PersonalAdapter:
    """One party's view of a model adapter: personal parameters and/or local fine-tuning.

    Args:
        adapter: the model adapter (it may be shared by several parties in simulation).
        personal: names (or module prefixes) of parameters that stay with the party; their
            initial values are the adapter's current ones.
        finetune: train this long on ``finetune_data`` before ``evaluate`` / ``predict``.
        finetune_data: the party's training split (needed with ``finetune``).
    """

    def __init__(
        self,
        adapter: Any,
        personal: Sequence[str] = (),
        *,
        finetune: TrainConfig | None = None,
        finetune_data: ArrayDataset | None = None,
    ) -> None:
        self.adapter = adapter
        self.personal = tuple(personal)
        self.finetune = finetune
        self.finetune_data = finetune_data
        self.own = {n: a.copy() for n, a in self._split(adapter.get_weights())[1].items()}

    def _split(self, weights: Mapping[str, np.ndarray]) -> tuple[Weights, Weights]:
        return split_personal(weights, self.personal)

    @property
    def supports_dp_sgd(self) -> bool:
        return bool(getattr(self.adapter, "supports_dp_sgd", False))

    def get_weights(self) -> Weights:
        """The shared parameters only."""
        return self._split(self.adapter.get_weights())[0]

    def set_weights(self, weights: Mapping[str, np.ndarray]) -> None:
        """Load shared ``weights`` together with this party's personal parameters."""
        self.adapter.set_weights({**weights, **self.own})

    def fit(self, data: ArrayDataset, config: TrainConfig) -> dict[str, float]:
        metrics = self.adapter.fit(data, config)
        self.own = self._split(self.adapter.get_weights())[1]
        return metrics

    def _finetuned(self, fn, *args):
        if self.finetune is None:
            return fn(*args)
        if self.finetune_data is None or len(self.finetune_data) == 0:
            raise ValueError("fine-tuning needs the party's training data (finetune_data)")
        received = self.adapter.get_weights()
        try:
            self.adapter.fit(self.finetune_data, self.finetune)
            return fn(*args)
        finally:
            self.adapter.set_weights(received)

    def evaluate(self, data: ArrayDataset) -> dict[str, float]:
        """Metrics of the model this party would use (fine-tuned first if configured)."""
        return self._finetuned(self.adapter.evaluate, data)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self._finetuned(self.adapter.predict, x)
