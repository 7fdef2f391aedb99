"""Model ensembles from edges: every party trains its own model; the aggregator combines them.

``train_edge_models`` asks each party for a model trained only on its data (full weights, one
round, no fusion). ``Ensemble`` predicts with all of them: the average of their class
probabilities, optionally weighted (``validation_weights``: each party's score of its own model
on its own validation split). ``distill`` turns an ensemble into one deployable model: a
student trained to match the ensemble's probabilities on inputs the aggregator holds (unlabeled
data, or synthetic inputs), so no party's data is needed.

References:
    Hinton, Vinyals and Dean, "Distilling the Knowledge in a Neural Network", 2015.
    Lin et al., "Ensemble Distillation for Robust Model Fusion in Federated Learning",
    NeurIPS 2020.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from fedfuse.data import ArrayDataset, FederatedDataset
from fedfuse.federation import Federation, Sampling, derive_seed, validate_update
from fedfuse.fusion import Update
from fedfuse.models import TorchAdapter, TrainConfig, make_optimizer, torch_seed
from fedfuse.party import EvaluateTask, Evaluation, TaskError, TrainTask
from fedfuse.runtime import LocalPool, PartyPool
from fedfuse.weights import Weights

__all__ = [
    "ENSEMBLE_WEIGHTINGS",
    "Ensemble",
    "compare_ensemble",
    "distill",
    "train_edge_models",
    "validation_weights",
]

ENSEMBLE_WEIGHTINGS = ("uniform", "validation", "classwise")


def train_edge_models(
    pool: PartyPool,
    initial: Weights | Mapping[str, Weights],
    config: TrainConfig,
    *,
    party_ids: Sequence[str] | None = None,
    seed: int = 0,
) -> dict[str, Update]:
    """Each party trains its own model from ``initial`` and sends it whole.

    ``initial`` is one set of weights for every party, or a mapping party id -> weights
    (independent initializations). Failed or invalid replies raise ``ValueError`` with the
    reasons: an ensemble silently missing a member would be misleading.
    """
    party_ids = list(party_ids or pool.party_ids())
    per_party = isinstance(next(iter(initial.values()), None), Mapping)
    starts = {pid: initial[pid] if per_party else initial for pid in party_ids}
    tasks = {
        pid: TrainTask(0, starts[pid], config.with_seed(derive_seed(seed, 0, pid)), False)
        for pid in party_ids
    }
    models, problems = {}, {}
    for pid, reply in pool.dispatch(tasks):
        if isinstance(reply, TaskError):
            problems[pid] = reply.message
        elif not isinstance(reply, Update) or reply.is_delta:
            problems[pid] = f"expected full weights, got {type(reply).__name__}"
        elif (reason := validate_update(reply, starts[pid])) is not None:
            problems[pid] = reason
        else:
            models[pid] = reply
    if problems:
        raise ValueError(f"edge training failed: {problems}")
    return models


def _padded(counts: Sequence[float], size: int) -> np.ndarray:
    counts = np.asarray(counts, dtype=np.float64)
    return np.pad(counts, (0, max(0, size - len(counts))))[:size]


def validation_weights(pool: PartyPool, models: Mapping[str, Update]) -> dict[str, float]:
    """Each party's accuracy of its own model on its own test (validation) split."""
    scores = {}
    for pid, update in models.items():
        for _, reply in pool.dispatch({pid: EvaluateTask(0, update.weights)}):
            if not isinstance(reply, Evaluation):
                raise ValueError(f"party {pid!r} could not validate its model: {reply}")
            scores[pid] = float(reply.metrics["accuracy"])
    return scores


