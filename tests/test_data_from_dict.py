"""Tests for FederatedDataset.from_dict: a federation from the user's own per-client arrays."""

from __future__ import annotations

import numpy as np
import pytest

from fedfuse.data import ArrayDataset, FederatedDataset, PartyData


def client(n: int, offset: float = 0.0, features: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """``n`` rows whose first feature is ``offset + row``, labels cycling 0..2."""
    x = np.zeros((n, features), dtype=np.float32)
    x[:, 0] = offset + np.arange(n)
    return x, np.arange(n) % 3


def test_pairs_keep_ids_order_and_values() -> None:
    mapping = {"zurich": client(4), "austin": client(2, 100.0), 7: client(3, 200.0)}
    fed = FederatedDataset.from_dict(mapping)
    assert fed.party_ids == ["zurich", "austin", "7"]
    np.testing.assert_array_equal(fed["austin"].train.x[:, 0], [100.0, 101.0])
    np.testing.assert_array_equal(fed["7"].train.y, [0, 1, 2])
    assert all(fed[p].test is None for p in fed)
    assert fed.test is None
    assert fed.num_classes == 3


def test_every_accepted_form_gives_the_same_party() -> None:
    x, y = client(5)
    xt, yt = client(2, 50.0)
    forms = {
        "pair": (x, y),
        "list_pair": [x.tolist(), y.tolist()],
        "four": (x, y, xt, yt),
        "xy_dict": {"x": x, "y": y},
        "npz_keys": {"x_train": x, "y_train": y, "x_test": xt, "y_test": yt},
        "dataset": ArrayDataset(x, y),
        "party": PartyData(ArrayDataset(x, y), ArrayDataset(xt, yt)),
    }
    fed = FederatedDataset.from_dict(forms)
    assert fed.party_ids == list(forms)
    for name in forms:
        np.testing.assert_array_equal(fed[name].train.x, x)
        np.testing.assert_array_equal(fed[name].train.y, y)
    for name in ("four", "npz_keys", "party"):
        np.testing.assert_array_equal(fed[name].test.x, xt)
        np.testing.assert_array_equal(fed[name].test.y, yt)
    for name in ("pair", "list_pair", "xy_dict", "dataset"):
        assert fed[name].test is None


def test_central_test_set_and_num_classes_from_all_labels() -> None:
    x, _ = client(3)
    fed = FederatedDataset.from_dict(
        {"a": (x, [0, 1, 0]), "b": (x, [1, 1, 0], x[:1], [4])}, test=(x[:2], [0, 6])
    )
    assert isinstance(fed.test, ArrayDataset)
    np.testing.assert_array_equal(fed.test.y, [0, 6])
    assert fed.num_classes == 7
    assert FederatedDataset.from_dict({"a": (x, [0, 1, 0])}, num_classes=10).num_classes == 10


def test_empty_local_test_split_means_none() -> None:
    x, y = client(3)
    fed = FederatedDataset.from_dict({"a": (x, y, x[:0], y[:0])})
    assert fed["a"].test is None


def test_pooled_train_of_user_clients() -> None:
    fed = FederatedDataset.from_dict({"a": client(2), "b": client(3, 10.0)})
    np.testing.assert_array_equal(fed.pooled_train().x[:, 0], [0, 1, 10, 11, 12])


@pytest.mark.parametrize(
    ("mapping", "message"),
    [
        ({}, "non-empty mapping"),
        ({"a": client(4)[0]}, "client 'a': expected \\(x, y\\), .* got ndarray"),
        ({"a": (1, 2, 3)}, "client 'a': expected .* got tuple of length 3"),
        ({"a": {"features": 1}}, "client 'a': expected .* got dict with keys features"),
        ({"a": client(4), "b": (client(4)[0], np.zeros(3))}, "client 'b' train: x has 4 rows"),
        (
            {"a": (*client(4), np.zeros((2, 3)), np.zeros(1))},
            "client 'a' test: x has 2 rows but y has 1 labels",
        ),
        ({"a": client(4), "b": client(4, features=5)}, "client 'b' train: rows of shape \\(5,\\)"),
        (
            {"a": client(4), "b": (*client(2), np.zeros((1, 4)), [0])},
            "client 'b' test: rows of shape \\(4,\\), but client 'a' has rows of shape \\(3,\\)",
        ),
        ({"a": (np.zeros((2, 3)), np.zeros((2, 1)))}, "client 'a' train: y must be one label"),
        ({"a": (np.float32(1.0), [0])}, "client 'a' train: x must have one row per example"),
        ({"a": ([[1.0, 2.0], [3.0]], [0, 1])}, "client 'a' train: x and y must be rectangular"),
        ({"a": (np.array([["a", "b"]]), [0])}, "client 'a' train: x and y must be numeric"),
        ({"a": (np.zeros((0, 3)), np.zeros(0))}, "client 'a': has no training examples"),
        ({1: client(2), "1": client(2)}, "client ids '1' and another id both read '1'"),
        (
            {"a": {"x_train": np.zeros((2, 3)), "y_train": [0, 1], "x_test": np.zeros((1, 3))}},
            "client 'a': give both x_test and y_test",
        ),
    ],
)
def test_errors_name_the_client(mapping: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FederatedDataset.from_dict(mapping)


def test_central_test_set_is_checked() -> None:
    with pytest.raises(ValueError, match="the central test set: rows of shape \\(2,\\)"):
        FederatedDataset.from_dict({"a": client(3)}, test=(np.zeros((2, 2)), [0, 1]))
    with pytest.raises(ValueError, match="the central test set: expected an ArrayDataset"):
        FederatedDataset.from_dict({"a": client(3)}, test="test.csv")
