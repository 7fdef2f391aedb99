"""The privacy parts of a federation's spec, and the fusion chain they build.

- ``Privacy``: differential privacy of the global model (DP-FedAvg). Each update is clipped to
  an L2 norm ``C`` (``l2_norm_clip``, or quantile-adaptive clipping starting there), the clipped
  updates are summed, Gaussian noise of standard deviation ``z C`` is added to the sum
  (``z = noise_multiplier``) and the sum is divided by the expected number of updates per round.
  Where the noise is added: ``central`` (the aggregator, after summing), ``distributed`` (each
  of the ``m`` parties of a round adds ``z C / sqrt(m)``, so the sum carries ``z C`` although
  nobody, the aggregator included, sees a noise-free update: for secure aggregation), or
  ``tree`` (DP-FTRL: noise by tree aggregation across rounds, no sampling needed). A
  ``PrivacyAccountant`` (dp-accounting) turns the rounds into ``epsilon`` at ``delta``.
- ``SecureAggregation``: SecAgg+ (``fedfuse.secure``): the aggregator learns only the sum of
  a round's updates.

Both replace the fusion's reducer with a sum, so they work with fusions that are a mean,
optionally followed by a server optimizer (``fedavg``, ``iter_avg``, ``fedavgm``,
``fedadagrad``, ``fedadam``, ``fedyogi``), and refuse, naming why, rules that must see each
update (median, trimmed mean, Krum, matching, class-wise averaging, doc2vec).

References:
    McMahan et al., "Learning Differentially Private Recurrent Language Models", ICLR 2018.
    Andrew et al., "Differentially Private Learning with Adaptive Clipping", NeurIPS 2021.
    Kairouz et al., "Practical and Private (Deep) Learning without Sampling or Shuffling",
    ICML 2021.
    Bell et al., "Secure Single-Server Aggregation with (Poly)Logarithmic Overhead", CCS 2020.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any, ClassVar

from fedfuse._settings import Interval, Options, Settings
from fedfuse.federation._policy import Aggregation, Sampling
from fedfuse.fusion import (
    FusionSpec,
    FusionTransform,
    adaptive_clip,
    chain,
    clip_by_norm,
    dp_mean,
    gaussian_noise,
    server_adagrad,
    server_adam,
    server_momentum,
    server_yogi,
    tree_aggregation_noise,
)

__all__ = [
    "SUM_FUSIONS",
    "Privacy",
    "SecureAggregation",
    "privacy_problem",
    "private_fusion",
    "server_optimizer",
    "sum_fusion_problem",
]

# fusions that are a (weighted) mean, and the server optimizer that follows it (if any)
_SERVER_OPTIMIZERS: dict[str, Callable[..., FusionTransform] | None] = {
    "fedavg": None,
    "iter_avg": None,
    "fedavgm": server_momentum,
    "fedadagrad": server_adagrad,
    "fedadam": server_adam,
    "fedyogi": server_yogi,
}
SUM_FUSIONS: tuple[str, ...] = tuple(_SERVER_OPTIMIZERS)


@dataclass(frozen=True)
class Privacy(Settings):
    """Differential privacy (see the module docstring); off while ``noise_multiplier`` is None.

    - ``noise_multiplier`` (``z``): the noise's standard deviation over the clip norm.
    - ``l2_norm_clip`` (``C``): every update is scaled down to this L2 norm; with
      ``clipping="adaptive"`` it is the first round's clip, then ``C`` follows the
      ``target_quantile`` of the update norms at ``clip_learning_rate`` (Andrew et al.), from
      a count of unclipped updates with noise ``clipped_count_stddev`` (default: the expected
      number of updates per round / 20, as the paper suggests).
    - ``noise``: ``central``, ``distributed`` or ``tree`` (see the module docstring).
    - ``accountant``: ``pld`` (privacy loss distributions, tight) or ``rdp`` (Rényi DP); the
      amplification follows the sampler used (Poisson, fixed-size without replacement, or
      every party every round). Fixed-size sampling is accounted with RDP (dp-accounting's PLD
      has no such event).
    - ``delta``: the delta epsilon is reported at; ``max_epsilon``: a round that would take
      epsilon past it is not run, and the federation ends.
    - ``noise_seed``: makes the noise reproducible (tests, debugging). Without it the noise
      comes from the operating system's entropy; with secure aggregation a seed is refused.
    """

    kind: ClassVar[str] = "privacy"
    constraints: ClassVar[dict[str, list[Any]]] = {
        "noise_multiplier": [None, Interval(Real, 0)],
        "l2_norm_clip": [Interval(Real, 0, None, closed="neither")],
        "clipping": [Options(("fixed", "adaptive"))],
        "target_quantile": [Interval(Real, 0, 1)],
        "clip_learning_rate": [Interval(Real, 0)],
        "clipped_count_stddev": [None, Interval(Real, 0)],
        "noise": [Options(("central", "distributed", "tree"))],
        "accountant": [Options(("pld", "rdp"))],
        "delta": [Interval(Real, 0, 1, closed="neither")],
        "max_epsilon": [None, Interval(Real, 0, None, closed="neither")],
        "noise_seed": [None, Interval(Integral, 0, 2**63 - 1)],
    }

    noise_multiplier: float | None = None
    l2_norm_clip: float = 1.0
    clipping: str = "fixed"
    target_quantile: float = 0.5
    clip_learning_rate: float = 0.2
    clipped_count_stddev: float | None = None
    noise: str = "central"
    accountant: str = "pld"
    delta: float = 1e-5
    max_epsilon: float | None = None
    noise_seed: int | None = None

    @property
    def enabled(self) -> bool:
        return self.noise_multiplier is not None

    def count_stddev(self, expected_count: float) -> float:
        """The noise on adaptive clipping's count of unclipped updates."""
        if self.clipped_count_stddev is not None:
            return self.clipped_count_stddev
        return expected_count / 20