def _probabilities(outputs: np.ndarray) -> np.ndarray:
    """Class probabilities from logits or log-probabilities (softmax is shift-invariant)."""
    z = outputs - outputs.max(axis=1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(axis=1, keepdims=True)


@dataclass
class Ensemble:
    """Averaged class probabilities of several models that share one architecture.

    Args:
        adapter: an adapter of the architecture (its weights are overwritten while predicting).
        members: each member's weights.
        weights: each member's weight in the average (uniform by default): one number per
            member, or one row per member with a weight per class (e.g. each party's label
            counts: a class is then predicted by the members that saw it), after which each
            prediction is renormalized.
    """

    adapter: Any
    members: Sequence[Weights]
    weights: Sequence[float] | np.ndarray | None = None

    def _coefficients(self) -> np.ndarray:
        given = self.weights if self.weights is not None else [1.0] * len(self.members)
        c = np.asarray(given, dtype=np.float64)
        if len(c) != len(self.members) or c.ndim not in (1, 2) or (c < 0).any():
            raise ValueError(
                "ensemble weights must be one non-negative number (or row per class) per member"
            )
        c = c.reshape(len(c), -1) + 1e-12  # a class no member saw: the plain mean
        return c / c.sum(axis=0)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Weighted mean of the members' class probabilities, ``(N, classes)``."""
        coefficients = self._coefficients()
        total = None
        for c, member in zip(coefficients, self.members, strict=True):
            self.adapter.set_weights(member)
            p = c * _probabilities(np.asarray(self.adapter.predict(x), dtype=np.float64))
            total = p if total is None else total + p
        return total / total.sum(axis=1, keepdims=True)

    def evaluate(self, data: ArrayDataset) -> dict[str, float]:
        """Accuracy and mean negative log-likelihood of the averaged probabilities."""
        p = self.predict(data.x)
        y = np.asarray(data.y, dtype=np.int64)
        loss = -np.mean(np.log(np.maximum(p[np.arange(len(y)), y], 1e-12)))
        return {"loss": float(loss), "accuracy": float(np.mean(p.argmax(axis=1) == y))}


def distill(
    teacher: Ensemble,
    student: TorchAdapter,
    x: np.ndarray,
    config: TrainConfig,
    *,
    temperature: float = 1.0,
) -> dict[str, float]:
    """Train ``student`` to match ``teacher``'s probabilities on inputs ``x``.

    Minimizes ``KL(p_teacher || softmax(student(x) / T))`` with ``config``'s optimizer, epochs
    and batch size; the teacher's probabilities are sharpened or softened by the same ``T``.
    Returns the mean distillation loss of the last epoch.
    """
    config.validate()
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    p = teacher.predict(x)
    target = torch.from_numpy(_probabilities(np.log(np.maximum(p, 1e-12)) / temperature)).float()
    inputs = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    seeded = torch_seed(config.seed) if config.seed is not None else contextlib.nullcontext()
    with seeded:  # the batch order and the student's dropout
        return _distill(student.module, inputs, target, config, temperature)


def _distill(
    module: nn.Module,
    inputs: torch.Tensor,
    target: torch.Tensor,
    config: TrainConfig,
    temperature: float,
) -> dict[str, float]:
    optimizer = make_optimizer(config.optimizer, module.parameters(), config.learning_rate)
    module.train()
    last = 0.0
    for _ in range(config.epochs):
        order, total = torch.randperm(len(inputs)), 0.0
        for start in range(0, len(inputs), config.batch_size):
            idx = order[start : start + config.batch_size]
            log_q = torch.log_softmax(module(inputs[idx]) / temperature, dim=1)
            loss = torch.nn.functional.kl_div(log_q, target[idx], reduction="batchmean")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(idx)
        last = total / len(inputs)
    return {"distill_loss": last}


def compare_ensemble(
    fed: FederatedDataset,
    model_fn: Callable[[], nn.Module],
    config: TrainConfig,
    rounds: int,
    *,
    weighting: str = "validation",
    distill_epochs: int = 10,
    sampling: Sampling | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """FedAvg against an ensemble of edge models (and its distillation) on the same parties.

    Edge models train ``rounds * epochs`` local epochs (FedAvg's local compute) from the same
    initial model. The aggregator's central test set is split in two (seeded): one half is the
    unlabeled data it distills on, the other half is where every model is scored.
    Three ensembles are reported: ``uniform``, weighted by each party's validation accuracy, and
    weighted class by class with the parties' label counts (``classwise``, which the parties
    share); ``weighting`` names the one that is distilled (with ``config``'s optimizer and
    learning rate for ``distill_epochs`` epochs).
    """
    if weighting not in ENSEMBLE_WEIGHTINGS:
        raise ValueError(
            f"weighting must be one of {', '.join(ENSEMBLE_WEIGHTINGS)}, got {weighting!r}"
        )
    if not isinstance(distill_epochs, int) or distill_epochs < 1:
        raise ValueError(f"distill_epochs must be an integer >= 1, got {distill_epochs!r}")
    if fed.test is None or len(fed.test) < 2:
        raise ValueError("the aggregator needs a central test set to distill on and score")
    order = np.random.default_rng(seed).permutation(len(fed.test))
    unlabeled = fed.test.subset(order[: len(order) // 2]).x
    scored = fed.test.subset(order[len(order) // 2 :])
    with torch_seed(seed):
        adapter = TorchAdapter(model_fn())
    initial = adapter.get_weights()
    pool = LocalPool.from_dataset(fed, adapter)

    def accuracy(weights: Weights) -> float:
        adapter.set_weights(weights)
        return adapter.evaluate(scored)["accuracy"]

    fedavg = Federation(pool, initial, config=config, sampling=sampling, seed=seed)
    history = fedavg.run(rounds)
    local = dataclasses.replace(config, epochs=rounds * config.epochs, share_label_counts=True)
    edges = train_edge_models(pool, initial, local, seed=seed)
    scores = validation_weights(pool, edges)
    members = [edges[p].weights for p in fed.party_ids]
    uniform = Ensemble(adapter, members)
    weighted = Ensemble(adapter, members, [scores[p] for p in fed.party_ids])
    # the class-wise ensemble weighs members by the label counts the parties sent
    per_class = [_padded(edges[p].info["label_counts"], fed.num_classes) for p in fed.party_ids]
    classwise = Ensemble(adapter, members, per_class)
    result = {
        "scored_examples": len(scored),
        "distill_examples": len(unlabeled),
        "fedavg": accuracy(fedavg.weights),
        "edges": {p: accuracy(edges[p].weights) for p in fed.party_ids},
        "validation_scores": scores,
        "ensemble": uniform.evaluate(scored)["accuracy"],
        "ensemble_weighted": weighted.evaluate(scored)["accuracy"],
        "ensemble_classwise": classwise.evaluate(scored)["accuracy"],
    }
    with torch_seed(seed + 1):
        student = TorchAdapter(model_fn())
    teacher = {"uniform": uniform, "validation": weighted, "classwise": classwise}[weighting]
    distill_config = dataclasses.replace(config, epochs=distill_epochs, seed=seed)
    distill(teacher, student, unlabeled, distill_config)
    result["distilled"] = student.evaluate(scored)["accuracy"]
    result["history"] = history
    return result
