"""The fusion part of a federation's spec: a fusion name and its own parameters."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from fedfuse._settings import Options, Settings
from fedfuse.fusion._base import FusionTransform
from fedfuse.fusion._registry import FUSIONS, check_fusion_size, get_fusion

__all__ = ["FusionSpec"]


@dataclass(frozen=True)
class FusionSpec(Settings):
    """``name`` is any of ``FUSIONS``; ``params`` are that fusion's parameters by the names of
    the transform that takes them (``{"server_learning_rate": 0.01}`` for ``fedadam``,
    ``{"trim_fraction": 0.2}`` for ``trimmed_mean``, ``clip_norm`` for any). See ``get_fusion``.
    """

    kind: ClassVar[str] = "fusion"
    constraints: ClassVar[dict[str, list[Any]]] = {"name": [Options(FUSIONS)], "params": [dict]}

    name: str = "fedavg"
    params: dict[str, Any] = field(default_factory=dict)

    def check_together(self) -> list[str]:
        try:
            get_fusion(self.name, **self.params)
        except ValueError as exc:
            return [f"params: {exc}"]
        return []

    def build(self) -> FusionTransform:
        """The fusion transform (checked first)."""
        self.check("fusion.")
        return get_fusion(self.name, **self.params)

    def check_size(self, updates_per_step: int) -> None:
        """``ValueError`` if this fusion can never fuse ``updates_per_step`` updates."""
        check_fusion_size(self.name, self.params, updates_per_step)
