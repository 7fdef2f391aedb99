"""Shamir secret sharing of 32-byte secrets over the prime field ``p = 2**521 - 1``.

A secret ``s`` (a 32-byte string read as a big-endian integer, ``s < 2**256 < p``) is the constant
term of a random polynomial of degree ``t - 1``::

    f(z) = s + a_1 z + ... + a_{t-1} z^{t-1}  (mod p),   share_i = (i, f(i)),  i = 1..n

Any ``t`` shares give ``s`` back by Lagrange interpolation at zero,
``s = sum_i y_i prod_{j != i} x_j / (x_j - x_i)  (mod p)``; fewer than ``t`` say nothing about
it. More than ``t`` shares are checked to lie on one polynomial of degree ``t - 1``;
``reconstruct`` then uses a commitment to the secret to find which shares were off.

References:
    Shamir, "How to Share a Secret", Communications of the ACM 22(11), 1979.
"""

from __future__ import annotations

import functools
import itertools
import math
import secrets
from collections.abc import Callable, Hashable, Mapping, Sequence

from fedfuse.secure._errors import SecAggError

__all__ = ["PRIME", "SECRET_BYTES", "SHARE_BYTES", "reconstruct", "shamir_combine", "shamir_split"]

PRIME = 2**521 - 1
SECRET_BYTES = 32
SHARE_BYTES = 66  # a field element, big-endian
MAX_SUBSETS = 20_000  # t-subsets tried to locate bad shares before giving up


def shamir_split(
    secret: bytes, t: int, n: int, rng: secrets.SystemRandom | None = None
) -> list[tuple[int, int]]:
    """``n`` shares ``(i, f(i))``, ``i = 1..n``, of a 32-byte ``secret``, any ``t`` of which
    recover it. ``rng`` (anything with ``randrange``) defaults to the OS's randomness."""
    if not (isinstance(secret, bytes) and len(secret) == SECRET_BYTES):
        raise ValueError(f"shamir_split: secret must be {SECRET_BYTES} bytes")
    if not (isinstance(n, int) and isinstance(t, int) and 1 <= t <= n):
        raise ValueError(f"shamir_split: need integers 1 <= t <= n, got t={t!r}, n={n!r}")
    draw = (rng or secrets.SystemRandom()).randrange
    coefficients = [int.from_bytes(secret, "big")] + [draw(PRIME) for _ in range(t - 1)]
    shares = []
    for x in range(1, n + 1):
        y = 0
        for a in reversed(coefficients):
            y = (y * x + a) % PRIME
        shares.append((x, y))
    return shares


def _inverses(values: Sequence[int]) -> list[int]:
    """``1 / v mod p`` for every ``v`` with one modular inversion (Montgomery's trick)."""
    prefix = [1]
    for v in values:
        prefix.append(prefix[-1] * v % PRIME)
    inverse = pow(prefix[-1], -1, PRIME)
    out = [0] * len(values)
    for i in range(len(values) - 1, -1, -1):
        out[i] = inverse * prefix[i] % PRIME
        inverse = inverse * values[i] % PRIME
    return out


@functools.lru_cache(maxsize=8192)
def _lagrange(xs: tuple[int, ...], at: int) -> tuple[int, ...]:
    """Weights ``l_i(at) = prod_{j != i} (at - x_j) / (x_i - x_j)`` mod p."""
    nums, dens = [], []
    for i, xi in enumerate(xs):
        num = den = 1
        for j, xj in enumerate(xs):
            if j != i:
                num *= at - xj
                den *= xi - xj
        nums.append(num)
        dens.append(den % PRIME)
    return tuple(n * d % PRIME for n, d in zip(nums, _inverses(dens), strict=True))


@functools.lru_cache(maxsize=256)
def _inverse_factors(k: int) -> tuple[int, ...]:
    """``1 / prod_{l in 1..k, l != x} (x - l)`` for ``x = 1..k`` (index ``x - 1``)."""
    dens = [
        (-1) ** (k - x) * math.factorial(x - 1) * math.factorial(k - x) for x in range(1, k + 1)
    ]
    return tuple(_inverses([d % PRIME for d in dens]))


