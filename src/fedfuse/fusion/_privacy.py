"""Differential privacy as fusion transforms: clipping with a noisy quantile, a noisy mean,
Gaussian noise after a reducer, DP-FTRL's tree noise, and the parties' share of distributed noise.

DP-FedAvg is ``chain(clip_by_norm(C), dp_mean(z, expected_count))``; with adaptive clipping
``chain(adaptive_clip(...), dp_mean(z, expected_count))``; DP-FedAdam is
``chain(clip_by_norm(C), iter_avg(), gaussian_noise(s), server_adam(lr))``; DP-FTRL is
``chain(clip_by_norm(C), dp_mean(0, n), tree_aggregation_noise(z C / n))`` (``n`` parties).
The guarantee itself is computed by ``fedfuse.federation.PrivacyAccountant``.

Noise comes from a ``numpy.random.Generator`` made afresh for every call: from
``[seed, transform tag, call counter]`` when a ``seed`` is given (the counter lives in the
state, so a run resumed from a checkpoint draws exactly the noise an uninterrupted run would;
the tag keeps two transforms given the same seed independent), from fresh OS entropy
otherwise. States are plain dicts of numbers and numpy arrays, checkpointed as they are.

References:
    McMahan et al., "Learning Differentially Private Recurrent Language Models", ICLR 2018.
    Andrew et al., "Differentially Private Learning with Adaptive Clipping", NeurIPS 2021.
    Kairouz et al., "Practical and Private (Deep) Learning without Sampling or Shuffling",
    ICML 2021.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Iterator, Mapping

import numpy as np

from fedfuse.fusion._base import (
    FusionError,
    FusionTransform,
    Update,
    _float_accumulator,
    fused_update,
    with_info,
)
from fedfuse.weights import Weights, add_scaled_, global_norm, scale

__all__ = [
    "adaptive_clip",
    "add_gaussian_noise",
    "dp_mean",
    "gaussian_noise",
    "tree_aggregation_noise",
    "tree_levels",
]

# One tag per transform, so that transforms given the same seed draw independent noise.
_DP_MEAN, _GAUSSIAN_NOISE, _TREE_NOISE, _ADAPTIVE_CLIP = 1, 2, 3, 4


def _check_number(name: str, key: str, value: object, *, positive: bool = False) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > 0 if positive else value >= 0)
    if not ok:
        raise ValueError(
            f"{name}: {key} must be a finite number {'> 0' if positive else '>= 0'}, got {value!r}"
        )


def _check_seed(name: str, seed: object) -> None:
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise ValueError(f"{name}: seed must be None or an integer >= 0, got {seed!r}")


def _rng(seed: int | None, tag: int, counter: int) -> np.random.Generator:
    """The generator of one call: derived from ``[seed, tag, counter]``, or fresh OS entropy."""
    return np.random.default_rng() if seed is None else np.random.default_rng([seed, tag, counter])


def _normal(rng: np.random.Generator, like: Mapping[str, np.ndarray], stddev: float) -> Weights:
    """``N(0, stddev²)`` in float64 for every coordinate of ``like``, drawn in name order."""
    return {name: rng.normal(0.0, stddev, like[name].shape) for name in sorted(like)}


def _plus(fused: Update, noise: Mapping[str, np.ndarray], **info: float) -> Update:
    """``fused`` with ``noise`` added (in float64, cast back to each dtype) and ``info``."""
    weights = {
        n: (a.astype(np.float64) + noise[n]).astype(a.dtype, copy=False)
        for n, a in fused.weights.items()
    }
    return with_info(dataclasses.replace(fused, weights=weights), **info)


def add_gaussian_noise(weights: Weights, stddev: float, rng: np.random.Generator) -> Weights:
    """``w + N(0, stddev²)`` for every coordinate, as new arrays of each array's dtype.

    The party's half of distributed DP under secure aggregation: if each of ``K`` parties adds
    ``stddev = z C / sqrt(K)`` to its clipped update, the sum the aggregator unmasks carries
    ``N(0, (z C)²)`` per coordinate, as central ``dp_mean`` would add, while no one sees a
    single party's update without noise. Only the parties whose updates are summed count:
    with dropouts, take ``K`` as the fewest that secure aggregation accepts.

    References:
        Kairouz et al., "The Distributed Discrete Gaussian Mechanism for Federated Learning
        with Secure Aggregation", ICML 2021.
    """
    _check_number("add_gaussian_noise", "stddev", stddev)
    if not isinstance(rng, np.random.Generator):
        raise ValueError(
            f"add_gaussian_noise: rng must be a numpy.random.Generator, got {type(rng).__name__}"
        )
    noise = _normal(rng, weights, stddev)
    return {n: (a.astype(np.float64) + noise[n]).astype(a.dtype) for n, a in weights.items()}


def adaptive_clip(
    initial_clip: float = 0.1,
    target_quantile: float = 0.5,
    learning_rate: float = 0.2,
    count_stddev: float | None = None,
    seed: int | None = None,
    expected_count: float | None = None,
) -> FusionTransform:
    """Clip each update to a norm ``C`` that tracks the ``q = target_quantile`` quantile of the
    updates' norms, privately (geometric update of Andrew et al.).

    Per update and lazy: ``u · min(1, C / ||u||)``, tagged ``info["clip_norm"] = C`` for
    ``dp_mean``, and ``b = [||u|| <= C]`` counted. After the round, with ``m`` the number of
    updates seen and ``η = learning_rate``::

        b~ = (sum b + N(0, count_stddev²)) / m          C <- C · exp(-η (b~ - q))

    With ``expected_count`` given, ``m`` is that public number instead, and the centred count
    of the paper is used: ``b~ = (sum (b - 1/2) + N(0, count_stddev²)) / m + 1/2``.

    ``count_stddev`` must be given (``0`` means no noise: the clip then leaks the count and
    the run is not private); Andrew et al. suggest ``expected_count / 20``. For the accountant,
    record the round with ``count_stddev``: the update sum with noise multiplier ``z`` and the
    centred count (sensitivity 1/2) together are one Gaussian query with
    ``z_eff = (z⁻² + (2 count_stddev)⁻²)^(-1/2)`` (Andrew et al., Sec. 3.1; TFF's
    ``adaptive_clip_noise_params``). That holds when ``m`` is public: give ``expected_count``
    under Poisson sampling (the number of arrivals is not), or leave it out when every party
    or a fixed number of parties take part.

    The state is ``{"clip_norm": C, "calls": n}``. Because updates stream lazily, ``update``
    returns a fresh, empty dict as the new state and fills it when the returned iterable is
    exhausted (``fuse`` does that); the input state is never changed, so a round that fails
    to fuse keeps the old state.

    References:
        Andrew et al., "Differentially Private Learning with Adaptive Clipping", NeurIPS 2021.
    """
    name = "adaptive_clip"
    _check_number(name, "initial_clip", initial_clip, positive=True)
    if not (isinstance(target_quantile, int | float) and 0 <= target_quantile <= 1):
        raise ValueError(f"{name}: target_quantile must be in [0, 1], got {target_quantile!r}")
    _check_number(name, "learning_rate", learning_rate, positive=True)
    if count_stddev is None:
        raise ValueError(
            f"{name}: count_stddev must be given (a number >= 0; 0 is not private), "
            "e.g. expected_count / 20 as Andrew et al. suggest"
        )
    _check_number(name, "count_stddev", count_stddev)
    _check_seed(name, seed)
    if expected_count is not None:
        _check_number(name, "expected_count", expected_count, positive=True)

    def init(global_weights: Weights) -> dict:
        return {"clip_norm": float(initial_clip), "calls": 0}

    def update(updates: Iterable[Update], state: dict, global_weights: Weights):
        new_state: dict = {}

        def clipped() -> Iterator[Update]:
            clip, below, seen = state["clip_norm"], 0, 0
            for u in updates:
                norm = global_norm(u.weights)
                below += norm <= clip
                seen += 1
                if norm > clip:
                    u = dataclasses.replace(u, weights=scale(u.weights, clip / norm))
                yield with_info(u, clip_norm=clip)
            if seen:
                noise = 0.0
                if count_stddev > 0:
                    noise = float(
                        _rng(seed, _ADAPTIVE_CLIP, state["calls"]).normal(0.0, count_stddev)
                    )
                if expected_count is None:
                    fraction = (below + noise) / seen
                else:
                    fraction = (below - seen / 2 + noise) / expected_count + 0.5
                clip = clip * math.exp(-learning_rate * (fraction - target_quantile))
            new_state.update(clip_norm=float(clip), calls=state["calls"] + 1)

        return clipped(), new_state

    return FusionTransform(init, update)


def dp_mean(
    noise_multiplier: float, expected_count: float, seed: int | None = None
) -> FusionTransform:
    """The DP-FedAvg reducer: a noisy sum of clipped updates over a fixed denominator.

    ``Δ = (sum_k u_k + N(0, (z C)² I)) / n`` with ``z = noise_multiplier``, ``C`` the clip
    norm every update carries in ``info["clip_norm"]`` (from ``clip_by_norm`` or
    ``adaptive_clip``), and ``n = expected_count`` fixed (``q N`` under Poisson sampling, so
    not necessarily an integer): not the number that arrived, which is what the accountant
    assumes. Folded one update at a time in float64 (memory O(model));
    an update above ``C`` is scaled down to ``C`` as it is folded, so the sum's sensitivity is
    ``C`` whoever set the tag. The fused delta carries ``info = {"clip_norm": C,
    "noise_stddev": z C / n}``; ``num_examples`` is the total, metrics are dropped.
    ``noise_multiplier = 0`` adds no noise (not private). State: ``{"calls": n}``.

    References:
        McMahan et al., "Learning Differentially Private Recurrent Language Models", ICLR 2018.
    """
    name = "dp_mean"
    _check_number(name, "noise_multiplier", noise_multiplier)
    _check_number(name, "expected_count", expected_count, positive=True)
    _check_seed(name, seed)

    def init(global_weights: Weights) -> dict:
        return {"calls": 0}

    def update(updates: Iterable[Update], state: dict, global_weights: Weights):
        acc: Weights | None = None
        clip, total = None, 0
        for u in updates:
            c = u.info.get("clip_norm")
            if not (isinstance(c, int | float) and not isinstance(c, bool) and 0 < c < math.inf):
                raise FusionError(
                    f"dp_mean needs clipped updates, but the update from {u.party_id!r} has no "
                    "info['clip_norm']; put clip_by_norm or adaptive_clip before dp_mean"
                )
            if clip is None:
                clip = float(c)
            elif c != clip:
                raise FusionError(
                    f"dp_mean needs one clip norm for all updates, got {clip} and {c}; "
                    "put clip_by_norm or adaptive_clip before dp_mean"
                )
            if not u.is_delta:
                raise FusionError("dp_mean needs deltas, not full weights")
            if acc is None:
                acc = _float_accumulator(u.weights)
            add_scaled_(acc, u.weights, min(1.0, clip / max(global_norm(u.weights), 1e-300)))
            total += u.num_examples
        if acc is None:
            raise FusionError("no updates to fuse")
        stddev = noise_multiplier * clip
        if stddev > 0:
            for n, noise in _normal(_rng(seed, _DP_MEAN, state["calls"]), acc, stddev).items():
                acc[n] += noise
        fused = {
            n: (a / expected_count).astype(global_weights[n].dtype, copy=False)
            for n, a in acc.items()
        }
        info = {"clip_norm": clip, "noise_stddev": stddev / expected_count}
        out = Update(fused, total, {}, True, party_id="fused", info=info)
        return [out], {"calls": state["calls"] + 1}

    return FusionTransform(init, update)


def gaussian_noise(stddev: float, seed: int | None = None) -> FusionTransform:
    """Add ``N(0, stddev²)`` to every coordinate of the one fused update of a reducer.

    ``chain(clip_by_norm(C), iter_avg(), gaussian_noise(z C / K), server_adam(lr))`` is
    DP-FedAdam with ``K`` parties each round (the mean's sensitivity is ``C / K``). The
    update's ``info["noise_stddev"]`` becomes ``sqrt(before² + stddev²)``. State:
    ``{"calls": n}``.

    References:
        McMahan et al., "Learning Differentially Private Recurrent Language Models", ICLR 2018.
    """
    _check_number("gaussian_noise", "stddev", stddev)
    _check_seed("gaussian_noise", seed)

    def init(global_weights: Weights) -> dict:
        return {"calls": 0}

    def update(updates: Iterable[Update], state: dict, global_weights: Weights):
        fused = fused_update(updates, "gaussian_noise")
        noise = _normal(_rng(seed, _GAUSSIAN_NOISE, state["calls"]), fused.weights, stddev)
        before = fused.info.get("noise_stddev", 0.0)
        if isinstance(before, bool) or not isinstance(before, int | float):
            before = 0.0
        out = _plus(fused, noise, noise_stddev=math.hypot(before, stddev))
        return [out], {"calls": state["calls"] + 1}

    return FusionTransform(init, update)


def tree_levels(rounds: int) -> int:
    """How many tree nodes one round's leaf sits in, over ``rounds`` rounds:
    ``ceil(log2(rounds + 1))`` (the dyadic levels ``j`` with ``2^j <= rounds``)."""
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 0:
        raise ValueError(f"tree_levels: rounds must be an integer >= 0, got {rounds!r}")
    return rounds.bit_length()


def tree_aggregation_noise(stddev: float, seed: int | None = None) -> FusionTransform:
    """DP-FTRL's noise: the model after ``t`` rounds carries the tree aggregation noise of the
    prefix ``1..t`` instead of ``t`` independent noises.

    Each node of a binary tree over the rounds is ``N(0, stddev²)`` per coordinate; the node
    ending at round ``s`` at level ``j`` (``2^j`` divides ``s``) covers rounds ``s-2^j+1..s``.
    The prefix ``1..t`` is the sum ``N(t)`` of the nodes for the set bits of ``t`` (at most
    ``tree_levels(t)`` of them), and round ``t``'s fused delta gets ``N(t) - N(t-1)``: the new
    node minus the nodes it replaces. So ``w_t = w_0 + sum_s Δ_s + N(t)``, with
    ``Var N(t) <= tree_levels(t) · stddev²``. Place it right after a noise-free reducer with a
    fixed denominator (``dp_mean(0, n)``): the accountant's noise multiplier is then
    ``stddev · n / C``; a server optimizer after it would undo the telescoping. The fused
    delta leaves with ``info["tree_noise_stddev"] = stddev``.

    The state ``{"round": t, "nodes": [{"level": j, "noise": {...}}, ...]}`` holds the nodes
    of prefix ``t`` as float64 arrays: O(log T) model-sized arrays, so a resumed run continues
    exactly. The node ending at round ``s`` is drawn from ``[seed, tag, s]``.

    References:
        Kairouz et al., "Practical and Private (Deep) Learning without Sampling or Shuffling",
        ICML 2021.
        Dwork et al., "Differential Privacy under Continual Observation", STOC 2010.
    """
    _check_number("tree_aggregation_noise", "stddev", stddev)
    _check_seed("tree_aggregation_noise", seed)

    def init(global_weights: Weights) -> dict:
        return {"round": 0, "nodes": []}

    def update(updates: Iterable[Update], state: dict, global_weights: Weights):
        fused = fused_update(updates, "tree_aggregation_noise")
        t = state["round"] + 1
        level = (t & -t).bit_length() - 1
        kept = [node for node in state["nodes"] if node["level"] > level]
        replaced = [node for node in state["nodes"] if node["level"] < level]
        new = _normal(_rng(seed, _TREE_NOISE, t), fused.weights, stddev)
        step = {n: a - sum(node["noise"][n] for node in replaced) for n, a in new.items()}
        nodes = [*kept, {"level": level, "noise": new}]
        out = _plus(fused, step, tree_noise_stddev=stddev)
        return [out], {"round": t, "nodes": nodes}

    return FusionTransform(init, update)
