"""Server optimizers: the fused delta is a pseudo-gradient for an optimizer on the aggregator.

Place them after a reducer: ``chain(fedavg(), server_adam(0.01))``. With ``Δ_t`` the fused
delta of round ``t`` (what the parties moved the model by, on average), each returns the step
the global model takes instead of ``Δ_t``:

    server_momentum:  m_t = β m_{t-1} + Δ_t                       step = η m_t
    server_adagrad:   m_t = β1 m_{t-1} + (1-β1) Δ_t
                      v_t = v_{t-1} + Δ_t²                          step = η m_t / (√v_t + τ)
    server_adam:      v_t = β2 v_{t-1} + (1-β2) Δ_t²               (same m_t and step)
    server_yogi:      v_t = v_{t-1} - (1-β2) Δ_t² sign(v_{t-1} - Δ_t²)

with ``m_{-1} = 0`` and ``v_{-1} = τ²``, as in Algorithm 2 of Reddi et al. (no bias
correction). The state is a dict of plain float32 numpy arrays (``{"m": {...}, "v": {...}}``),
so a checkpoint stores it and a resumed federation continues with the same moments.

References:
    Reddi et al., "Adaptive Federated Optimization", ICLR 2021 (FedAdagrad, FedAdam, FedYogi).
    Hsu et al., "Measuring the Effects of Non-Identical Data Distribution for Federated Visual
    Classification", 2019 (FedAvgM).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

from fedfuse.fusion._base import FusionTransform, Update, fused_update
from fedfuse.weights import Weights

__all__ = ["server_adagrad", "server_adam", "server_momentum", "server_yogi"]

SecondMoment = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _check(name: str, **values: object) -> None:
    """``ValueError`` unless every hyperparameter is a finite number in its range: the rate
    and ``eps`` > 0, the moment factors in [0, 1) (they come from REST forms and files)."""
    for key, value in values.items():
        ok = isinstance(value, int | float) and not isinstance(value, bool) and np.isfinite(value)
        if ok and key in ("server_learning_rate", "eps"):
            ok = value > 0
        elif ok:
            ok = 0 <= value < 1
        if not ok:
            rule = "a number > 0" if key in ("server_learning_rate", "eps") else "in [0, 1)"
            raise ValueError(f"{name}: {key} must be {rule}, got {value!r}")


def _step(fused: Update, step: dict[str, np.ndarray], global_weights: Weights) -> list[Update]:
    weights = {n: arr.astype(global_weights[n].dtype) for n, arr in step.items()}
    return [Update(weights, fused.num_examples, fused.metrics, True, fused.party_id)]


def server_momentum(server_learning_rate: float = 1.0, momentum: float = 0.9) -> FusionTransform:
    """Server momentum (FedAvgM): ``m ← β m + Δ``, step ``η m`` (``η = server_learning_rate``,
    ``β = momentum``).

    With ``momentum=0`` and ``server_learning_rate=1`` this is the reducer's own result.
    """
    _check("server_momentum", server_learning_rate=server_learning_rate, momentum=momentum)

    def init(global_weights: Weights) -> dict:
        return {"m": {n: np.zeros(a.shape, np.float32) for n, a in global_weights.items()}}

    def update(updates: Iterable[Update], state: dict, global_weights: Weights):
        fused = fused_update(updates, "server_momentum", delta=True)
        m = {n: momentum * state["m"][n] + fused.weights[n] for n in state["m"]}
        step = {n: server_learning_rate * a for n, a in m.items()}
        return _step(fused, step, global_weights), {"m": m}

    return FusionTransform(init, update)


def _adaptive(
    name: str, learning_rate: float, b1: float, eps: float, second_moment: SecondMoment
) -> FusionTransform:
    _check(name, server_learning_rate=learning_rate, b1=b1, eps=eps)

    def init(global_weights: Weights) -> dict:
        return {
            "m": {n: np.zeros(a.shape, np.float32) for n, a in global_weights.items()},
            "v": {n: np.full(a.shape, eps**2, np.float32) for n, a in global_weights.items()},
        }

    def update(updates: Iterable[Update], state: dict, global_weights: Weights):
        fused = fused_update(updates, name, delta=True)
        m, v, step = {}, {}, {}
        for n, delta in fused.weights.items():
            d = delta.astype(np.float32, copy=False)
            m[n] = b1 * state["m"][n] + (1 - b1) * d
            v[n] = second_moment(state["v"][n], d * d)
            step[n] = learning_rate * m[n] / (np.sqrt(v[n]) + eps)
        return _step(fused, step, global_weights), {"m": m, "v": v}

    return FusionTransform(init, update)


def server_adagrad(
    server_learning_rate: float = 0.1, b1: float = 0.9, eps: float = 1e-3
) -> FusionTransform:
    """Server Adagrad (FedAdagrad): ``v ← v + Δ²``, step ``η m / (√v + τ)``."""
    return _adaptive("server_adagrad", server_learning_rate, b1, eps, lambda v, d2: v + d2)


def server_adam(
    server_learning_rate: float = 0.03, b1: float = 0.9, b2: float = 0.99, eps: float = 1e-3
) -> FusionTransform:
    """Server Adam (FedAdam): ``v ← β2 v + (1-β2) Δ²``, step ``η m / (√v + τ)``."""
    _check("server_adam", b2=b2)
    return _adaptive(
        "server_adam", server_learning_rate, b1, eps, lambda v, d2: b2 * v + (1 - b2) * d2
    )


def server_yogi(
    server_learning_rate: float = 0.03, b1: float = 0.9, b2: float = 0.99, eps: float = 1e-3
) -> FusionTransform:
    """Server Yogi (FedYogi): ``v ← v - (1-β2) Δ² sign(v - Δ²)``, step ``η m / (√v + τ)``.

    Yogi's additive ``v`` grows or shrinks by at most ``(1-β2) Δ²`` per round, so a sudden
    large delta moves the step size less than in Adam.
    """
    _check("server_yogi", b2=b2)
    return _adaptive(
        "server_yogi",
        server_learning_rate,
        b1,
        eps,
        lambda v, d2: v - (1 - b2) * d2 * np.sign(v - d2),
    )
