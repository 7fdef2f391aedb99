"""The privacy accountant: the rounds of a DP federation turned into ``(epsilon, delta)`` by
Google's dp-accounting (PLD or RDP), its record plain JSON data that a checkpoint keeps.

A party (not an example) is the unit of privacy: neighbouring federations differ in one
party's data, every update is clipped to ``C`` and the noise on the sum has standard
deviation ``z C`` (``z = noise_multiplier``). What one round is, for the accountant:

- ``sampling="poisson"`` (each party joins with probability ``q``), add-or-remove-one
  neighbours: ``PoissonSampledDpEvent(q, GaussianDpEvent(z))``, amplified by sampling.
- ``sampling="fixed"`` (``m`` of the ``N`` parties, without replacement): the population is
  public, so the relation is replace-one and the sum's sensitivity is ``2C`` (one clipped
  update swapped for another), while dp-accounting's ``SampledWithoutReplacementDpEvent``
  takes the noise relative to the sensitivity of the replace-one relation (Wang, Balle and
  Kasiviswanathan, Theorem 27, with the Gaussian's RDP ``alpha / (2 sigma²)``): the event is
  ``SampledWithoutReplacementDpEvent(N, m, GaussianDpEvent(z / 2))``. PLD does not support
  that event, so a ``"fixed"`` accountant always uses RDP with ``REPLACE_ONE`` (``.method``
  says which was used); its epsilon is for replace-one neighbours.
- ``sampling="none"`` (every party, every round): ``GaussianDpEvent(z)``. With PLD, rounds
  that are all plain Gaussians compose to one Gaussian of multiplier ``(sum_i z_i⁻²)^(-1/2)``,
  whose epsilon is computed exactly (Balle and Wang's analytic Gaussian) instead of by PLD.

With adaptive clipping the noisy count of unclipped updates is a second Gaussian query on the
same parties; the centred count has sensitivity 1/2, and the two together are one Gaussian
with ``z_eff = (z⁻² + (2 count_stddev)⁻²)^(-1/2)`` (Andrew et al., Sec. 3.1; the same rule as
TFF's ``adaptive_clip_noise_params``, and dp-accounting's own rule for composed Gaussians on
one sample: ``sum_i z_i⁻²``). ``z_eff < z``, so the pair costs more than the sum alone.

DP-FTRL (``record_tree``) releases prefix sums of one tree of Gaussian nodes instead of a
noisy sum per round: a party's ``p`` contributions each touch at most
``L = tree_levels(rounds)`` nodes, node sums add linearly and a node holds at most ``p`` of
them, so the whole release has L2 sensitivity at most ``C p sqrt(L)``: one
``GaussianDpEvent(z / (p sqrt(L)))``, with no amplification.

References:
    Mironov, "Rényi Differential Privacy", CSF 2017; Mironov, Talwar and Zhang, "Rényi
    Differential Privacy of the Sampled Gaussian Mechanism", 2019.
    Koskela, Jälkö and Honkela, "Computing Tight Differential Privacy Guarantees Using FFT",
    AISTATS 2020 (privacy loss distributions); Doroshenko et al., "Connect the Dots: Tighter
    Discrete Approximations of Privacy Loss Distributions", PETS 2022.
    Wang, Balle and Kasiviswanathan, "Subsampled Rényi Differential Privacy and Analytical
    Moments Accountant", AISTATS 2019.
    Balle and Wang, "Improving the Gaussian Mechanism for Differential Privacy: Analytical
    Calibration and Optimal Denoising", ICML 2018.
    Andrew et al., "Differentially Private Learning with Adaptive Clipping", NeurIPS 2021.
    Kairouz et al., "Practical and Private (Deep) Learning without Sampling or Shuffling",
    ICML 2021.
"""

from __future__ import annotations

import functools
import json
import math
from typing import TYPE_CHECKING, Any

from fedfuse._quiet import quiet_rdp
from fedfuse.fusion import tree_levels

if TYPE_CHECKING:
    import dp_accounting

__all__ = [
    "PLD_DISCRETIZATION",
    "PLD_REFINE_BELOW",
    "PrivacyAccountant",
    "effective_noise_multiplier",
]

ACCOUNTANTS = ("pld", "rdp")
SAMPLINGS = ("poisson", "fixed", "none")


