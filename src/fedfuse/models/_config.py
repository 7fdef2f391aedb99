"""Local training configuration: plain data that travels with every train task."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any, ClassVar

from fedfuse._settings import Interval, Options, Settings
from fedfuse.weights import CODECS

__all__ = ["TrainConfig"]


@dataclass(frozen=True)
class TrainConfig(Settings):
    """How a party trains locally in one round, and how it sends its update back.

    Stored as given and validated where it is used (the optimizer name when the optimizer is
    built, the numbers when training starts), so a config can be printed, saved and swept.
    ``seed`` fixes the batch order and dropout of one local run; the round loop derives a
    different seed per party and round from the federation's seed.

    Local recipe and reply policy (all off by default):

    - ``proximal_mu``: FedProx's proximal term ``mu/2 ||w - w_global||^2`` (Li et al., MLSys
      2020); ``w_global`` is the model the party starts the round from.
    - ``compression``: codec for the delta on the wire, one of ``none``, ``fp16``, ``int8``,
      ``topk`` (keeping a ``topk_fraction`` of each tensor's entries); with
      ``error_feedback`` a party adds what compression dropped to its next delta.
    - ``skip_relative_norm``: a party whose ``||delta|| / ||w_global||`` is below this sends a
      small "skipped" reply instead of its delta; ``skip_cosine``: likewise when the cosine
      similarity of its delta to a reference direction is above this. ``skip_cosine_to``
      names the reference: ``last_sent``, the last delta the party sent, or ``global``, how
      the global model moved since the party's previous task (its update then repeats what
      the federation already does; a party whose data differs keeps sending). A party never
      skips more than ``max_consecutive_skips`` rounds in a row: when every party skips, the
      global model stands still and the same deltas would be skipped forever.

    What an update's ``num_examples`` (the FedAvg weight, and the weight of its metrics) counts:
    ``count_examples="dataset"`` (default), the examples in the party's training set, as in
    McMahan et al.'s FedAvg and Flower's ``len(trainloader.dataset)``; ``"processed"``, the
    examples processed over all local epochs (``epochs x`` that), as TFF reports it. With the
    same epochs everywhere both give the same fused model.

    ``share_label_counts``: the party adds how many of its training examples carry each label
    to its update's ``info`` (``label_counts``), for transforms that weigh the classifier's
    outputs class by class (``classwise_avg``, ``matched_avg``, class-wise ensembles). Off by
    default: a label distribution says more about a party than its example count.

    Record-level differential privacy at the party, DP-SGD (Abadi et al., CCS 2016; off by
    default), trained through Opacus:

    - ``dp_sgd_noise_multiplier``: ``sigma`` > 0 turns DP-SGD on. Each step takes a Poisson
      sample of the party's examples (each one independently, with rate ``q = batch_size / n``,
      capped at 1), clips every example's gradient to an L2 norm of at most
      ``dp_sgd_max_grad_norm`` ``C``, sums them, adds Gaussian noise ``N(0, sigma^2 C^2)`` to
      the sum and divides by the expected batch size ``q n``: ``g = (sum_i clip_C(g_i) +
      N(0, sigma^2 C^2 I)) / (q n)``. An epoch is ``round(n / batch_size)`` such steps (at
      least one). The party's ``(epsilon, delta)`` follows from ``q``, ``sigma`` and the steps
      taken (``dp_sgd_epsilon``, ``dp_sgd_steps``). The guarantee covers the weights sent; the
      example count a party reports (``num_examples``) is not protected, as in Opacus, and
      ``share_label_counts`` is refused with DP-SGD.
    - ``dp_sgd_seeded_noise``: with ``seed`` set, draw DP-SGD's batches and noise from the
      seed too, so that a seeded fit is reproducible. For simulations only: whoever knows the
      seed can subtract the noise, and the round loop derives every party's seed from the
      federation's seed, which the server holds. Off, both come from a generator seeded from
      the operating system's entropy afresh in every fit.
    """

    kind: ClassVar[str] = "training"
    constraints: ClassVar[dict[str, list[Any]]] = {
        "epochs": [Interval(Integral, 1)],
        "batch_size": [Interval(Integral, 1)],
        "optimizer": [str],
        "learning_rate": [Interval(Real, 0, None, closed="neither")],
        "seed": [None, Interval(Integral, 0)],
        "proximal_mu": [Interval(Real, 0)],
        "compression": [Options(CODECS)],
        "topk_fraction": [Interval(Real, 0, 1, closed="right")],
        "error_feedback": [bool],
        "skip_relative_norm": [Interval(Real, 0)],
        "skip_cosine": [None, Interval(Real, -1, 1)],
        "skip_cosine_to": [Options(("last_sent", "global"))],
        "max_consecutive_skips": [Interval(Integral, 0)],
        "count_examples": [Options(("dataset", "processed"))],
        "share_label_counts": [bool],
        "dp_sgd_noise_multiplier": [Interval(Real, 0)],
        "dp_sgd_max_grad_norm": [Interval(Real, 0, None, closed="neither")],
        "dp_sgd_seeded_noise": [bool],
    }

    epochs: int = 1
    batch_size: int = 32
    optimizer: str = "sgd"
    learning_rate: float = 0.01
    seed: int | None = None
    proximal_mu: float = 0.0
    compression: str = "none"
    topk_fraction: float = 0.01
    error_feedback: bool = True
    skip_relative_norm: float = 0.0
    skip_cosine: float | None = None
    skip_cosine_to: str = "last_sent"
    max_consecutive_skips: int = 3
    count_examples: str = "dataset"
    share_label_counts: bool = False
    dp_sgd_noise_multiplier: float = 0.0
    dp_sgd_max_grad_norm: float = 1.0
    dp_sgd_seeded_noise: bool = False

    def with_seed(self, seed: int) -> TrainConfig:
        """This config with ``seed``: a copy with one field set (what ``dataclasses.replace``
        does, without re-running ``__init__`` for every party of every round)."""
        config = copy.copy(self)
        object.__setattr__(config, "seed", seed)
        return config

    def check_together(self) -> list[str]:
        if self.dp_sgd_noise_multiplier > 0 and self.share_label_counts:
            return [
                "share_label_counts must be false with dp_sgd_noise_multiplier > 0: exact "
                "label counts are not covered by DP-SGD's record-level guarantee"
            ]
        return []

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first out-of-range field (from ``constraints``)."""
        self.check()
