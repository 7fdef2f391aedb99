"""Tests for the ``class_window`` partition: consecutive classes per party, windows on a ring."""

from __future__ import annotations

import numpy as np
import pytest

from fedfuse.cli import main
from fedfuse.consensus import ConsensusConfig
from fedfuse.data import (
    PARTITIONS,
    ArrayDataset,
    DataSpec,
    federate,
    partition_defaults,
    partition_indices,
    partition_params,
)
from fedfuse.data._partition import class_window


def labels_of(n_per_class: int = 20, num_classes: int = 10) -> np.ndarray:
    """``n_per_class`` examples of each class ``0 .. num_classes-1``, shuffled."""
    return np.random.default_rng(3).permutation(np.arange(n_per_class * num_classes) % num_classes)


def held_classes(labels: np.ndarray, parts: list[np.ndarray]) -> list[list[int]]:
    return [np.unique(labels[p]).tolist() for p in parts]


def window(start: int, size: int, num_classes: int = 10) -> list[int]:
    return sorted((start + j) % num_classes for j in range(size))


def assert_partition_of_held(labels: np.ndarray, parts: list[np.ndarray]) -> None:
    """Disjoint, sorted int64 parts that together are every example of every held class."""
    assert all(p.dtype == np.int64 and np.all(np.diff(p) > 0) for p in parts)
    everything = np.concatenate(parts)
    assert len(everything) == len(np.unique(everything))
    held = np.unique(labels[everything])
    assert np.array_equal(np.sort(everything), np.flatnonzero(np.isin(labels, held)))


def test_eight_parties_five_of_ten_classes_spread_evenly() -> None:
    labels = labels_of()
    parts = class_window(labels, 8, classes_per_party=5)
    starts = [0, 1, 2, 3, 5, 6, 7, 8]  # floor(i * 10 / 8)
    assert held_classes(labels, parts) == [window(s, 5) for s in starts]
    holders = np.zeros(10, dtype=int)
    for classes in held_classes(labels, parts):
        holders[classes] += 1
    assert holders.tolist() == [4] * 10  # each class on exactly 4 parties
    # 20 examples of a class split evenly among its 4 holders: 5 each, 25 per party
    assert [len(p) for p in parts] == [25] * 8
    for p in parts:
        assert set(np.bincount(labels[p], minlength=10).tolist()) == {0, 5}
    assert_partition_of_held(labels, parts)


def test_ring_neighbours_share_classes() -> None:
    labels = labels_of()
    held = [set(c) for c in held_classes(labels, class_window(labels, 8))]
    shared = [len(held[i] & held[(i + 1) % 8]) for i in range(8)]
    assert min(shared) >= 3 and max(shared) == 4
    assert shared[3] == 3 and shared[7] == 3  # where the start jumps by 2 (3->5, 8->0)


def test_default_shift_is_classes_over_parties() -> None:
    labels = labels_of()
    default = class_window(labels, 8, classes_per_party=5)
    explicit = class_window(labels, 8, classes_per_party=5, shift=1.25)
    assert all(np.array_equal(a, b) for a, b in zip(default, explicit, strict=True))


def test_eight_of_ten_shifted_by_four() -> None:
    """NTT's ICML 2021 layout: 8 of 10 classes, each party's window 4 classes further on."""
    labels = labels_of()
    parts = class_window(labels, 5, classes_per_party=8, shift=4)
    starts = [0, 4, 8, 2, 6]  # 4 * i mod 10
    assert held_classes(labels, parts) == [window(s, 8) for s in starts]
    assert held_classes(labels, parts)[1] == [0, 1, 4, 5, 6, 7, 8, 9]
    assert_partition_of_held(labels, parts)