@dataclass(frozen=True)
class SecureAggregation(Settings):
    """Secure aggregation (SecAgg+); off unless ``secagg`` is true.

    - ``dropout_rate``: the fraction of a round's parties that may drop out at any stage;
      ``corruption_rate``: the fraction that may collude with the aggregator. Both choose the
      degree of the masking graph and the threshold of the secret sharing
      (``fedfuse.secure.choose_degree``).
    - ``clip_range``: each coordinate of a party's (weighted) update is clipped to
      ``[-clip_range, clip_range]`` and quantized to integers mod 2^32 with the step
      ``2 clip_range m / 2^32`` for ``m`` parties (``fedfuse.secure.Quantizer``): the fused
      model is within ``m step / 2`` per coordinate of float FedAvg's.
    - ``weight_cap``: with ``fedavg`` each party scales its update by
      ``min(num_examples, weight_cap) / weight_cap`` and sends that weight masked too, so the
      aggregator learns only the round's total; parties with more examples count as
      ``weight_cap``.
    """

    kind: ClassVar[str] = "secure"
    constraints: ClassVar[dict[str, list[Any]]] = {
        "secagg": [bool],
        "dropout_rate": [Interval(Real, 0, 1, closed="left")],
        "corruption_rate": [Interval(Real, 0, 1, closed="left")],
        "clip_range": [Interval(Real, 0, None, closed="neither")],
        "weight_cap": [Interval(Integral, 1, 10**9)],
    }

    secagg: bool = False
    dropout_rate: float = 0.1
    corruption_rate: float = 0.0
    clip_range: float = 1.0
    weight_cap: int = 10_000


def privacy_problem(
    fusion: FusionSpec | FusionTransform,
    privacy: Privacy,
    secure: SecureAggregation,
    sampling: Sampling,
    aggregation: Aggregation,
    compression: str = "none",
) -> str | None:
    """Why these parts of a spec do not go together, or ``None``: the one check the round
    loop and ``FederationSpec`` share."""
    if sampling.poisson and aggregation.mode == "buffered":
        return "sampling.poisson: buffered aggregation keeps a count of parties training"
    if secure.secagg and compression != "none":
        return "training.compression: secure aggregation sends uncompressed updates"
    return sum_fusion_problem(fusion, privacy, secure)


