"""Split one dataset among parties: IID, label skew, quantity skew, or by a natural group key.

Every partitioner takes the labels (or group keys) of a dataset and returns one int64 index array
per party: disjoint, each sorted ascending. They draw randomness only from
``np.random.default_rng(seed)``, so the same arguments always give the same partition.

``partition_indices(labels, num_parties, scheme, **params)`` picks one by name (``PARTITIONS``),
and ``federate(train, test, num_parties, scheme)`` turns a partition into a ``FederatedDataset``
with a local test split per party. ``format_label_stats`` prints who holds which labels.

References:
    Dirichlet label skew: Hsu et al., "Measuring the Effects of Non-Identical Data Distribution for
    Federated Visual Classification", 2019. Shards: McMahan et al., "Communication-Efficient
    Learning of Deep Networks from Decentralized Data", AISTATS 2017. Label/quantity skew variants:
    Li et al., "Federated Learning on Non-IID Data Silos: An Experimental Study", ICDE 2022.
    Class windows: Niwa et al., "Asynchronous Decentralized Optimization With Implicit Stochastic
    Variance Reduction", ICML 2021 (8 of 10 classes per node, windows shifted by 4).
"""

from __future__ import annotations

import heapq
import inspect
import math
from collections.abc import Callable, Sequence
from fractions import Fraction
from numbers import Integral, Real

import numpy as np

from fedfuse.data._dataset import ArrayDataset, FederatedDataset, PartyData

__all__ = [
    "PARTITIONS",
    "by_group",
    "class_window",
    "classes_per_party",
    "dirichlet",
    "federate",
    "format_label_stats",
    "iid",
    "partition_defaults",
    "partition_indices",
    "partition_params",
    "quantity_skew",
    "shards",
]

# How many Dirichlet draws ``dirichlet`` tries before giving up on ``min_size``.
_MAX_DIRICHLET_TRIES = 1000


# --- validation helpers -----------------------------------------------------------------------


def _as_labels(labels: Sequence[object] | np.ndarray, name: str = "labels") -> np.ndarray:
    array = np.asarray(labels)
    if array.ndim != 1:
        hint = " (one-hot? pass labels.argmax(axis=1))" if array.ndim == 2 else ""
        raise ValueError(
            f"{name} must be one-dimensional, one entry per example; got shape {array.shape}{hint}"
        )
    return array


def _check_num_parties(num_parties: int, num_samples: int) -> None:
    if num_parties < 1:
        raise ValueError(f"num_parties must be at least 1, got num_parties={num_parties}")
    if num_parties > num_samples:
        raise ValueError(f"num_parties={num_parties} exceeds the {num_samples} samples available")


def _check_min_size(min_size: int, num_parties: int, num_samples: int) -> None:
    if min_size < 0:
        raise ValueError(f"min_size must be at least 0, got min_size={min_size}")
    if min_size * num_parties > num_samples:
        raise ValueError(
            f"min_size={min_size} for {num_parties} parties needs {min_size * num_parties} "
            f"samples, but only {num_samples} are available"
        )


def _check_alpha(alpha: float) -> None:
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0, got alpha={alpha}")


