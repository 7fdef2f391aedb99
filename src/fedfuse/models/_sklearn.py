"""The scikit-learn adapter: linear classifiers federated by averaging ``coef_``/``intercept_``.

Any linear classifier whose learned state is ``coef_``, ``intercept_`` and ``classes_`` works:
``LogisticRegression``, ``SGDClassifier`` (logistic loss, or hinge loss for a linear SVM),
``Perceptron``, ``PassiveAggressiveClassifier``.

Local training starts from the weights the party was sent:

- estimators with ``partial_fit`` (the SGD family) make ``config.epochs`` passes with
  ``partial_fit(classes=all classes)``, so a party that lacks some classes (label skew) still
  trains the full model;
- others (``LogisticRegression``) are warm-started and run ``config.epochs`` solver
  iterations (each a full pass over the local data). Their solvers need every class present
  in each party's data.

The estimator's own hyperparameters (regularization, loss, step-size schedule) govern training;
``TrainConfig.optimizer``, ``learning_rate`` and ``batch_size`` do not apply.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fedfuse._extras import import_extra
from fedfuse.data import ArrayDataset
from fedfuse.models._config import TrainConfig
from fedfuse.weights import Weights, check_compatible

__all__ = ["SklearnAdapter"]


def _float64(x: np.ndarray) -> np.ndarray:
    # coef_ is float64; the SGD solvers refuse to mix it with float32 inputs
    return np.asarray(x, dtype=np.float64)


class SklearnAdapter:
    """Wraps a scikit-learn linear classifier behind the ``ModelAdapter`` contract.

    Args:
        estimator: an unfitted linear classifier (e.g. ``LogisticRegression()``).
        num_features: input dimension.
        classes: every class label of the federation (parties may hold only some of them).

    The weights are ``coef_`` (``(1, d)`` for two classes, ``(K, d)`` otherwise) and
    ``intercept_``, in float64, starting at zero.
    """

    def __init__(self, estimator: Any, num_features: int, classes: Sequence[int]) -> None:
        self.estimator = estimator
        self.classes = np.asarray(classes)
        rows = 1 if len(self.classes) == 2 else len(self.classes)
        estimator.classes_ = self.classes
        estimator.coef_ = np.zeros((rows, num_features))
        estimator.intercept_ = np.zeros(rows)

    def get_weights(self) -> Weights:
        return {
            "coef_": np.array(self.estimator.coef_, dtype=np.float64),
            "intercept_": np.array(self.estimator.intercept_, dtype=np.float64),
        }

    def set_weights(self, weights: Mapping[str, np.ndarray]) -> None:
        check_compatible(self.get_weights(), weights)
        self.estimator.coef_ = np.array(weights["coef_"])
        self.estimator.intercept_ = np.array(weights["intercept_"])

    def fit(self, data: ArrayDataset, config: TrainConfig) -> dict[str, float]:
        """Train from the current weights (see the module docstring); returns loss and accuracy."""
        config.validate()
        if len(data) == 0:
            raise ValueError("cannot train on an empty dataset")
        exceptions = import_extra("sklearn.exceptions", "sklearn", "SklearnAdapter")
        est = self.estimator
        if "random_state" in est.get_params() and config.seed is not None:
            est.set_params(random_state=config.seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", exceptions.ConvergenceWarning)
            if hasattr(est, "partial_fit"):
                x = _float64(data.x)
                for _ in range(config.epochs):
                    est.partial_fit(x, data.y, classes=self.classes)
            else:
                self._warm_fit(data, config.epochs)
        return self.evaluate(data)

    def _warm_fit(self, data: ArrayDataset, iterations: int) -> None:
        missing = np.setdiff1d(self.classes, data.y)
        if len(missing):
            raise ValueError(
                f"{type(self.estimator).__name__} needs every class in each party's data; this "
                f"party has no examples of {missing.tolist()}: use SGDClassifier(loss='log_loss') "
                "for label-skewed parties"
            )
        coef, intercept = self.estimator.coef_, self.estimator.intercept_
        self.estimator.set_params(warm_start=True, max_iter=iterations)
        self.estimator.fit(_float64(data.x), data.y)
        if self.estimator.coef_.shape != coef.shape:
            self.estimator.coef_, self.estimator.intercept_ = coef, intercept
            raise ValueError("the estimator changed the shape of coef_; is it a linear classifier?")

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Class scores ``(N, K)``: probabilities where the estimator has them, else margins."""
        est, x = self.estimator, _float64(x)
        if hasattr(est, "predict_proba"):
            return est.predict_proba(x)
        scores = est.decision_function(x)
        return np.column_stack([-scores, scores]) if scores.ndim == 1 else scores

    def evaluate(self, data: ArrayDataset) -> dict[str, float]:
        """Accuracy, and log-loss (probabilistic models) or hinge loss (margins)."""
        if len(data) == 0:
            raise ValueError("cannot evaluate on an empty dataset")
        metrics = import_extra("sklearn.metrics", "sklearn", "SklearnAdapter")
        labels, x = self.classes, _float64(data.x)
        accuracy = float(np.mean(self.estimator.predict(x) == data.y))
        if hasattr(self.estimator, "predict_proba"):
            loss = metrics.log_loss(data.y, self.estimator.predict_proba(x), labels=labels)
        else:
            margins = self.estimator.decision_function(x)
            loss = metrics.hinge_loss(data.y, margins, labels=labels)
        return {"loss": float(loss), "accuracy": accuracy}
