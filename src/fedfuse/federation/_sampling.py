"""Seeded choice of the parties that take part in a round, and per-party training seeds."""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence

import numpy as np

from fedfuse.federation._policy import Sampling

__all__ = ["derive_seed", "sample_parties", "sampled_count"]


def sampled_count(num_parties: int, fraction: float | None, count: int | None) -> int:
    """How many of ``num_parties`` parties take part in a round with ``fraction`` or ``count``."""
    Sampling(fraction, count).check("sampling.")
    if num_parties == 0:
        raise ValueError("there are no parties to sample from")
    if fraction is not None:
        return max(1, math.ceil(fraction * num_parties - 1e-9))
    if count is not None:
        if count > num_parties:
            raise ValueError(f"count={count} exceeds the {num_parties} parties available")
        return count
    return num_parties


def sample_parties(
    party_ids: Sequence[str],
    round_num: int,
    *,
    fraction: float | None = None,
    count: int | None = None,
    seed: int = 0,
    poisson: bool = False,
) -> list[str]:
    """The parties of round ``round_num``: a ``fraction`` or a ``count`` of ``party_ids``.

    With neither, every party takes part. With ``poisson``, each party takes part with
    probability ``fraction``, independently of the others (a round may have none). The choice
    depends only on ``seed``, the round and the ids, so a resumed federation samples exactly
    as an uninterrupted one. The result keeps the order of ``party_ids``.
    """
    n = len(party_ids)
    if poisson:
        Sampling(fraction, count, poisson).check("sampling.")
        chosen = np.random.default_rng([seed, round_num]).random(n) < fraction
        return [pid for pid, taken in zip(party_ids, chosen, strict=True) if taken]
    k = sampled_count(n, fraction, count)
    if k == n:
        return list(party_ids)
    rng = np.random.default_rng([seed, round_num])
    chosen = np.sort(rng.choice(n, size=k, replace=False))
    return [party_ids[i] for i in chosen]


def derive_seed(seed: int, round_num: int, party_id: str) -> int:
    """A training seed for one party in one round, stable across runs and processes."""
    state = np.random.SeedSequence([seed, round_num, zlib.crc32(party_id.encode())])
    return int(state.generate_state(1, dtype=np.uint32)[0])