def _dual_weights(xs: Sequence[int]) -> list[int]:
    """``v_i = 1 / prod_{l != i} (x_i - x_l)``; for share indices within ``1..k`` (the usual
    case: a few holders missing) from the cached full range, the missing ``l`` put back."""
    k = max(xs)
    if k <= 4 * len(xs):
        missing = sorted(set(range(1, k + 1)) - set(xs))
        full = _inverse_factors(k)
        weights = []
        for x in xs:
            factor = 1
            for m in missing:
                factor *= x - m
            weights.append(full[x - 1] * factor % PRIME)
        return weights
    dens = []
    for i, xi in enumerate(xs):
        den = 1
        for j, xj in enumerate(xs):
            if j != i:
                den *= xi - xj
        dens.append(den % PRIME)
    return _inverses(dens)


def _on_one_polynomial(shares: Sequence[tuple[int, int]], t: int) -> bool:
    """Whether the ``m`` points lie on one polynomial of degree ``< t``: the parity checks of
    the Reed-Solomon code, ``sum_i v_i x_i^j y_i = 0`` for ``j < m - t`` with
    ``v_i = 1 / prod_{l != i} (x_i - x_l)`` (the dual code has dimension ``m - t``)."""
    xs = [x for x, _ in shares]
    terms = [v * y % PRIME for v, (_, y) in zip(_dual_weights(xs), shares, strict=True)]
    for _ in range(len(shares) - t):
        if sum(terms) % PRIME:
            return False
        terms = [w * x % PRIME for w, x in zip(terms, xs, strict=True)]
    return True


def _evaluate(shares: Sequence[tuple[int, int]], at: int) -> int:
    weights = _lagrange(tuple(x for x, _ in shares), at)
    return sum(w * y for w, (_, y) in zip(weights, shares, strict=True)) % PRIME


def _check(shares: Sequence[tuple[int, int]]) -> None:
    xs = [x for x, _ in shares]
    if len(set(xs)) != len(xs) or not all(isinstance(x, int) and 0 < x < PRIME for x in xs):
        raise ValueError("shamir_combine: share indices must be distinct integers in 1..p-1")
    if not all(isinstance(y, int) and 0 <= y < PRIME for _, y in shares):
        raise ValueError("shamir_combine: share values must be integers in 0..p-1")


def shamir_combine(shares: Sequence[tuple[int, int]]) -> bytes:
    """The secret interpolated at zero from exactly the ``shares`` given (all of them)."""
    shares = list(shares)
    if not shares:
        raise ValueError("shamir_combine: no shares")
    _check(shares)
    secret = _evaluate(shares, 0)
    if secret >= 1 << (8 * SECRET_BYTES):
        raise ValueError("shamir_combine: the shares do not interpolate to a 32-byte secret")
    return secret.to_bytes(SECRET_BYTES, "big")


def reconstruct(
    shares: Mapping[Hashable, tuple[int, int]], t: int, verify: Callable[[bytes], bool]
) -> tuple[bytes, list[Hashable]]:
    """The secret behind ``shares`` (holder -> share) with threshold ``t``, and the holders whose
    shares were off.

    If all shares lie on the polynomial through the first ``t`` and its secret passes ``verify``
    (a commitment or a public key), nobody is blamed. Otherwise t-subsets are tried until one
    interpolates to a secret that verifies; since ``verify`` binds the secret, that subset is
    correct and every share off its polynomial is named. Raises ``SecAggError`` when there are
    fewer than ``t`` shares or no subset verifies.
    """
    holders = list(shares)
    if len(holders) < t:
        raise SecAggError(f"only {len(holders)} shares, the threshold is {t}")
    _check([shares[h] for h in holders])

    def attempt(subset: Sequence[Hashable]) -> tuple[bytes, list[Hashable]] | None:
        points = [shares[h] for h in subset]
        secret = _evaluate(points, 0)
        if secret >= 1 << (8 * SECRET_BYTES):
            return None
        candidate = secret.to_bytes(SECRET_BYTES, "big")
        if not verify(candidate):
            return None
        chosen = set(subset)
        return candidate, [
            h
            for h in holders
            if h not in chosen and _evaluate(points, shares[h][0]) != shares[h][1]
        ]

    if _on_one_polynomial([shares[h] for h in holders], t):
        secret = _evaluate([shares[h] for h in holders[:t]], 0)
        if secret < 1 << (8 * SECRET_BYTES) and verify(secret.to_bytes(SECRET_BYTES, "big")):
            return secret.to_bytes(SECRET_BYTES, "big"), []
    for subset in itertools.islice(itertools.combinations(holders, t), MAX_SUBSETS):
        found = attempt(subset)
        if found is not None:
            return found
    raise SecAggError(
        f"no {t} of the {len(holders)} shares from {sorted(map(str, holders))} give a secret "
        "that matches its commitment"
    )
