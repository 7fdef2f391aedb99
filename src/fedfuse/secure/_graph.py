"""Who shares with whom: the random Harary graph of SecAgg+ and the choice of its degree.

``choose_degree`` follows the parameter finder of Google's fcp/secagg, simply: each party's
``k`` neighbours are a sample of the others, each dropping out with probability ``dropout_rate``
and each corrupt (colluding with the server) with probability ``corruption_rate``, so for every
neighbourhood

    correctness:  P[Binomial(k, 1 - dropout_rate) < t]  (too few survive to reconstruct)
    security:     P[Binomial(k, corruption_rate) >= t]  (enough corrupt to reconstruct alone)

and a union bound over the ``n`` neighbourhoods must keep these below ``2**-correctness_bits``
and ``2**-security_bits``.

References:
    Bell, Bonawitz, Gascón, Lepoint, Raykova, "Secure Single-Server Aggregation with
    (Poly)Logarithmic Overhead", CCS 2020 (Harary graphs, degree and threshold choice).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

__all__ = ["binomial_tail", "choose_degree", "harary_graph"]


def binomial_tail(k: int, p: float, t: int) -> float:
    """``P[Binomial(k, p) >= t]``, summed exactly term by term (``math.comb``, in logs)."""
    if t <= 0:
        return 1.0
    if t > k or p == 0.0:
        return 0.0
    if p == 1.0:
        return 1.0
    log_p, log_q = math.log(p), math.log1p(-p)
    return min(
        1.0,
        sum(
            math.exp(math.log(math.comb(k, i)) + i * log_p + (k - i) * log_q)
            for i in range(t, k + 1)
        ),
    )


def _secure_threshold(n: int, k: int, corruption_rate: float, security_bits: float) -> int | None:
    """Smallest ``t > k/2`` with ``n P[Binomial(k, corruption_rate) >= t] <= 2**-security_bits``."""
    for t in range(k // 2 + 1, k + 1):
        if n * binomial_tail(k, corruption_rate, t) <= 2.0**-security_bits:
            return t
    return None


def choose_degree(
    n: int,
    dropout_rate: float,
    corruption_rate: float,
    *,
    security_bits: float = 40,
    correctness_bits: float = 20,
) -> tuple[int, int]:
    """Degree ``k`` of the Harary graph and Shamir threshold ``t`` for ``n`` parties.

    The smallest even ``k < n - 1`` with a ``t > k/2`` such that (union bound over the ``n``
    neighbourhoods) ``n P[Binomial(k, 1 - dropout_rate) < t] <= 2**-correctness_bits`` (every
    neighbourhood keeps ``t`` survivors) and ``n P[Binomial(k, corruption_rate) >= t] <=
    2**-security_bits`` (no neighbourhood has ``t`` corrupt members); ``t`` is the smallest that
    is secure, which is the most likely to be correct. If no such ``k`` exists (too few
    parties for the correctness bound) the graph is complete (``k = n - 1``, classic SecAgg)
    with the smallest secure ``t``, as long as ``t`` is at most the median number of surviving
    neighbours (``P[Binomial(n - 1, 1 - dropout_rate) < t] <= 1/2``): the round then aborts
    when more than ``n - t`` parties drop, which the correctness bound no longer makes
    unlikely. Raises ``ValueError`` when no ``t`` is secure, or the only secure ones exceed
    that median (e.g. ``corruption_rate >= 1/3`` with 10% dropout among 50 parties).

    References:
        Bell et al., CCS 2020, section 3.
    """
    if not (isinstance(n, int) and n >= 2):
        raise ValueError(f"choose_degree: n must be an integer >= 2, got {n!r}")
    for name, rate in (("dropout_rate", dropout_rate), ("corruption_rate", corruption_rate)):
        if not (isinstance(rate, int | float) and 0 <= rate < 1):
            raise ValueError(f"choose_degree: {name} must be in [0, 1), got {rate!r}")
    for name, bits in (("security_bits", security_bits), ("correctness_bits", correctness_bits)):
        if not (isinstance(bits, int | float) and bits > 0):
            raise ValueError(f"choose_degree: {name} must be > 0, got {bits!r}")
    for k in range(2, n - 1, 2):
        t = _secure_threshold(n, k, corruption_rate, security_bits)
        if (
            t is not None
            and n * (1 - binomial_tail(k, 1 - dropout_rate, t)) <= 2.0**-correctness_bits
        ):
            return k, t
    t = _secure_threshold(n, n - 1, corruption_rate, security_bits)
    if t is None or 1 - binomial_tail(n - 1, 1 - dropout_rate, t) > 0.5:
        raise ValueError(
            f"choose_degree: no degree and threshold keep n={n} parties secure with "
            f"corruption_rate={corruption_rate} at security_bits={security_bits} (and "
            f"dropout_rate={dropout_rate}, correctness_bits={correctness_bits}); lower "
            "corruption_rate or security_bits, or add parties"
        )
    return n - 1, t


def harary_graph(party_ids: Sequence[str], degree: int, seed: bytes) -> dict[str, list[str]]:
    """A random Harary graph: the parties on a ring in a random order drawn from ``seed`` (sorted
    by ``sha256(seed || id)``), each joined to the ``degree / 2`` nearest on either side.

    ``degree >= n - 1`` gives the complete graph; otherwise ``degree`` must be even and > 0.
    Returns the symmetric adjacency, each neighbour list sorted.

    References:
        Harary, "The Maximum Connectivity of a Graph", PNAS 48(7), 1962; Bell et al., CCS 2020.
    """
    ids = list(party_ids)
    if len(set(ids)) != len(ids) or not all(isinstance(p, str) for p in ids):
        raise ValueError("harary_graph: party_ids must be distinct strings")
    n = len(ids)
    if not (isinstance(degree, int) and degree > 0 and (degree % 2 == 0 or degree >= n - 1)):
        raise ValueError(
            f"harary_graph: degree must be an even integer > 0 or >= n - 1, got {degree!r}"
        )
    if degree >= n - 1:
        return {p: sorted(q for q in ids if q != p) for p in ids}
    ring = sorted(ids, key=lambda p: hashlib.sha256(seed + p.encode()).digest())
    half = degree // 2
    return {
        p: sorted(ring[(i + d) % n] for d in range(-half, half + 1) if d != 0)
        for i, p in enumerate(ring)
    }
