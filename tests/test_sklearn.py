"""scikit-learn linear models federated by averaging coef_ / intercept_."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression, SGDClassifier

from fedfuse import Federation, LocalPool, TrainConfig
from fedfuse.data import federate, load_dataset
from fedfuse.models import SklearnAdapter


@pytest.fixture(scope="module")
def breast_cancer():
    return load_dataset("breast_cancer", seed=0)


def _federation(fed, adapter, epochs=5):
    return Federation(
        LocalPool.from_dataset(fed, adapter),
        adapter.get_weights(),
        config=TrainConfig(epochs=epochs),
        central_eval=lambda w: (adapter.set_weights(w), adapter.evaluate(fed.test))[1],
    )


def test_weights_are_coef_and_intercept_starting_at_zero():
    binary = SklearnAdapter(LogisticRegression(), 30, [0, 1]).get_weights()
    assert {k: v.shape for k, v in binary.items()} == {"coef_": (1, 30), "intercept_": (1,)}
    assert not binary["coef_"].any()
    multi = SklearnAdapter(SGDClassifier(), 64, range(10)).get_weights()
    assert multi["coef_"].shape == (10, 64)


def test_hospitals_federate_logistic_regression_close_to_pooled_training(breast_cancer):
    train, test = breast_cancer
    hospitals = federate(train, test, num_parties=3, scheme="dirichlet", alpha=2.0, seed=0)
    adapter = SklearnAdapter(LogisticRegression(), train.x.shape[1], [0, 1])
    history = _federation(hospitals, adapter).run(5)
    pooled = LogisticRegression(max_iter=1000).fit(train.x, train.y).score(test.x, test.y)
    federated = history[-1]["central"]["accuracy"]
    assert federated > 0.93
    assert federated > pooled - 0.03


def test_linear_svm_learns_label_skewed_digits_with_partial_fit(digits):
    train, test = digits
    fed = federate(train, test, num_parties=5, scheme="classes", classes_per_party=3, seed=0)
    assert any(np.count_nonzero(c) < 10 for c in fed.label_stats().values())
    adapter = SklearnAdapter(SGDClassifier(loss="hinge", alpha=1e-2), 64, range(10))
    history = _federation(fed, adapter, epochs=2).run(8)
    assert history[-1]["central"]["accuracy"] > 0.8  # 3 of 10 classes per party
    assert "loss" in history[-1]["central"]  # hinge loss: an SVM has no probabilities


def test_local_training_starts_from_the_weights_sent(breast_cancer):
    train, test = breast_cancer
    good = LogisticRegression(max_iter=1000).fit(train.x, train.y)
    adapter = SklearnAdapter(LogisticRegression(), train.x.shape[1], [0, 1])
    adapter.set_weights(
        {"coef_": good.coef_.astype(float), "intercept_": good.intercept_.astype(float)}
    )
    adapter.fit(train, TrainConfig(epochs=1))
    assert np.allclose(adapter.get_weights()["coef_"], good.coef_, atol=0.05)
    assert adapter.evaluate(test)["accuracy"] > 0.93


def test_logistic_regression_refuses_a_party_without_every_class(digits):
    train, test = digits
    fed = federate(train, test, num_parties=5, scheme="classes", classes_per_party=2, seed=0)
    adapter = SklearnAdapter(LogisticRegression(), 64, range(10))
    record = _federation(fed, adapter).run_round()
    assert not record["fused"]
    assert len(record["failed"]) == 5
    assert all("use SGDClassifier" in reason for reason in record["failed"].values())
