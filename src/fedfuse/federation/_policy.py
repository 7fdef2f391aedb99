"""The round loop's parts of a federation's spec: who is asked, and when what arrived is fused."""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any, ClassVar

from fedfuse._settings import Interval, Options, Settings
from fedfuse.federation._validate import DEFAULT_MAX_UPDATE_RATIO

__all__ = ["Aggregation", "Sampling"]


@dataclass(frozen=True)
class Sampling(Settings):
    """How many parties work at a time: a ``fraction`` or a ``count`` of them (all by default).

    In synchronous rounds, the parties sampled per round (seeded, see ``sample_parties``); in
    buffered aggregation, the parties training at any moment (a finished one is replaced by an
    idle one chosen at random, seeded). With ``poisson`` (synchronous rounds, with a
    ``fraction`` q), each party takes part in a round independently with probability q, so
    the number per round varies: the sampler differential privacy's amplification by
    sampling assumes (``Privacy``).
    """

    kind: ClassVar[str] = "sampling"
    constraints: ClassVar[dict[str, list[Any]]] = {
        "fraction": [None, Interval(Real, 0, 1, closed="right")],
        "count": [None, Interval(Integral, 1)],
        "poisson": [bool],
    }

    fraction: float | None = None
    count: int | None = None
    poisson: bool = False

    def check_together(self) -> list[str]:
        if self.fraction is not None and self.count is not None:
            return ["fraction and count: give either fraction or count per round, not both"]
        if self.poisson and self.fraction is None:
            return ["poisson: Poisson sampling takes each party with probability fraction"]
        return []

    @property
    def method(self) -> str:
        """The sampler, as the privacy accountant names it: poisson, fixed or none."""
        if self.poisson:
            return "poisson"
        return "none" if self.fraction is None and self.count is None else "fixed"


@dataclass(frozen=True)
class Aggregation(Settings):
    """When the aggregator fuses, and what it accepts.

    - ``mode="sync"``: synchronous rounds. The sampled parties are asked; the round fuses what
      arrived by ``deadline`` seconds (``None``: no deadline) if at least ``quorum`` updates were
      accepted.
    - ``mode="buffered"``: FedBuff. Parties train at their own pace; every ``buffer_size``
      accepted arrivals are fused, each weighted ``(1 + staleness) ** -staleness_exponent``
      (``fedfuse.fusion.scale_by_staleness``). A step that gathers fewer than ``buffer_size``
      within ``deadline`` seconds is not fused. Nobody waits for the slowest party.

    ``max_update_norm`` rejects updates with a larger L2 norm; ``max_update_ratio`` those that
    would move the global model by more than that many times its norm (on by default; 0 or
    ``None`` turns either off; see ``fedfuse.federation.validate_update``).
    """

    kind: ClassVar[str] = "aggregation"
    constraints: ClassVar[dict[str, list[Any]]] = {
        "mode": [Options(("sync", "buffered"))],
        "quorum": [Interval(Integral, 1)],
        "deadline": [None, Interval(Real, 0, 86400, closed="right")],
        "buffer_size": [Interval(Integral, 1)],
        "staleness_exponent": [Interval(Real, 0)],
        "max_update_norm": [None, Interval(Real, 0)],
        "max_update_ratio": [None, Interval(Real, 0)],
    }

    mode: str = "sync"
    quorum: int = 1
    deadline: float | None = None
    buffer_size: int = 10
    staleness_exponent: float = 0.5
    max_update_norm: float | None = None
    max_update_ratio: float | None = DEFAULT_MAX_UPDATE_RATIO

    @property
    def updates_per_step(self) -> int | None:
        """How many updates one fusion gets in buffered mode (``None`` in sync: the sample)."""
        return self.buffer_size if self.mode == "buffered" else None
