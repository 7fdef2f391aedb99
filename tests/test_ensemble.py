"""Model ensembles from edges: averaged predictions, weighting, distillation, vs FedAvg."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fedfuse import LocalPool, TrainConfig
from fedfuse.data import ArrayDataset, federate
from fedfuse.models import TorchAdapter
from fedfuse.recipes import Ensemble, compare_ensemble, distill, train_edge_models


class _Fixed:
    """An adapter whose 'weights' are the log-probabilities it predicts for every input."""

    def set_weights(self, weights):
        self.logp = weights["logp"]

    def predict(self, x):
        return np.tile(self.logp, (len(x), 1))


def _member(*probabilities):
    return {"logp": np.log(np.asarray(probabilities))}


def test_ensemble_averages_probabilities_with_member_or_class_weights():
    a, b = _member(0.9, 0.1), _member(0.2, 0.8)
    x = np.zeros((1, 3))
    np.testing.assert_allclose(Ensemble(_Fixed(), [a, b]).predict(x), [[0.55, 0.45]])
    np.testing.assert_allclose(Ensemble(_Fixed(), [a, b], [3, 1]).predict(x), [[0.725, 0.275]])
    # class-wise: class 0 only from a, class 1 only from b, then renormalized
    classwise = Ensemble(_Fixed(), [a, b], [[1, 0], [0, 1]]).predict(x)
    np.testing.assert_allclose(classwise, [[0.9 / 1.7, 0.8 / 1.7]])
    with pytest.raises(ValueError, match="one non-negative number"):
        Ensemble(_Fixed(), [a, b], [1.0]).predict(x)


def _mlp():
    return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))


def test_edge_models_train_from_their_own_start_and_failures_raise(small_federation):
    fed = small_federation
    adapter = TorchAdapter(_mlp())
    start = adapter.get_weights()
    pool = LocalPool.from_dataset(fed, adapter)
    models = train_edge_models(pool, start, TrainConfig(epochs=1, learning_rate=0.1))
    assert sorted(models) == fed.party_ids
    assert all(not u.is_delta and u.num_examples == len(fed[p].train) for p, u in models.items())
    with pytest.raises(ValueError, match="edge training failed"):
        train_edge_models(pool, start, TrainConfig(epochs=1, learning_rate=-1.0))


def test_distillation_makes_one_student_agree_with_the_ensemble(digits):
    train, test = digits
    adapter = TorchAdapter(_mlp())
    adapter.fit(train, TrainConfig(epochs=5, optimizer="adam", learning_rate=0.003, seed=0))
    teacher = Ensemble(TorchAdapter(_mlp()), [adapter.get_weights()])
    torch.manual_seed(1)
    student = TorchAdapter(_mlp())
    config = TrainConfig(epochs=30, optimizer="adam", learning_rate=0.003, seed=0)
    distill(teacher, student, test.x[:200], config)
    agree = np.mean(
        student.predict(test.x[200:]).argmax(1) == adapter.predict(test.x[200:]).argmax(1)
    )
    assert agree > 0.9


def test_ensemble_and_its_distillation_beat_fedavg_on_non_iid_parties(digits):
    train, test = digits
    fed = federate(train, test, num_parties=5, scheme="dirichlet", alpha=0.5, seed=0)
    config = TrainConfig(epochs=1, batch_size=16, optimizer="adam", learning_rate=0.003)
    report = compare_ensemble(
        fed, _mlp, config, 10, weighting="classwise", distill_epochs=50, seed=0
    )
    best_edge = max(report["edges"].values())
    assert report["scored_examples"] + report["distill_examples"] == len(fed.test)
    assert report["ensemble"] > best_edge + 0.05
    assert report["ensemble_classwise"] > report["fedavg"] + 0.05
    assert report["distilled"] > report["fedavg"] + 0.03
    assert set(report["validation_scores"]) == set(fed.party_ids)


def test_scored_split_is_disjoint_from_the_distillation_inputs(digits):
    train, test = digits
    small = ArrayDataset(test.x[:40], test.y[:40])
    fed = federate(train, small, num_parties=2, scheme="iid", seed=0)
    report = compare_ensemble(fed, _mlp, TrainConfig(epochs=1), 1, distill_epochs=1, seed=0)
    assert report["scored_examples"] == 20 and report["distill_examples"] == 20


def test_simulate_runs_the_ensemble_use():
    from fedfuse import simulate

    result = simulate(use="ensemble", num_parties=3, rounds=2, distill_epochs=2)
    assert {"fedavg", "ensemble", "ensemble_classwise", "distilled"} <= set(result.report)
    assert len(result.report["edges"]) == 3
