"""Fusion algorithms by the names users write (``"fedavg"``, ``"fedadam"``, ``"krum"``, …).

Each name builds a complete chain from plain parameters, so the CLI, a TOML file and the REST
service can all name one. Every name also takes ``clip_norm``: clip each update to that L2
norm before fusing (``chain(clip_by_norm(c), <the algorithm>)``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from fedfuse.fusion import _server
from fedfuse.fusion._base import FusionTransform, chain
from fedfuse.fusion._doc2vec import doc2vec_fusion
from fedfuse.fusion._matching import classwise_fusion, matched_fusion
from fedfuse.fusion._mean import fedavg, iter_avg
from fedfuse.fusion._robust import clip_by_norm, krum, median, multi_krum, trimmed_mean

__all__ = ["FUSIONS", "check_fusion_size", "fusion_params", "get_fusion"]


def _after_fedavg(server: Callable[..., FusionTransform]) -> Callable[..., FusionTransform]:
    """``fedavg()`` followed by a server optimizer, taking the optimizer's own parameters."""

    def build(**params: Any) -> FusionTransform:
        return chain(fedavg(), server(**params))

    build.__signature__ = inspect.signature(server)  # type: ignore[attr-defined]
    return build


_FACTORIES: dict[str, Callable[..., FusionTransform]] = {
    "fedavg": fedavg,
    "iter_avg": iter_avg,
    "fedavgm": _after_fedavg(_server.server_momentum),
    "fedadagrad": _after_fedavg(_server.server_adagrad),
    "fedadam": _after_fedavg(_server.server_adam),
    "fedyogi": _after_fedavg(_server.server_yogi),
    "median": median,
    "trimmed_mean": trimmed_mean,
    "krum": krum,
    "multi_krum": multi_krum,
    "doc2vec": doc2vec_fusion,
    "matched_avg": matched_fusion,
    "classwise_avg": classwise_fusion,
}
FUSIONS: tuple[str, ...] = tuple(sorted(_FACTORIES))


def fusion_params(name: str) -> tuple[str, ...]:
    """The parameter names fusion ``name`` takes (read from its factory), ``clip_norm`` last."""
    if name not in _FACTORIES:
        raise ValueError(f"unknown fusion {name!r}; choose one of: {', '.join(FUSIONS)}")
    return (*inspect.signature(_FACTORIES[name]).parameters, "clip_norm")


def get_fusion(name: str, **params: Any) -> FusionTransform:
    """Build the fusion transform called ``name`` with ``params``.

    Each name takes its transforms' own parameters (``fusion_params(name)`` lists them):
    ``fedavgm``, ``fedadagrad``, ``fedadam`` and ``fedyogi`` are FedAvg followed by
    ``server_momentum`` (``server_learning_rate``, ``momentum``) or ``server_adagrad`` /
    ``server_adam`` / ``server_yogi`` (``server_learning_rate``, ``b1``, ``b2``, ``eps`` = τ);
    ``trimmed_mean`` takes ``trim_fraction``; ``krum`` takes ``num_byzantine``; ``multi_krum``
    also ``num_selected``; ``doc2vec`` averages embedding rows over the parties that trained
    them; ``matched_avg`` (``passes``, ``seed``) fuses by neuron matching; ``classwise_avg``
    averages the classifier class by class with the parties' label counts. Any name takes
    ``clip_norm``.
    """
    try:
        factory = _FACTORIES[name]
    except KeyError:
        raise ValueError(f"unknown fusion {name!r}; choose one of: {', '.join(FUSIONS)}") from None
    params = dict(params)
    clip_norm = params.pop("clip_norm", None)
    accepted = list(inspect.signature(factory).parameters)
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(
            f"bad parameters for fusion {name!r}: unknown {unknown}; "
            f"it takes: {', '.join([*accepted, 'clip_norm'])}"
        )
    try:
        transform = factory(**params)
    except TypeError as exc:
        raise ValueError(f"bad parameters for fusion {name!r}: {exc}") from None
    return transform if clip_norm is None else chain(clip_by_norm(clip_norm), transform)


def check_fusion_size(name: str, params: Mapping[str, Any], updates_per_round: int) -> None:
    """Raise ``ValueError`` if fusion ``name`` with ``params`` can never fuse a round of at most
    ``updates_per_round`` updates, so such a federation is refused when it is created instead
    of fusing nothing, round after round.

    Krum and multi-Krum with ``f = num_byzantine`` need more than ``2f + 2`` updates
    (Blanchard et al., NeurIPS 2017).
    """
    if name in ("krum", "multi_krum"):
        f = params.get("num_byzantine", 1)
        if isinstance(f, int) and 2 * f + 2 >= updates_per_round:
            hint = (
                f"num_byzantine can be at most {(updates_per_round - 3) // 2}"
                if updates_per_round >= 3
                else "it needs at least 3"
            )
            raise ValueError(
                f"{name} with num_byzantine={f} needs more than {2 * f + 2} updates per round, "
                f"but at most {updates_per_round} parties take part in a round ({hint})"
            )