def _class_codes(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Each example's class as ``0 .. num_classes-1`` (in sorted label order), and num_classes."""
    classes, codes = np.unique(labels, return_inverse=True)
    return codes.ravel(), len(classes)


def _finish(parts: Sequence[np.ndarray]) -> list[np.ndarray]:
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


def _cuts(proportions: np.ndarray, total: int) -> np.ndarray:
    """Where to cut ``total`` items into consecutive pieces of about ``proportions`` each."""
    return (np.cumsum(proportions)[:-1] * total).astype(np.int64)


# --- partitioners -----------------------------------------------------------------------------


def iid(
    labels: Sequence[object] | np.ndarray, num_parties: int, *, seed: int = 0
) -> list[np.ndarray]:
    """Shuffle all examples and deal them into ``num_parties`` parts of equal size (±1)."""
    labels = _as_labels(labels)
    _check_num_parties(num_parties, len(labels))
    order = np.random.default_rng(seed).permutation(len(labels))
    return _finish(np.array_split(order, num_parties))


def dirichlet(
    labels: Sequence[object] | np.ndarray,
    num_parties: int,
    *,
    alpha: float = 0.5,
    min_size: int = 2,
    seed: int = 0,
) -> list[np.ndarray]:
    """Label skew: each class is shared among parties in proportions drawn from Dir(alpha).

    Small ``alpha`` (0.1) gives each party a few dominant classes; large ``alpha`` (100) tends to
    IID. As in Li et al.'s NIID-Bench, a party that already holds its fair share
    (``n / num_parties``) gets nothing of the classes still to deal, which keeps party sizes
    from drifting far apart. A draw where some party gets fewer than ``min_size`` examples is
    redrawn, up to a bounded number of times, after which a ``ValueError`` says what to change.
    """
    labels = _as_labels(labels)
    _check_num_parties(num_parties, len(labels))
    _check_alpha(alpha)
    _check_min_size(min_size, num_parties, len(labels))
    codes, num_classes = _class_codes(labels)
    rng = np.random.default_rng(seed)
    by_class = [np.flatnonzero(codes == c) for c in range(num_classes)]
    fair_share = len(labels) / num_parties
    for _ in range(_MAX_DIRICHLET_TRIES):
        parts: list[list[np.ndarray]] = [[] for _ in range(num_parties)]
        sizes = np.zeros(num_parties, dtype=np.int64)
        for c in rng.permutation(num_classes):
            open_parties = sizes < fair_share
            proportions = rng.dirichlet(np.full(num_parties, alpha)) * open_parties
            total = proportions.sum()
            # With tiny alpha every open party can draw exactly 0.0; share evenly among them then.
            proportions = proportions / total if total > 0 else open_parties / open_parties.sum()
            members = rng.permutation(by_class[c])
            for party, piece in enumerate(np.split(members, _cuts(proportions, len(members)))):
                parts[party].append(piece)
                sizes[party] += len(piece)
        if sizes.min() >= min_size:
            return _finish([np.concatenate(p) for p in parts])
    raise ValueError(
        f"could not draw a Dirichlet(alpha={alpha}) partition giving each of {num_parties} parties "
        f"at least min_size={min_size} examples in {_MAX_DIRICHLET_TRIES} tries; "
        "lower min_size, raise alpha or use fewer parties"
    )


def classes_per_party(
    labels: Sequence[object] | np.ndarray,
    num_parties: int,
    *,
    classes_per_party: int = 2,
    seed: int = 0,
) -> list[np.ndarray]:
    """Pathological label skew: each party holds exactly ``classes_per_party`` distinct classes.

    Classes are shuffled, then dealt round-robin, ``classes_per_party`` consecutive ones per
    party, so every class is held by at least one party when
    ``num_parties * classes_per_party >= num_classes`` (otherwise the classes left over are in no
    party). The examples of a class are split evenly among its holders.
    """
    labels = _as_labels(labels)
    _check_num_parties(num_parties, len(labels))
    codes, num_classes = _class_codes(labels)
    if not 1 <= classes_per_party <= num_classes:
        raise ValueError(
            f"classes_per_party must be between 1 and the {num_classes} classes, "
            f"got classes_per_party={classes_per_party}"
        )
    rng = np.random.default_rng(seed)
    class_order = rng.permutation(num_classes)
    holders: list[list[int]] = [[] for _ in range(num_classes)]
    for party in range(num_parties):
        for j in range(classes_per_party):
            holders[class_order[(party * classes_per_party + j) % num_classes]].append(party)

    def too_few(c: int, examples: int, held_by: int) -> str:
        return (
            f"class {c} has {examples} examples but classes_per_party={classes_per_party} "
            f"assigns it to {held_by} parties; use fewer parties or a smaller classes_per_party"
        )

    return _deal(codes, holders, num_parties, rng, too_few)


def _deal(
    codes: np.ndarray,
    holders: Sequence[Sequence[int]],
    num_parties: int,
    rng: np.random.Generator,
    too_few: Callable[[int, int, int], str],
    imbalance: float = 0.0,
) -> list[np.ndarray]:
    """Split each class's examples (shuffled) among the parties ``holders[class]`` names:
    evenly, or in shares drawn from ``U[1 - imbalance, 1 + imbalance]``; ``too_few(class,
    examples, holders)`` words the error for a class with fewer examples than holders."""
    parts: list[list[np.ndarray]] = [[] for _ in range(num_parties)]
    for c, held_by in enumerate(holders):
        if not held_by:
            continue
        members = rng.permutation(np.flatnonzero(codes == c))
        if len(members) < len(held_by):
            raise ValueError(too_few(c, len(members), len(held_by)))
        if imbalance == 0:
            pieces = np.array_split(members, len(held_by))
        else:
            weights = rng.uniform(1 - imbalance, 1 + imbalance, size=len(held_by))
            pieces = np.split(members, np.cumsum(_shares(weights, len(members)))[:-1])
        for party, piece in zip(held_by, pieces, strict=True):
            parts[party].append(piece)
    return _finish([np.concatenate(p) for p in parts])


def class_window(
    labels: Sequence[object] | np.ndarray,
    num_parties: int,
    *,
    classes_per_party: int = 5,
    shift: float | None = None,
    imbalance: float = 0.0,
    seed: int = 0,
) -> list[np.ndarray]:
    """Label skew in overlapping windows: party ``i`` holds consecutive classes, as on a ring.

    Classes are taken in class-code order (the sorted distinct labels, ``0 .. C-1``). Party ``i``
    holds the ``classes_per_party`` classes starting at ``floor(i * shift) mod C``, wrapping
    around past the last class. ``shift=None`` means ``C / num_parties``: the windows are spread
    evenly, so every class is held by about the same number of parties and parties next to each
    other (``i`` and ``i + 1``, and the last and the first) share most of their classes. This is
    the setting of decentralized learning papers, where neighbours on a ring share classes;
    ``classes`` (``classes_per_party``) deals shuffled classes round-robin instead.

    With 8 parties, 10 classes and ``classes_per_party=5``, the windows start at
    ``floor(i * 1.25)`` = 0, 1, 2, 3, 5, 6, 7, 8; every class is on exactly 4 parties and ring
    neighbours share 3 or 4 classes::

        class     0 1 2 3 4 5 6 7 8 9
        party 0   x x x x x . . . . .
        party 1   . x x x x x . . . .
        party 2   . . x x x x x . . .
        party 3   . . . x x x x x . .
        party 4   . . . . . x x x x x
        party 5   x . . . . . x x x x
        party 6   x x . . . . . x x x
        party 7   x x x . . . . . x x

    ``classes_per_party=8, shift=4`` is Niwa et al.'s ICML 2021 partition (8 of 10 classes,
    each node's window shifted by 4). A fractional ``shift`` is read as the decimal it prints as
    (``1.1`` is eleven tenths), so ``floor`` does not suffer from float rounding.

    The examples of a class are shuffled (seeded) and split among the parties that hold it:
    evenly (±1) with ``imbalance=0``, else each holder's share is proportional to a draw from
    ``U[1 - imbalance, 1 + imbalance]``, one draw per class and holder. Every holder gets at least
    one example of each class in its window, so every party holds exactly its window's classes.
    Classes in no window (when the windows do not cover all ``C`` classes, e.g. 2 parties with
    2 classes each of 10) are left out of every party, as ``classes`` does.

    Raises:
        ValueError: ``classes_per_party`` not an integer in ``[1, C]``, ``shift`` not a finite
            number > 0, ``imbalance`` not in ``[0, 1)``, or a class with fewer examples than
            parties holding it.
    """
    labels = _as_labels(labels)
    _check_num_parties(num_parties, len(labels))
    classes, codes = np.unique(labels, return_inverse=True)
    codes, num_classes = codes.ravel(), len(classes)
    if not _is_int(classes_per_party) or not 1 <= classes_per_party <= num_classes:
        raise ValueError(
            f"classes_per_party must be an integer between 1 and the {num_classes} classes, "
            f"got classes_per_party={classes_per_party!r}"
        )
    step = Fraction(num_classes, num_parties) if shift is None else _exact_shift(shift)
    if not _is_real(imbalance) or not 0 <= imbalance < 1:
        raise ValueError(f"imbalance must be a number in [0, 1), got imbalance={imbalance!r}")
    holders: list[list[int]] = [[] for _ in range(num_classes)]
    for party in range(num_parties):
        start = math.floor(party * step)
        for j in range(classes_per_party):
            holders[(start + j) % num_classes].append(party)

    def too_few(c: int, examples: int, held_by: int) -> str:
        label = classes[c].item() if hasattr(classes[c], "item") else classes[c]
        return (
            f"class {label!r} has {examples} examples but its windows give it to {held_by} "
            "parties; use fewer parties or a smaller classes_per_party"
        )

    return _deal(codes, holders, num_parties, np.random.default_rng(seed), too_few, imbalance)


def _is_int(value: object) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def _exact_shift(shift: float) -> Fraction:
    """``shift`` as an exact fraction: an integer as itself, a float as the decimal it prints as."""
    if _is_int(shift):
        value = Fraction(int(shift))
    elif _is_real(shift) and math.isfinite(shift):
        value = Fraction(str(float(shift)))
    else:
        value = Fraction(0)
    if value <= 0:
        raise ValueError(f"shift must be a finite number > 0 (or None), got shift={shift!r}")
    return value


def _shares(weights: np.ndarray, total: int) -> np.ndarray:
    """``total`` items as one count per weight, about proportional to it, each at least 1."""
    rest = total - len(weights)
    cuts = _cuts(weights / weights.sum(), rest)
    return 1 + np.diff(np.concatenate([[0], cuts, [rest]]))


def shards(
    labels: Sequence[object] | np.ndarray,
    num_parties: int,
    *,
    shards_per_party: int = 2,
    seed: int = 0,
) -> list[np.ndarray]:
    """McMahan et al.'s shards: sort by label, cut into equal shards, deal shards to parties.

    With ``shards_per_party=2`` most parties see only one or two classes.
    """
    labels = _as_labels(labels)
    _check_num_parties(num_parties, len(labels))
    if shards_per_party < 1:
        raise ValueError(f"shards_per_party must be at least 1, got {shards_per_party}")
    num_shards = num_parties * shards_per_party
    if num_shards > len(labels):
        raise ValueError(
            f"num_parties * shards_per_party = {num_shards} shards exceeds the "
            f"{len(labels)} samples available"
        )
    codes, _ = _class_codes(labels)
    rng = np.random.default_rng(seed)
    # Shuffle first so that the stable sort leaves examples of one class in random order.
    order = rng.permutation(len(labels))
    order = order[np.argsort(codes[order], kind="stable")]
    pieces = np.array_split(order, num_shards)
    deal = rng.permutation(num_shards).reshape(num_parties, shards_per_party)
    return _finish([np.concatenate([pieces[s] for s in row]) for row in deal])


def by_group(
    groups: Sequence[object] | np.ndarray, num_parties: int | None = None
) -> list[np.ndarray]:
    """One party per distinct group key (a writer, a hospital, a device), in sorted key order.

    With ``num_parties`` smaller than the number of groups, whole groups are merged: largest group
    first onto the party with the fewest examples so far, which keeps party sizes balanced. No
    group is ever split. Deterministic, so it takes no seed.
    """
    groups = _as_labels(groups, name="groups")
    codes, num_groups = _class_codes(groups)
    if num_parties is None:
        num_parties = num_groups
    if num_parties < 1:
        raise ValueError(f"num_parties must be at least 1, got num_parties={num_parties}")
    if num_parties > num_groups:
        raise ValueError(f"num_parties={num_parties} exceeds the {num_groups} distinct groups")
    members = [np.flatnonzero(codes == g) for g in range(num_groups)]
    if num_parties == num_groups:
        return _finish(members)
    by_size = sorted(range(num_groups), key=lambda g: (-len(members[g]), g))
    loads = [(0, party) for party in range(num_parties)]
    parts: list[list[np.ndarray]] = [[] for _ in range(num_parties)]
    for g in by_size:
        size, party = heapq.heappop(loads)
        parts[party].append(members[g])
        heapq.heappush(loads, (size + len(members[g]), party))
    return _finish([np.concatenate(p) for p in parts])


def quantity_skew(
    labels: Sequence[object] | np.ndarray,
    num_parties: int,
    *,
    alpha: float = 1.0,
    min_size: int = 2,
    seed: int = 0,
) -> list[np.ndarray]:
    """Quantity skew: party sizes drawn from Dir(alpha), labels IID within each party.

    Every party first gets ``min_size`` examples; the rest are shared in Dirichlet proportions, so
    this never needs a redraw. Small ``alpha`` means a few large parties and many small ones.
    """
    labels = _as_labels(labels)
    num_samples = len(labels)
    _check_num_parties(num_parties, num_samples)
    _check_alpha(alpha)
    _check_min_size(min_size, num_parties, num_samples)
    rng = np.random.default_rng(seed)
    order = rng.permutation(num_samples)
    proportions = rng.dirichlet(np.full(num_parties, alpha))
    rest = num_samples - min_size * num_parties
    extra = np.diff(np.concatenate([[0], _cuts(proportions, rest), [rest]]))
    sizes = min_size + extra
    return _finish(np.split(order, np.cumsum(sizes)[:-1]))


# --- dispatch ---------------------------------------------------------------------------------

# Scheme name -> partitioner. The one table: ``PARTITIONS`` and ``partition_params`` read it.
_SCHEMES = {
    "iid": iid,
    "dirichlet": dirichlet,
    "classes": classes_per_party,
    "shards": shards,
    "group": by_group,
    "quantity": quantity_skew,
    "class_window": class_window,
}

#: Scheme names accepted by ``partition_indices`` and ``federate``.
PARTITIONS = tuple(_SCHEMES)

# Arguments every scheme receives from ``partition_indices`` itself, not from ``params``.
_COMMON_ARGS = ("labels", "num_parties", "seed")


def partition_params(scheme: str) -> tuple[str, ...]:
    """The extra parameter names ``scheme`` takes, read from its partitioner's signature.

    ``partition_params("classes") == ("classes_per_party",)``; ``labels``, ``num_parties`` and
    ``seed`` are given to every scheme and are not listed.
    """
    if scheme not in _SCHEMES:
        raise ValueError(f"unknown scheme {scheme!r}; choose one of: {', '.join(PARTITIONS)}")
    names = inspect.signature(_SCHEMES[scheme]).parameters
    return tuple(name for name in names if name not in _COMMON_ARGS)


def partition_defaults(scheme: str) -> dict[str, object]:
    """The default of each parameter of ``scheme`` (``inspect.Parameter.empty`` if required)."""
    if scheme not in _SCHEMES:
        raise ValueError(f"unknown scheme {scheme!r}; choose one of: {', '.join(PARTITIONS)}")
    signature = inspect.signature(_SCHEMES[scheme]).parameters
    return {name: signature[name].default for name in partition_params(scheme)}


def partition_indices(
    labels: Sequence[object] | np.ndarray,
    num_parties: int | None,
    scheme: str,
    *,
    seed: int = 0,
    **params: object,
) -> list[np.ndarray]:
    """Partition by scheme name, one of ``PARTITIONS``, with that scheme's own parameters.

    The parameters are the partitioner's keyword names (``partition_params(scheme)``):

    - ``"iid"``: none (see ``iid``).
    - ``"dirichlet"``: ``alpha``, ``min_size`` (see ``dirichlet``).
    - ``"classes"``: ``classes_per_party`` (see ``classes_per_party``).
    - ``"shards"``: ``shards_per_party`` (see ``shards``).
    - ``"group"``: ``groups`` (required, one key per example); ``num_parties`` may be ``None`` for
      one party per group. ``seed`` is not used (see ``by_group``).
    - ``"quantity"``: ``alpha``, ``min_size`` (see ``quantity_skew``).
    - ``"class_window"``: ``classes_per_party``, ``shift``, ``imbalance`` (see ``class_window``).

    Raises:
        ValueError: an unknown scheme or parameter (the message lists the allowed ones), or a
            value the partitioner refuses.
    """
    allowed = partition_params(scheme)
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ValueError(
            f"unknown parameter(s) {', '.join(unknown)} for scheme {scheme!r}; "
            f"allowed: {', '.join(allowed) or '(none)'}"
        )
    if scheme == "group":
        return _partition_by_group(labels, num_parties, params)
    if num_parties is None:
        raise ValueError(f"scheme {scheme!r} needs num_parties (only 'group' can infer it)")
    return _SCHEMES[scheme](labels, num_parties, seed=seed, **params)


def _partition_by_group(
    labels: Sequence[object] | np.ndarray, num_parties: int | None, params: dict[str, object]
) -> list[np.ndarray]:
    if "groups" not in params:
        raise ValueError("scheme 'group' needs groups=<one group key per example>")
    groups = np.asarray(params["groups"])
    if len(groups) != len(labels):
        raise ValueError(
            f"groups has {len(groups)} entries but there are {len(labels)} examples; "
            "give one group key per example"
        )
    return by_group(groups, num_parties)


# --- federated datasets -----------------------------------------------------------------------


def _local_split(data: ArrayDataset, fraction: float, rng: np.random.Generator) -> PartyData:
    """Shuffle one party's examples and hold out ``round(fraction * n)`` as its local test set.

    At least one example stays in training; a hold-out of zero examples means ``test=None``.
    """
    n = len(data)
    n_test = min(round(fraction * n), max(n - 1, 0))
    order = rng.permutation(n)
    if n_test == 0:
        return PartyData(train=data.subset(order), test=None)
    return PartyData(train=data.subset(order[n_test:]), test=data.subset(order[:n_test]))


def _group_names(groups: object, parts: Sequence[np.ndarray]) -> list[str] | None:
    """Each party's group key as a string, when every party holds exactly one group.

    ``None`` when ``by_group`` merged groups (a party of several keys has no one name) or two
    keys print the same (``1`` and ``"1"``).
    """
    keys = np.asarray(groups)
    names = []
    for idx in parts:
        held = np.unique(keys[idx])
        if len(held) != 1:
            return None
        names.append(str(held[0].item() if hasattr(held[0], "item") else held[0]))
    return names if len(set(names)) == len(names) else None


def federate(
    train: ArrayDataset,
    test: ArrayDataset | None,
    num_parties: int | None,
    scheme: str = "iid",
    *,
    seed: int = 0,
    local_test_fraction: float = 0.2,
    party_prefix: str = "party_",
    **params: object,
) -> FederatedDataset:
    """Split ``train`` among parties by ``scheme`` and give each party a local test split.

    Party ids are ``party_0``, ``party_1``, ... in partition order, except for the ``"group"``
    scheme with one party per group, where each party is named by its group key (``str(key)``,
    in sorted key order), so a writer or hospital keeps its own id. Each party's examples are
    shuffled (seeded) and ``round(local_test_fraction * n)`` of them become its local test set
    (``local_test_fraction=0`` gives ``test=None``). ``test`` becomes the central test set held by
    the aggregator. ``params`` go to the partitioner (see ``partition_indices``).

    Example:
        >>> from fedfuse.data import federate, format_label_stats, load_dataset
        >>> train, test = load_dataset("digits")
        >>> fed = federate(train, test, 10, "dirichlet", alpha=0.3, seed=1)
        >>> print(format_label_stats(fed))
    """
    if not 0 <= local_test_fraction < 1:
        raise ValueError(
            f"local_test_fraction must be in [0, 1), got local_test_fraction={local_test_fraction}"
        )
    parts = partition_indices(train.y, num_parties, scheme, seed=seed, **params)
    names = _group_names(params["groups"], parts) if scheme == "group" else None
    if names is None:
        names = [f"{party_prefix}{i}" for i in range(len(parts))]
    parties = {
        name: _local_split(train.subset(idx), local_test_fraction, np.random.default_rng([seed, i]))
        for i, (name, idx) in enumerate(zip(names, parts, strict=True))
    }
    all_labels = [train.y] if test is None else [train.y, test.y]
    num_classes = int(max(int(y.max(initial=-1)) for y in all_labels)) + 1
    return FederatedDataset(parties, test=test, num_classes=num_classes)


def format_label_stats(fed: FederatedDataset) -> str:
    """A text table: one row per party with its train/test sizes and training label counts.

    The last row totals each column. Example::

        party    train  test |   0   1   2
        party_0     40    10 |  20  20   0
        party_1     40    10 |   0  20  20
        total       80    20 |  20  40  20
    """
    counts = fed.label_stats()
    rows = [
        [pid, str(len(p.train)), str(len(p.test) if p.test is not None else 0)]
        + [str(int(c)) for c in counts[pid]]
        for pid, p in fed.items()
    ]
    totals = np.sum([[int(cell) for cell in row[1:]] for row in rows], axis=0)
    rows.append(["total", *(str(int(t)) for t in totals)])
    header = ["party", "train", "test", *(str(c) for c in range(fed.num_classes))]
    table = [header, *rows]
    widths = [max(len(row[col]) for row in table) for col in range(len(header))]

    def line(row: list[str]) -> str:
        cells = [
            v.ljust(w) if col == 0 else v.rjust(w)
            for col, (v, w) in enumerate(zip(row, widths, strict=True))
        ]
        return "  ".join(cells[:3]) + " | " + "  ".join(cells[3:])

    return "\n".join(line(row) for row in table)
