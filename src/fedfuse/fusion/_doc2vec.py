"""Fusion of doc2vec models: average each embedding row over the parties that trained it.

Parties that agreed on one vocabulary share the word vectors (``wv.vectors``) and the output
weights (``syn1neg`` or ``syn1``), one row per word; each keeps its own document vectors. A party
only moves the rows of words it saw (and, through negative sampling, of the words it drew as
negatives), so a plain mean would shrink every party's words towards the untouched rows of the
others. ``doc2vec_fusion`` instead averages each row over the parties whose update changed it:

    Δ_r = Σ_k n_k Δ_{k,r} / Σ_{k : Δ_{k,r} ≠ 0} n_k

and leaves rows that no party changed as they were. Updates are folded one at a time (memory
O(model) plus one weight per row).

References:
    Le and Mikolov, "Distributed Representations of Sentences and Documents", ICML 2014.
    McMahan et al., "Communication-Efficient Learning of Deep Networks from Decentralized
    Data", AISTATS 2017 (the example weights ``n_k``).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from fedfuse.fusion._base import FusionError, FusionTransform, Update, stateless
from fedfuse.weights import Weights

__all__ = ["doc2vec_fusion"]


def _rows(arr: np.ndarray) -> np.ndarray:
    return arr.reshape(len(arr), -1) if arr.ndim > 1 else arr.reshape(-1, 1)


def doc2vec_fusion() -> FusionTransform:
    """A reducer: the example-weighted mean of each row over the parties that changed it.

    Accepts deltas or full weights (a full update's rows are compared with the global ones).
    The fused update has the kind (delta or full) of the updates it was given.
    """

    def reduce(updates: Iterable[Update], global_weights: Weights) -> list[Update]:
        sums: dict[str, np.ndarray] = {}
        row_weight: dict[str, np.ndarray] = {}
        total_examples, is_delta = 0, None
        for u in updates:
            is_delta = u.is_delta  # all of one kind: fuse() checks it
            n = float(u.num_examples)
            for name, arr in u.weights.items():
                delta = _rows(np.asarray(arr, dtype=np.float64))
                if not u.is_delta:
                    delta = delta - _rows(global_weights[name].astype(np.float64))
                if name not in sums:
                    sums[name] = np.zeros_like(delta)
                    row_weight[name] = np.zeros(len(delta))
                sums[name] += n * delta
                row_weight[name] += n * np.any(delta != 0, axis=1)
            total_examples += u.num_examples
        if is_delta is None:
            raise FusionError("no updates to fuse")
        fused = {}
        for name, acc in sums.items():
            reference = global_weights[name]
            weight = row_weight[name][:, None]
            delta = np.divide(acc, weight, out=np.zeros_like(acc), where=weight > 0)
            delta = delta.reshape(reference.shape)
            value = delta if is_delta else reference + delta
            fused[name] = value.astype(reference.dtype, copy=False)
        return [Update(fused, total_examples, {}, bool(is_delta), party_id="fused")]

    return stateless(reduce)