@functools.cache
def _dp() -> Any:
    """dp-accounting, imported on first use: it pulls in scipy (about 0.9 s), which a
    federation without differential privacy never needs."""
    import dp_accounting
    from dp_accounting.pld import pld_privacy_accountant  # noqa: F401  (loads dp.pld.*)
    from dp_accounting.rdp import rdp_privacy_accountant  # noqa: F401  (loads dp.rdp.*)

    return dp_accounting


def _number(key: str, value: object, low: float, high: float = math.inf) -> float:
    """``value`` as a float; ``ValueError`` unless it is a finite number in ``[low, high]``."""
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not (ok and low <= value <= high):
        raise ValueError(
            f"PrivacyAccountant: {key} must be a number in [{low}, {high}], got {value!r}"
        )
    return float(value)


def _integer(key: str, value: object, low: int, high: int | None = None) -> int:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= low
    if not ok or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"PrivacyAccountant: {key} must be an integer {bound}, got {value!r}")
    return value


def effective_noise_multiplier(noise_multiplier: float, count_stddev: float | None) -> float:
    """``z``, or with adaptive clipping's noisy count ``(z⁻² + (2 count_stddev)⁻²)^(-1/2)``
    (0 when either has no noise)."""
    if count_stddev is None:
        return noise_multiplier
    if noise_multiplier == 0 or count_stddev == 0:
        return 0.0
    return (noise_multiplier**-2 + (2 * count_stddev) ** -2) ** -0.5


#: The PLD's grid of privacy-loss values. Ten times coarser than dp-accounting's default
#: (1e-4): epsilon is still an upper bound (the discretization is pessimistic) and ten times
#: faster (0.08 s instead of 0.7 s for 200 Poisson rounds), which matters because every
#: round's record carries epsilon. The coarse grid's excess is about constant (up to 2e-3):
#: 1e-5 relative at epsilon 10, 0.3% at 0.6; below ``PLD_REFINE_BELOW`` epsilon is computed
#: again on the default grid (small epsilons are cheap there).
PLD_DISCRETIZATION = 1e-3
PLD_REFINE_BELOW = 5.0
_PLD_DEFAULT_GRID = 1e-4