def test_fractional_shift_is_read_as_its_decimal() -> None:
    """Party 25 with shift=1.16 starts at class 29 (25 * 1.16 = 29), although in floats
    ``25 * 1.16 == 28.999999999999996``, whose floor is 28."""
    labels = labels_of(n_per_class=2, num_classes=30)
    parts = class_window(labels, 26, classes_per_party=1, shift=1.16)
    starts = [i * 116 // 100 for i in range(26)]
    assert starts[25] == 29
    assert held_classes(labels, parts) == [[s] for s in starts]


def test_classes_outside_every_window_are_left_out() -> None:
    labels = labels_of()
    parts = class_window(labels, 2, classes_per_party=2)  # starts 0 and 5
    assert held_classes(labels, parts) == [[0, 1], [5, 6]]
    assert_partition_of_held(labels, parts)
    assert len(np.concatenate(parts)) == 4 * 20


def test_class_order_is_the_sorted_labels() -> None:
    labels = np.array(["cat", "ant", "dog", "bee"] * 5)
    parts = class_window(labels, 2, classes_per_party=2)  # ant bee | cat dog
    assert [sorted(set(labels[p].tolist())) for p in parts] == [["ant", "bee"], ["cat", "dog"]]


def test_imbalance_changes_shares_but_keeps_every_example_once() -> None:
    labels = labels_of(n_per_class=100)
    even = class_window(labels, 8, imbalance=0.0, seed=1)
    skewed = class_window(labels, 8, imbalance=0.8, seed=1)
    assert_partition_of_held(labels, skewed)
    assert held_classes(labels, skewed) == held_classes(labels, even)
    even_counts = np.array([np.bincount(labels[p], minlength=10) for p in even])
    skewed_counts = np.array([np.bincount(labels[p], minlength=10) for p in skewed])
    assert set(even_counts[even_counts > 0].tolist()) == {25}
    assert skewed_counts.sum(axis=0).tolist() == [100] * 10
    held = skewed_counts > 0
    assert skewed_counts[held].min() < 20 and skewed_counts[held].max() > 30
    # shares of U[0.2, 1.8]: no holder's share is more than 9 times another's (plus rounding)
    for c in range(10):
        shares = skewed_counts[held[:, c], c]
        assert shares.max() <= 9 * shares.min() + 9


def test_near_total_imbalance_still_gives_each_holder_an_example() -> None:
    labels = labels_of(n_per_class=4)  # exactly one example per holder: 4 holders per class
    for seed in range(5):
        parts = class_window(labels, 8, imbalance=0.99, seed=seed)
        assert [len(p) for p in parts] == [5] * 8
        assert_partition_of_held(labels, parts)


def test_deterministic_in_seed() -> None:
    labels = labels_of()
    for imbalance in (0.0, 0.5):
        a = class_window(labels, 8, imbalance=imbalance, seed=4)
        b = class_window(labels, 8, imbalance=imbalance, seed=4)
        c = class_window(labels, 8, imbalance=imbalance, seed=5)
        assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
        assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"classes_per_party": 0}, "classes_per_party must be an integer between 1 and the 10"),
        ({"classes_per_party": 11}, "got classes_per_party=11"),
        ({"classes_per_party": 2.5}, "classes_per_party must be an integer"),
        ({"shift": 0}, r"shift must be a finite number > 0 \(or None\), got shift=0"),
        ({"shift": -1.5}, "got shift=-1.5"),
        ({"shift": float("inf")}, "got shift=inf"),
        ({"shift": float("nan")}, "got shift=nan"),
        ({"shift": "4"}, "got shift='4'"),
        ({"imbalance": 1.0}, r"imbalance must be a number in \[0, 1\), got imbalance=1.0"),
        ({"imbalance": -0.1}, "got imbalance=-0.1"),
        ({"imbalance": float("nan")}, "got imbalance=nan"),
    ],
)
def test_bad_parameters_are_named(params: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        class_window(labels_of(), 8, **params)


def test_a_class_with_fewer_examples_than_holders_is_named() -> None:
    labels = np.concatenate([labels_of(), [10, 10, 10]])  # class 10 has 3 examples
    with pytest.raises(ValueError, match="class 10 has 3 examples but its windows give it to 4"):
        class_window(labels, 11, classes_per_party=4, shift=1)


def test_party_count_is_checked() -> None:
    with pytest.raises(ValueError, match="num_parties must be at least 1"):
        class_window(labels_of(), 0)
    with pytest.raises(ValueError, match="exceeds the 20 samples"):
        class_window(labels_of(n_per_class=2), 21)


def test_registered_with_its_parameters() -> None:
    assert "class_window" in PARTITIONS
    assert partition_params("class_window") == ("classes_per_party", "shift", "imbalance")
    assert partition_defaults("class_window") == {
        "classes_per_party": 5,
        "shift": None,
        "imbalance": 0.0,
    }
    labels = labels_of()
    by_name = partition_indices(labels, 8, "class_window", seed=2, shift=4, imbalance=0.2)
    direct = class_window(labels, 8, shift=4, imbalance=0.2, seed=2)
    assert all(np.array_equal(a, b) for a, b in zip(by_name, direct, strict=True))
    with pytest.raises(ValueError, match="unknown parameter.*alpha.*allowed: classes_per_party"):
        partition_indices(labels, 8, "class_window", alpha=0.3)


def test_federate_and_data_spec() -> None:
    labels = labels_of()
    train = ArrayDataset(np.arange(len(labels), dtype=np.float32)[:, None], labels)
    fed = federate(train, None, 8, "class_window", classes_per_party=5, local_test_fraction=0)
    assert list(fed) == [f"party_{i}" for i in range(8)]
    starts = [0, 1, 2, 3, 5, 6, 7, 8]
    assert [np.unique(p.train.y).tolist() for p in fed.values()] == [window(s, 5) for s in starts]
    spec = DataSpec(partition="class_window", partition_params={"shift": 4, "imbalance": 0.2})
    spec.check()


def test_consensus_config_takes_flat_parameters() -> None:
    config = ConsensusConfig.from_dict(
        {"partition": "class_window", "classes_per_party": 5, "shift": 4, "imbalance": 0.2}
    )
    config.check()
    assert config.partition_params == {"classes_per_party": 5, "shift": 4, "imbalance": 0.2}
    config = ConsensusConfig().replace(partition="class_window", classes_per_node=5)
    config.check()
    assert config.partition_params == {"classes_per_party": 5}


def test_fedfuse_partition_command(tmp_path, capsys) -> None:
    code = main(
        [
            "partition",
            "--dataset", "digits",
            "--num-parties", "8",
            "--partition", "class_window",
            "--classes-per-party", "5",
            "--shift", "1.25",
            "--imbalance", "0.2",
            "--out", str(tmp_path),
        ]
    )  # fmt: skip
    assert code == 0
    files = sorted(tmp_path.glob("data_party*.npz"))
    assert len(files) == 8
    assert "party_7" in capsys.readouterr().out
    with np.load(tmp_path / "data_party4.npz") as npz:
        held = np.unique(np.concatenate([npz["y_train"], npz["y_test"]]))
    assert held.tolist() == [5, 6, 7, 8, 9]