def sum_fusion_problem(
    fusion: FusionSpec | FusionTransform, privacy: Privacy, secure: SecureAggregation
) -> str | None:
    """Why ``fusion`` cannot be used under ``privacy`` / ``secure``, or ``None`` if it can."""
    what = "secure aggregation" if secure.secagg else "differential privacy"
    if not (privacy.enabled or secure.secagg):
        return None
    if not isinstance(fusion, FusionSpec):
        return f"{what} builds its own chain: name the fusion (e.g. 'fedavg'), not a transform"
    if fusion.name not in _SERVER_OPTIMIZERS:
        return (
            f"fusion {fusion.name!r} must see each party's update, which {what} hides or "
            f"bounds only through a sum; use one of {', '.join(SUM_FUSIONS)}"
        )
    if privacy.enabled and "clip_norm" in fusion.params:
        return "fusion clip_norm: under differential privacy the clip is privacy.l2_norm_clip"
    if secure.secagg and privacy.enabled and privacy.clipping == "adaptive":
        return "adaptive clipping under secure aggregation is not supported: use clipping='fixed'"
    if secure.secagg and privacy.noise_seed is not None:
        return (
            "privacy.noise_seed makes the noise predictable to whoever knows the spec: "
            "it is refused with secure aggregation"
        )
    if privacy.enabled and privacy.noise == "distributed" and not secure.secagg:
        return "distributed noise protects the sum only under secure aggregation (secagg)"
    return None


def server_optimizer(fusion: FusionSpec) -> FusionTransform | None:
    """The server optimizer that follows the mean in ``fusion`` (``None`` for a plain mean)."""
    factory = _SERVER_OPTIMIZERS[fusion.name]
    params = {k: v for k, v in fusion.params.items() if k != "clip_norm"}
    return None if factory is None else factory(**params)


def private_fusion(fusion: FusionSpec, privacy: Privacy, expected_count: float) -> FusionTransform:
    """DP-FedAvg as a chain: clip (fixed or adaptive) -> ``dp_mean`` (noise on the sum, central
    noise only) -> tree noise (DP-FTRL) -> the fusion's server optimizer, if any."""
    z = float(privacy.noise_multiplier or 0.0)
    seed = privacy.noise_seed
    if privacy.clipping == "adaptive":
        clip = adaptive_clip(
            privacy.l2_norm_clip,
            privacy.target_quantile,
            privacy.clip_learning_rate,
            privacy.count_stddev(expected_count),
            seed=seed,  # (each transform draws from its own stream of [seed, tag, call])
            expected_count=expected_count,
        )
    else:
        clip = clip_by_norm(privacy.l2_norm_clip)
    parts = [clip, dp_mean(z if privacy.noise == "central" else 0.0, expected_count, seed=seed)]
    if privacy.noise == "tree":
        stddev = z * privacy.l2_norm_clip / expected_count
        parts.append(tree_aggregation_noise(stddev, seed=seed))
    server = server_optimizer(fusion)
    if server is not None:
        parts.append(server)
    return chain(*parts)


def central_noise(privacy: Privacy, expected_count: float) -> FusionTransform | None:
    """Under secure aggregation, the noise the aggregator adds to the mean it unmasked:
    ``z C / expected_count`` per round (``central``) or by tree aggregation (``tree``);
    ``None`` when the parties add it (``distributed``) or there is no DP."""
    if not privacy.enabled or privacy.noise == "distributed":
        return None
    stddev = float(privacy.noise_multiplier) * privacy.l2_norm_clip / expected_count
    if privacy.noise == "tree":
        return tree_aggregation_noise(stddev, seed=privacy.noise_seed)
    return gaussian_noise(stddev, seed=privacy.noise_seed)


def expected_per_round(num_parties: int, fraction: float | None, count: int | None) -> float:
    """How many updates a round is expected to have (Poisson: ``q N``)."""
    if count is not None:
        return float(min(count, num_parties))
    if fraction is not None:
        return max(fraction * num_parties, 1e-9)
    return float(num_parties)