class PrivacyAccountant:
    """The privacy spent by the rounds recorded so far (see the module docstring).

    Args:
        accountant: ``"pld"`` (privacy loss distributions, tight) or ``"rdp"`` (Rényi DP).
        sampling: how parties are chosen each round: ``"poisson"``, ``"fixed"`` or
            ``"none"``.
        population: the number of parties ``N``.
        delta: the ``delta`` that ``epsilon()`` is reported at.
    """

    def __init__(
        self,
        accountant: str = "pld",
        sampling: str = "poisson",
        population: int | None = None,
        delta: float | None = None,
    ) -> None:
        if accountant not in ACCOUNTANTS:
            raise ValueError(
                f"PrivacyAccountant: accountant must be one of {ACCOUNTANTS}, got {accountant!r}"
            )
        if sampling not in SAMPLINGS:
            raise ValueError(
                f"PrivacyAccountant: sampling must be one of {SAMPLINGS}, got {sampling!r}"
            )
        self.accountant = accountant
        self.sampling = sampling
        self.population = _integer("population", population, 1)
        self.delta = self._delta(delta)
        self._runs: list[dict[str, Any]] = []
        self._tree: dict[str, Any] | None = None

    @property
    def method(self) -> str:
        """The accountant used: ``"pld"``, or ``"rdp"`` (asked for, or forced by ``"fixed"``
        sampling, whose event PLD does not support)."""
        return "rdp" if self.accountant == "rdp" or self.sampling == "fixed" else "pld"

    @property
    def rounds(self) -> int:
        """Rounds recorded with ``record`` (the tree's rounds are in ``to_state()["tree"]``)."""
        return sum(run["count"] for run in self._runs)

    def _delta(self, delta: object) -> float:
        if isinstance(delta, bool) or not isinstance(delta, int | float) or not 0 < delta < 1:
            raise ValueError(f"PrivacyAccountant: delta must be a number in (0, 1), got {delta!r}")
        return float(delta)

    # recording -------------------------------------------------------------------------------
    def record(
        self,
        noise_multiplier: float,
        sample_size: int | None = None,
        sample_rate: float | None = None,
        count_stddev: float | None = None,
    ) -> None:
        """Record one round with noise multiplier ``z`` on the sum of clipped updates.

        ``sample_rate`` is ``q`` for Poisson sampling (``sample_size / population`` if only
        the expected size is given), ``sample_size`` the ``m`` parties of fixed-size
        sampling; neither for ``"none"``. ``count_stddev``: the noise on adaptive
        clipping's count, if any (``z_eff`` in the module docstring)."""
        self._runs = self._with_round(
            self._round(noise_multiplier, sample_size, sample_rate, count_stddev)
        )

    def _round(
        self,
        noise_multiplier: float,
        sample_size: int | None,
        sample_rate: float | None,
        count_stddev: float | None,
    ) -> dict[str, Any]:
        z = _number("noise_multiplier", noise_multiplier, 0.0)
        sigma_b = None if count_stddev is None else _number("count_stddev", count_stddev, 0.0)
        event: dict[str, Any] = {"noise_multiplier": z, "count_stddev": sigma_b}
        if self.sampling == "poisson":
            if sample_rate is None and sample_size is None:
                raise ValueError("PrivacyAccountant: poisson sampling needs sample_rate")
            if sample_rate is None:
                sample_rate = _integer("sample_size", sample_size, 0, self.population)
                sample_rate /= self.population
            event["sample_rate"] = _number("sample_rate", sample_rate, 0.0, 1.0)
        elif self.sampling == "fixed":
            if sample_rate is not None:
                raise ValueError("PrivacyAccountant: fixed sampling takes sample_size, not rate")
            event["sample_size"] = _integer("sample_size", sample_size, 1, self.population)
        elif sample_size is not None or sample_rate is not None:
            raise ValueError(
                "PrivacyAccountant: sampling='none' takes neither sample_size nor sample_rate"
            )
        return event

    def _with_round(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        runs = [dict(run) for run in self._runs]
        if runs and {k: v for k, v in runs[-1].items() if k != "count"} == event:
            runs[-1]["count"] += 1
        else:
            runs.append({**event, "count": 1})
        return runs

    def record_tree(self, noise_multiplier: float, rounds: int, max_participations: int) -> None:
        """Record that DP-FTRL's tree (node noise ``z C``) has released ``rounds`` prefix sums,
        with at most ``max_participations`` contributions from any one party.

        The prefix sums of one tree are one Gaussian release, not a composition: this
        replaces the previous ``record_tree`` (call it after every round with the totals so
        far). Its event composes with the rounds from ``record``."""
        self._tree = self._tree_event(noise_multiplier, rounds, max_participations)

    def _tree_event(self, noise_multiplier: float, rounds: int, participations: int) -> dict:
        return {
            "noise_multiplier": _number("noise_multiplier", noise_multiplier, 0.0),
            "rounds": _integer("rounds", rounds, 1),
            "max_participations": _integer("max_participations", participations, 1),
        }

    # epsilon ---------------------------------------------------------------------------------
    def _gaussian(self, z: float) -> dp_accounting.DpEvent:
        # Replace-one doubles the sum's sensitivity (see the module docstring).
        z = z / 2 if self.sampling == "fixed" else z
        return _dp().GaussianDpEvent(z) if z > 0 else _dp().NonPrivateDpEvent()

    def _event(self, run: dict[str, Any]) -> dp_accounting.DpEvent:
        z = effective_noise_multiplier(run["noise_multiplier"], run["count_stddev"])
        if z == 0:
            return _dp().NonPrivateDpEvent()
        if self.sampling == "fixed":
            event = _dp().SampledWithoutReplacementDpEvent(
                self.population, run["sample_size"], self._gaussian(z)
            )
        elif self.sampling == "poisson" and run["sample_rate"] < 1:
            event = _dp().PoissonSampledDpEvent(run["sample_rate"], self._gaussian(z))
        else:
            event = self._gaussian(z)
        return _dp().SelfComposedDpEvent(event, run["count"])

    @staticmethod
    def _tree_multiplier(t: dict[str, Any]) -> float:
        return t["noise_multiplier"] / (t["max_participations"] * tree_levels(t["rounds"]) ** 0.5)

    def dp_event(self) -> dp_accounting.DpEvent:
        """Everything recorded, as one dp-accounting event (runs of equal rounds composed)."""
        events = [self._event(run) for run in self._runs]
        if self._tree is not None:
            events.append(self._gaussian(self._tree_multiplier(self._tree)))
        return _dp().ComposedDpEvent(events)

    def _plain_gaussian(self) -> float | None:
        """The one Gaussian's noise multiplier that everything recorded composes to, when no
        round was sampled (``(sum_i z_i⁻²)^(-1/2)``, 0 if one had no noise); else ``None``."""
        if self.sampling == "fixed" or any(run.get("sample_rate", 1) < 1 for run in self._runs):
            return None
        multipliers = [
            (effective_noise_multiplier(run["noise_multiplier"], run["count_stddev"]), run["count"])
            for run in self._runs
        ]
        if self._tree is not None:
            multipliers.append((self._tree_multiplier(self._tree), 1))
        if any(z == 0 for z, _ in multipliers):
            return 0.0
        return sum(count / z**2 for z, count in multipliers) ** -0.5

    def epsilon(self, delta: float | None = None) -> float:
        """``epsilon`` at ``delta`` (the accountant's own by default) over everything
        recorded; ``inf`` when unbounded (a round without noise), 0 before any round.

        Remembered for the last few records seen by any accountant, so that a round's
        ``would_exceed`` and its ``epsilon`` after ``record`` compute it once."""
        delta = self.delta if delta is None else self._delta(delta)
        return _epsilon_of(json.dumps(self.to_state(), sort_keys=True), delta)

    def _compute_epsilon(self, delta: float) -> float:
        if not self._runs and self._tree is None:
            return 0.0
        plain = self._plain_gaussian() if self.method == "pld" else None
        if plain is not None:
            # Composed Gaussians are one Gaussian: its exact epsilon, where a PLD of a
            # large-epsilon Gaussian is slow (seconds) and a little pessimistic.
            return math.inf if plain == 0 else float(_dp().get_epsilon_gaussian(plain, delta))
        if self.method == "pld":
            epsilon = self._pld_epsilon(delta, PLD_DISCRETIZATION)
            if epsilon < PLD_REFINE_BELOW:
                epsilon = self._pld_epsilon(delta, _PLD_DEFAULT_GRID)
            return epsilon
        relation = _dp().NeighboringRelation.REPLACE_ONE if self.sampling == "fixed" else None
        acc = _dp().rdp.rdp_privacy_accountant.RdpAccountant(
            neighboring_relation=relation or _dp().NeighboringRelation.ADD_OR_REMOVE_ONE
        )
        with quiet_rdp():
            acc.compose(self.dp_event())
            return float(acc.get_epsilon(delta))

    def _pld_epsilon(self, delta: float, grid: float) -> float:
        acc = _dp().pld.pld_privacy_accountant.PLDAccountant(
            _dp().NeighboringRelation.ADD_OR_REMOVE_ONE, value_discretization_interval=grid
        )
        acc.compose(self.dp_event())
        return float(acc.get_epsilon(delta))

    def would_exceed(self, max_epsilon: float, **round_args: Any) -> bool:
        """Whether one more round (``record``'s arguments) would take epsilon past
        ``max_epsilon``."""
        after = PrivacyAccountant.from_state(self.to_state())
        after.record(**round_args)
        return after.epsilon() > max_epsilon

    def would_exceed_tree(self, max_epsilon: float, **tree_args: Any) -> bool:
        """Whether the tree's release with ``record_tree``'s arguments would take epsilon past
        ``max_epsilon``."""
        after = PrivacyAccountant.from_state(self.to_state())
        after.record_tree(**tree_args)
        return after.epsilon() > max_epsilon

    # state -----------------------------------------------------------------------------------
    def to_state(self) -> dict[str, Any]:
        """Plain JSON data: the configuration, the runs of equal rounds, the tree."""
        return {
            "accountant": self.accountant,
            "sampling": self.sampling,
            "population": self.population,
            "delta": self.delta,
            "rounds": [dict(run) for run in self._runs],
            "tree": None if self._tree is None else dict(self._tree),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> PrivacyAccountant:
        """The accountant ``to_state`` described, every field checked again."""
        if not isinstance(state, dict) or not isinstance(state.get("rounds"), list):
            raise ValueError("PrivacyAccountant.from_state: not an accountant's state")
        out = cls(state["accountant"], state["sampling"], state["population"], state["delta"])
        for run in state["rounds"]:
            if not isinstance(run, dict):
                raise ValueError("PrivacyAccountant.from_state: a round must be a dict")
            event = out._round(
                run.get("noise_multiplier"),
                run.get("sample_size"),
                run.get("sample_rate"),
                run.get("count_stddev"),
            )
            out._runs.append({**event, "count": _integer("count", run.get("count"), 1)})
        tree = state.get("tree")
        if tree is not None:
            out.record_tree(tree["noise_multiplier"], tree["rounds"], tree["max_participations"])
        return out


@functools.lru_cache(maxsize=16)
def _epsilon_of(state: str, delta: float) -> float:
    return PrivacyAccountant.from_state(json.loads(state))._compute_epsilon(delta)
