"""Tests for fedfuse.data: loaders (idx, npz, scikit-learn), partitioners and federate().

Offline and fast: idx and npz files are written into tmp_path; Debian's Fashion-MNIST package is
never needed.
"""

from __future__ import annotations

import gzip
import io
import struct
from pathlib import Path

import numpy as np
import pytest

from fedfuse.data import (
    DATASETS,
    PARTITIONS,
    ArrayDataset,
    DatasetFormatError,
    DatasetNotFoundError,
    FederatedDataset,
    PartyData,
    by_group,
    classes_per_party,
    dirichlet,
    fashion_mnist_dir,
    federate,
    format_label_stats,
    iid,
    load_dataset,
    load_federated_npz,
    load_idx,
    load_mnist_idx,
    load_party_npz,
    load_sklearn,
    partition_indices,
    partition_params,
    quantity_skew,
    shards,
)
from fedfuse.weights import SizeLimitError, SizeLimits

MNIST_STEMS = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


# --- idx files -------------------------------------------------------------------------------

IDX_CODES = {"uint8": 0x08, "int8": 0x09, "int16": 0x0B, "int32": 0x0C, "float32": 0x0D}
IDX_CODES["float64"] = 0x0E


def idx_bytes(array: np.ndarray) -> bytes:
    """An idx file written independently of the loader: magic, big-endian dims, big-endian data."""
    header = bytes([0, 0, IDX_CODES[array.dtype.name], array.ndim])
    dims = struct.pack(f">{array.ndim}I", *array.shape)
    return header + dims + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_idx(path: Path, array: np.ndarray, *, compress: bool = False) -> Path:
    raw = idx_bytes(array)
    path.write_bytes(gzip.compress(raw) if compress else raw)
    return path


@pytest.mark.parametrize("dtype", sorted(IDX_CODES))
@pytest.mark.parametrize("compress", [False, True])
def test_idx_round_trip(tmp_path: Path, dtype: str, compress: bool) -> None:
    array = (np.arange(24).reshape(2, 3, 4) - 5).astype(dtype)
    if dtype == "uint8":
        array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4) * 10
    loaded = load_idx(write_idx(tmp_path / "a.idx", array, compress=compress))
    assert loaded.dtype == np.dtype(dtype)
    assert loaded.dtype.isnative
    assert loaded.shape == (2, 3, 4)
    np.testing.assert_array_equal(loaded, array)


def test_idx_gzip_detected_by_magic_not_name(tmp_path: Path) -> None:
    labels = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
    gz_without_suffix = write_idx(tmp_path / "labels", labels, compress=True)
    plain_with_gz_suffix = write_idx(tmp_path / "labels-plain.gz", labels)
    np.testing.assert_array_equal(load_idx(gz_without_suffix), labels)
    np.testing.assert_array_equal(load_idx(plain_with_gz_suffix), labels)


@pytest.mark.parametrize("compress", [False, True])
def test_idx_truncated_data_names_file(tmp_path: Path, compress: bool) -> None:
    raw = idx_bytes(np.zeros((4, 5), dtype=np.uint8))[:-3]
    path = tmp_path / "short.idx"
    path.write_bytes(gzip.compress(raw) if compress else raw)
    with pytest.raises(DatasetFormatError, match="truncated") as info:
        load_idx(path)
    assert str(path) in str(info.value)
    assert "20 bytes" in str(info.value) and "17" in str(info.value)
    assert isinstance(info.value, ValueError)


def test_idx_trailing_bytes_rejected(tmp_path: Path) -> None:
    path = tmp_path / "long.idx"
    path.write_bytes(idx_bytes(np.zeros(3, dtype=np.uint8)) + b"\x00")
    with pytest.raises(DatasetFormatError, match="trailing bytes"):
        load_idx(path)


def test_idx_truncated_gzip_stream(tmp_path: Path) -> None:
    path = tmp_path / "cut.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.arange(100, dtype=np.uint8)))[:-10])
    with pytest.raises(DatasetFormatError, match="gzip") as info:
        load_idx(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"hello, this is not idx", "bad magic"),
        (b"\x00\x00\x07\x01\x00\x00\x00\x01\x00", "dtype code 0x07"),
        (b"\x00\x00\x08\x03\x00\x00", "truncated idx header"),
        (b"", "bad magic"),
    ],
)
def test_idx_not_idx(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.idx"
    path.write_bytes(content)
    with pytest.raises(DatasetFormatError, match=message) as info:
        load_idx(path)
    assert str(path) in str(info.value)


def make_mnist_dir(directory: Path, n_train: int = 5, n_test: int = 3) -> dict[str, np.ndarray]:
    """Four tiny MNIST-format files: train ones gzipped, test ones plain (both occur)."""
    rng = np.random.default_rng(0)
    arrays = {
        "train_x": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_y": rng.integers(0, 10, n_train).astype(np.uint8),
        "test_x": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_y": rng.integers(0, 10, n_test).astype(np.uint8),
    }
    arrays["train_x"][0, 0, 0], arrays["train_x"][0, 0, 1] = 0, 255
    directory.mkdir(parents=True, exist_ok=True)
    write_idx(directory / f"{MNIST_STEMS[0]}.gz", arrays["train_x"], compress=True)
    write_idx(directory / f"{MNIST_STEMS[1]}.gz", arrays["train_y"], compress=True)
    write_idx(directory / MNIST_STEMS[2], arrays["test_x"])
    write_idx(directory / MNIST_STEMS[3], arrays["test_y"])
    return arrays


def test_load_mnist_idx(tmp_path: Path) -> None:
    arrays = make_mnist_dir(tmp_path)
    train, test = load_mnist_idx(tmp_path)
    assert train.x.shape == (5, 1, 28, 28) and test.x.shape == (3, 1, 28, 28)
    assert train.x.dtype == np.float32 and train.y.dtype == np.int64
    assert train.x.min() == 0.0 and train.x.max() == 1.0
    np.testing.assert_allclose(train.x[:, 0], arrays["train_x"] / 255.0, rtol=1e-6)
    np.testing.assert_allclose(test.x[:, 0], arrays["test_x"] / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(train.y, arrays["train_y"])
    np.testing.assert_array_equal(test.y, arrays["test_y"])


def test_load_mnist_idx_missing_files(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError) as info:
        load_mnist_idx(tmp_path)
    assert isinstance(info.value, FileNotFoundError)
    message = str(info.value)
    assert str(tmp_path) in message
    assert all(f"{stem}[.gz]" in message for stem in MNIST_STEMS)


def test_load_mnist_idx_names_the_missing_file(tmp_path: Path) -> None:
    make_mnist_dir(tmp_path)
    (tmp_path / MNIST_STEMS[3]).unlink()
    with pytest.raises(DatasetNotFoundError, match=r"missing t10k-labels-idx1-ubyte\[\.gz\] \("):
        load_mnist_idx(tmp_path)


def test_load_mnist_idx_count_mismatch(tmp_path: Path) -> None:
    make_mnist_dir(tmp_path)
    write_idx(tmp_path / MNIST_STEMS[3], np.zeros(2, dtype=np.uint8))
    with pytest.raises(DatasetFormatError, match=r"3 images but .* has 2 labels"):
        load_mnist_idx(tmp_path)


def test_fashion_mnist_dir_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    arrays = make_mnist_dir(tmp_path / "fmnist")
    monkeypatch.setenv("FEDFUSE_FASHION_MNIST_DIR", str(tmp_path / "fmnist"))
    assert fashion_mnist_dir() == tmp_path / "fmnist"
    train, test = load_dataset("fashion_mnist")
    np.testing.assert_array_equal(train.y, arrays["train_y"])
    assert len(test) == 3


def test_fashion_mnist_env_dir_without_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FEDFUSE_FASHION_MNIST_DIR", str(tmp_path))
    with pytest.raises(DatasetNotFoundError, match="FEDFUSE_FASHION_MNIST_DIR="):
        fashion_mnist_dir()


def test_fashion_mnist_missing_says_how_to_get_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FEDFUSE_FASHION_MNIST_DIR", raising=False)
    monkeypatch.setattr("fedfuse.data._loaders.DEBIAN_FASHION_MNIST_DIR", tmp_path / "absent")
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("fashion_mnist")
    message = str(info.value)
    assert "sudo apt-get install dataset-fashion-mnist" in message
    assert "FEDFUSE_FASHION_MNIST_DIR" in message
    assert "train-images-idx3-ubyte" in message


def test_load_dataset_mnist_needs_data_dir(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match="data_dir"):
        load_dataset("mnist")
    make_mnist_dir(tmp_path)
    train, test = load_dataset("mnist", data_dir=tmp_path)
    assert (len(train), len(test)) == (5, 3)


def test_load_dataset_unknown_name() -> None:
    with pytest.raises(ValueError) as info:
        load_dataset("foo")
    assert str(info.value) == (
        "unknown dataset 'foo'; choose one of: "
        "breast_cancer, cifar10, digits, fashion_mnist, iris, mnist, wine"
    )
    assert DATASETS == (
        "breast_cancer",
        "cifar10",
        "digits",
        "fashion_mnist",
        "iris",
        "mnist",
        "wine",
    )


# --- scikit-learn ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "n_total", "n_features", "n_classes"),
    [
        ("digits", 1797, 64, 10),
        ("breast_cancer", 569, 30, 2),
        ("iris", 150, 4, 3),
        ("wine", 178, 13, 3),
    ],
)
def test_load_sklearn(name: str, n_total: int, n_features: int, n_classes: int) -> None:
    train, test = load_dataset(name)
    assert len(train) + len(test) == n_total
    assert len(test) == int(np.ceil(0.25 * n_total))
    assert train.x.shape[1:] == (n_features,) and test.x.shape[1:] == (n_features,)
    assert train.x.dtype == np.float32 and train.y.dtype == np.int64
    assert set(np.unique(train.y)) == set(range(n_classes)) == set(np.unique(test.y))
    # Stratified: each class has (almost) the same share in train and test.
    share_train = np.bincount(train.y) / len(train)
    share_test = np.bincount(test.y) / len(test)
    assert np.abs(share_train - share_test).max() < 0.03
    if name == "digits":
        assert train.x.min() == 0.0 and train.x.max() == 1.0
    else:
        np.testing.assert_allclose(train.x.mean(axis=0), 0.0, atol=1e-5)
        np.testing.assert_allclose(train.x.std(axis=0), 1.0, atol=1e-4)


def test_load_sklearn_seeded() -> None:
    a_train, _ = load_sklearn("iris", seed=3)
    b_train, _ = load_sklearn("iris", seed=3)
    c_train, _ = load_sklearn("iris", seed=4)
    np.testing.assert_array_equal(a_train.x, b_train.x)
    assert not np.array_equal(a_train.x, c_train.x)


def test_load_sklearn_unknown() -> None:
    with pytest.raises(ValueError, match="choose one of: breast_cancer, digits, iris, wine"):
        load_sklearn("mnist")


# --- party .npz files ------------------------------------------------------------------------


def party_arrays(n_train: int = 6, n_test: int = 2) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {
        "x_train": rng.normal(size=(n_train, 1, 4, 4)).astype(np.float32),
        "y_train": rng.integers(0, 3, n_train),
        "x_test": rng.normal(size=(n_test, 1, 4, 4)).astype(np.float32),
        "y_test": rng.integers(0, 3, n_test),
    }


def npz_bytes(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def assert_party_equals(party: PartyData, arrays: dict[str, np.ndarray]) -> None:
    np.testing.assert_array_equal(party.train.x, arrays["x_train"])
    np.testing.assert_array_equal(party.train.y, arrays["y_train"])
    assert party.test is not None
    np.testing.assert_array_equal(party.test.x, arrays["x_test"])
    np.testing.assert_array_equal(party.test.y, arrays["y_test"])


def test_party_npz_from_path_bytes_and_file(tmp_path: Path) -> None:
    arrays = party_arrays()
    path = tmp_path / "data_party0.npz"
    path.write_bytes(npz_bytes(**arrays, extra=np.zeros(1)))
    assert_party_equals(load_party_npz(path), arrays)
    assert_party_equals(load_party_npz(str(path)), arrays)
    assert_party_equals(load_party_npz(path.read_bytes()), arrays)
    with path.open("rb") as fh:
        assert_party_equals(load_party_npz(fh), arrays)


def test_party_npz_empty_test_means_none() -> None:
    arrays = party_arrays(n_test=0)
    party = load_party_npz(npz_bytes(**arrays))
    assert party.test is None
    assert len(party.train) == 6


def test_party_npz_not_a_zip(tmp_path: Path) -> None:
    text = tmp_path / "notes.npz"
    text.write_text("definitely not numpy")
    with pytest.raises(DatasetFormatError, match=r"not an \.npz file") as info:
        load_party_npz(text)
    assert str(text) in str(info.value)
    npy = io.BytesIO()
    np.save(npy, np.zeros(3))
    with pytest.raises(DatasetFormatError, match=r"<bytes>: not an \.npz file"):
        load_party_npz(npy.getvalue())


@pytest.mark.parametrize("keep", [0.5, 0.9])
def test_party_npz_truncated(tmp_path: Path, keep: float) -> None:
    raw = npz_bytes(**party_arrays(n_train=200))
    path = tmp_path / "cut.npz"
    path.write_bytes(raw[: int(len(raw) * keep)])
    with pytest.raises(DatasetFormatError, match="corrupt or truncated") as info:
        load_party_npz(path)
    assert str(path) in str(info.value)


def test_party_npz_corrupt_member() -> None:
    raw = bytearray(npz_bytes(**party_arrays(n_train=50)))
    raw[200:260] = b"\xff" * 60  # inside x_train's data: the zip's CRC check fails
    with pytest.raises(DatasetFormatError, match="'x_train' is corrupt or truncated"):
        load_party_npz(bytes(raw))


def test_party_npz_missing_key_named() -> None:
    arrays = party_arrays()
    del arrays["y_test"]
    with pytest.raises(DatasetFormatError, match="missing key\\(s\\) y_test; found"):
        load_party_npz(npz_bytes(**arrays))


def test_party_npz_refuses_object_arrays() -> None:
    arrays = party_arrays()
    arrays["y_train"] = np.array([{"evil": 1}] * 6, dtype=object)
    with pytest.raises(DatasetFormatError, match="'y_train' holds Python objects"):
        load_party_npz(npz_bytes(**arrays))


@pytest.mark.parametrize("split", ["train", "test"])
def test_party_npz_mismatched_rows(split: str) -> None:
    arrays = party_arrays()
    arrays[f"y_{split}"] = arrays[f"y_{split}"][:-1]
    with pytest.raises(DatasetFormatError, match=f"x_{split} has .* rows but y_{split} has"):
        load_party_npz(npz_bytes(**arrays))


def test_federated_npz_round_trip(tmp_path: Path) -> None:
    fed = federate(toy_dataset(240), None, 12, "dirichlet", alpha=1.0, seed=2)
    paths = fed.save_npz(tmp_path)
    for loaded in (load_federated_npz(paths), load_federated_npz(tmp_path)):
        assert loaded.party_ids == [f"party_{i}" for i in range(12)]
        for pid in fed:
            np.testing.assert_array_equal(loaded[pid].train.x, fed[pid].train.x)
            np.testing.assert_array_equal(loaded[pid].train.y, fed[pid].train.y)
            np.testing.assert_array_equal(loaded[pid].test.x, fed[pid].test.x)
        assert loaded.test is None


def test_federated_npz_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match=r"no \.npz party files"):
        load_federated_npz(tmp_path)


# --- partitioners ----------------------------------------------------------------------------


def toy_labels(n: int = 200, num_classes: int = 10) -> np.ndarray:
    """``n`` labels, equally many of each class, shuffled."""
    return np.random.default_rng(7).permutation(np.arange(n) % num_classes)


def toy_dataset(n: int = 200, num_classes: int = 10) -> ArrayDataset:
    """x is each example's own row number, so tests can trace where every example went."""
    return ArrayDataset(np.arange(n, dtype=np.float32)[:, None], toy_labels(n, num_classes))


GROUPS = np.arange(200) % 8

SCHEMES = [
    ("iid", {}),
    ("dirichlet", {"alpha": 0.5}),
    ("classes", {"classes_per_party": 2}),
    ("shards", {"shards_per_party": 2}),
    ("group", {"groups": GROUPS}),
    ("quantity", {"alpha": 1.0}),
]


@pytest.mark.parametrize(("scheme", "params"), SCHEMES, ids=[s for s, _ in SCHEMES])
def test_partition_is_disjoint_sorted_and_covering(scheme: str, params: dict) -> None:
    labels = toy_labels()
    parts = partition_indices(labels, 8, scheme, seed=0, **params)
    assert len(parts) == 8
    assert all(p.dtype == np.int64 and np.all(np.diff(p) > 0) for p in parts)
    everything = np.concatenate(parts)
    assert len(everything) == len(np.unique(everything)) == 200


@pytest.mark.parametrize(("scheme", "params"), SCHEMES, ids=[s for s, _ in SCHEMES])
def test_partition_deterministic_per_seed(scheme: str, params: dict) -> None:
    labels = toy_labels()
    a = partition_indices(labels, 8, scheme, seed=1, **params)
    b = partition_indices(labels, 8, scheme, seed=1, **params)
    c = partition_indices(labels, 8, scheme, seed=2, **params)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    same_as_other_seed = all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))
    assert same_as_other_seed == (scheme == "group")  # grouping by key involves no randomness


def test_iid_sizes_and_labels_balanced() -> None:
    parts = iid(toy_labels(), 7)
    assert sorted(len(p) for p in parts) == [28] * 3 + [29] * 4


def mean_label_skew(labels: np.ndarray, parts: list[np.ndarray]) -> float:
    """Mean total-variation distance between each party's label distribution and the global one."""
    num_classes = int(labels.max()) + 1
    overall = np.bincount(labels, minlength=num_classes) / len(labels)
    distances = [
        0.5 * np.abs(np.bincount(labels[p], minlength=num_classes) / len(p) - overall).sum()
        for p in parts
    ]
    return float(np.mean(distances))


def test_dirichlet_small_alpha_is_more_skewed() -> None:
    labels = toy_labels(2000)
    skewed = mean_label_skew(labels, dirichlet(labels, 10, alpha=0.1, seed=0))
    near_iid = mean_label_skew(labels, dirichlet(labels, 10, alpha=100.0, seed=0))
    assert skewed > 0.5
    assert near_iid < 0.1
    assert mean_label_skew(labels, iid(labels, 10)) < 0.1


def test_dirichlet_respects_min_size() -> None:
    labels = toy_labels(2000)
    parts = dirichlet(labels, 50, alpha=0.1, min_size=5, seed=0)
    assert min(len(p) for p in parts) >= 5
    assert sum(len(p) for p in parts) == 2000


def test_dirichlet_gives_up_with_clear_error() -> None:
    with pytest.raises(ValueError, match=r"could not draw a Dirichlet\(alpha=0\.001\)"):
        dirichlet(np.zeros(20, dtype=np.int64), 10, alpha=0.001, min_size=2)
    with pytest.raises(ValueError, match="min_size=5 for 10 parties needs 50 samples"):
        dirichlet(toy_labels(40), 10, min_size=5)


@pytest.mark.parametrize(("num_parties", "per_party"), [(5, 2), (10, 3), (10, 1), (3, 10)])
def test_classes_per_party_exactly_that_many(num_parties: int, per_party: int) -> None:
    labels = toy_labels(300)
    parts = classes_per_party(labels, num_parties, classes_per_party=per_party, seed=3)
    assert [len(np.unique(labels[p])) for p in parts] == [per_party] * num_parties
    held = set(np.concatenate([labels[p] for p in parts]).tolist())
    assert held == set(range(10))  # num_parties * k >= 10 classes: every class is held
    assert sum(len(p) for p in parts) == 300


def test_classes_per_party_leaves_classes_out_by_design() -> None:
    labels = toy_labels(200)
    parts = classes_per_party(labels, 3, classes_per_party=2, seed=0)
    held = np.unique(np.concatenate([labels[p] for p in parts]))
    assert len(held) == 6
    assert sum(len(p) for p in parts) == np.isin(labels, held).sum() == 120


def test_shards_give_few_classes_per_party() -> None:
    labels = toy_labels(200)  # 20 per class; 20 shards of 10 never straddle two classes
    parts = shards(labels, 10, shards_per_party=2, seed=0)
    assert [len(p) for p in parts] == [20] * 10
    assert max(len(np.unique(labels[p])) for p in parts) <= 2


def test_by_group_one_party_per_key() -> None:
    groups = np.array(["bob", "amy", "bob", "cat", "amy", "bob"])
    parts = by_group(groups)
    assert [p.tolist() for p in parts] == [[1, 4], [0, 2, 5], [3]]


def test_by_group_merges_whole_groups_balanced() -> None:
    groups = np.repeat(np.arange(6), [50, 40, 30, 20, 10, 10])
    parts = by_group(groups, 3)
    assert sorted(len(p) for p in parts) == [50, 50, 60]
    for p in parts:  # no group is split between parties
        for g in np.unique(groups[p]):
            assert np.isin(np.flatnonzero(groups == g), p).all()
    with pytest.raises(ValueError, match="num_parties=7 exceeds the 6 distinct groups"):
        by_group(groups, 7)


def test_quantity_skew_sizes_vary_labels_do_not() -> None:
    labels = toy_labels(2000)
    parts = quantity_skew(labels, 10, alpha=0.3, min_size=10, seed=0)
    sizes = [len(p) for p in parts]
    assert min(sizes) >= 10 and sum(sizes) == 2000
    assert max(sizes) > 5 * min(sizes)
    big = [p for p in parts if len(p) >= 100]
    assert mean_label_skew(labels, big) < 0.1


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: partition_indices(toy_labels(), 4, "zipf"), "unknown scheme 'zipf'; choose one"),
        (lambda: partition_indices(toy_labels(), 0, "iid"), "num_parties must be at least 1"),
        (
            lambda: partition_indices(toy_labels(40), 50, "iid"),
            "num_parties=50 exceeds the 40 samples available",
        ),
        (lambda: dirichlet(toy_labels(), 4, alpha=0), "alpha must be > 0, got alpha=0"),
        (lambda: quantity_skew(toy_labels(), 4, alpha=-1.0), "alpha must be > 0"),
        (
            lambda: classes_per_party(toy_labels(), 4, classes_per_party=0),
            "classes_per_party must be between 1 and the 10",
        ),
        (
            lambda: classes_per_party(toy_labels(), 4, classes_per_party=11),
            "got classes_per_party=11",
        ),
        (
            lambda: partition_indices(toy_labels(), 4, "classes", k=2),
            "unknown parameter\\(s\\) k for scheme 'classes'; allowed: classes_per_party$",
        ),
        (
            lambda: partition_indices(toy_labels(), 4, "dirichlet", beta=2),
            "unknown parameter\\(s\\) beta for scheme 'dirichlet'; allowed: alpha, min_size",
        ),
        (
            lambda: partition_indices(toy_labels(), 4, "iid", k=2),
            "allowed: \\(none\\)",
        ),
        (lambda: partition_indices(toy_labels(), 4, "group"), "needs groups="),
        (lambda: partition_indices(toy_labels(), None, "iid"), "needs num_parties"),
        (lambda: iid(np.zeros((10, 3)), 2), "one-hot"),
        (lambda: shards(toy_labels(), 4, shards_per_party=0), "shards_per_party must be"),
    ],
)
def test_partition_errors_name_the_parameter(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


def test_partitions_names() -> None:
    assert PARTITIONS == (
        "iid",
        "dirichlet",
        "classes",
        "shards",
        "group",
        "quantity",
        "class_window",
    )


def test_partition_params_are_the_partitioners_own_keywords() -> None:
    assert {scheme: partition_params(scheme) for scheme in PARTITIONS} == {
        "iid": (),
        "dirichlet": ("alpha", "min_size"),
        "classes": ("classes_per_party",),
        "shards": ("shards_per_party",),
        "group": ("groups",),
        "quantity": ("alpha", "min_size"),
        "class_window": ("classes_per_party", "shift", "imbalance"),
    }
    with pytest.raises(ValueError, match="unknown scheme 'zipf'; choose one of: iid, dirichlet"):
        partition_params("zipf")


@pytest.mark.parametrize(("scheme", "params"), SCHEMES, ids=[s for s, _ in SCHEMES])
def test_every_listed_parameter_is_accepted(scheme: str, params: dict) -> None:
    assert set(params) <= set(partition_params(scheme))
    parts = partition_indices(toy_labels(), 8, scheme, **params)
    assert sum(len(p) for p in parts) == 200


# --- federate ----------------------------------------------------------------------------------


def test_federate_sizes_ids_and_local_test() -> None:
    train, test = toy_dataset(200), toy_dataset(50)
    fed = federate(train, test, 10, "iid", seed=0, local_test_fraction=0.2)
    assert isinstance(fed, FederatedDataset)
    assert fed.party_ids == [f"party_{i}" for i in range(10)]
    assert fed.test is test
    assert fed.num_classes == 10
    for party in fed.values():
        assert (len(party.train), len(party.test)) == (16, 4)
    seen = np.concatenate([d.x[:, 0] for p in fed.values() for d in (p.train, p.test)])
    np.testing.assert_array_equal(np.sort(seen), np.arange(200))
    for party in fed.values():  # each example keeps its own label
        for d in (party.train, party.test):
            np.testing.assert_array_equal(d.y, train.y[d.x[:, 0].astype(int)])


def test_federate_fraction_zero_and_invalid() -> None:
    fed = federate(toy_dataset(), None, 4, local_test_fraction=0.0, party_prefix="site")
    assert fed.party_ids == ["site0", "site1", "site2", "site3"]
    assert all(p.test is None and len(p.train) == 50 for p in fed.values())
    for bad in (1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="local_test_fraction must be in \\[0, 1\\)"):
            federate(toy_dataset(), None, 4, local_test_fraction=bad)


def test_federate_passes_scheme_params_and_is_seeded() -> None:
    train = toy_dataset(300)
    a = federate(train, None, 5, "classes", classes_per_party=2, seed=4)
    b = federate(train, None, 5, "classes", classes_per_party=2, seed=4)
    for pid in a:
        assert np.count_nonzero(a.label_stats()[pid]) == 2
        np.testing.assert_array_equal(a[pid].train.x, b[pid].train.x)
        np.testing.assert_array_equal(a[pid].test.x, b[pid].test.x)


def test_federate_by_group_infers_party_count() -> None:
    fed = federate(toy_dataset(), None, None, "group", groups=GROUPS, local_test_fraction=0.0)
    assert len(fed) == 8
    assert [len(p.train) for p in fed.values()] == [25] * 8


def test_federate_by_group_names_parties_by_their_keys() -> None:
    writers = np.array(["f0003", "f0001", "f0003", "f0002", "f0001", "f0003"])
    train = ArrayDataset(np.arange(6, dtype=np.float32)[:, None], np.array([0, 1, 0, 1, 0, 1]))
    fed = federate(train, None, None, "group", groups=writers, local_test_fraction=0.0)
    assert fed.party_ids == ["f0001", "f0002", "f0003"]
    assert sorted(fed["f0003"].train.x[:, 0].tolist()) == [0.0, 2.0, 5.0]
    assert fed["f0002"].train.x[:, 0].tolist() == [3.0]
    numeric = federate(train, None, None, "group", groups=[30, 10, 30, 20, 10, 30])
    assert numeric.party_ids == ["10", "20", "30"]


def test_federate_by_group_merged_groups_keep_numbered_ids() -> None:
    fed = federate(toy_dataset(), None, 4, "group", groups=GROUPS, local_test_fraction=0.0)
    assert fed.party_ids == ["party_0", "party_1", "party_2", "party_3"]
    assert [len(p.train) for p in fed.values()] == [50] * 4


def test_federate_num_classes_from_union_of_labels() -> None:
    train = ArrayDataset(np.zeros((8, 1)), np.array([0, 1, 2, 3, 0, 1, 2, 3]))
    test = ArrayDataset(np.zeros((2, 1)), np.array([6, 1]))
    assert federate(train, test, 2, local_test_fraction=0.0).num_classes == 7


def test_format_label_stats_rows_and_totals() -> None:
    fed = federate(toy_dataset(200), None, 4, "dirichlet", alpha=0.5, seed=0)
    lines = format_label_stats(fed).splitlines()
    assert lines[0].split() == ["party", "train", "test", "|", *map(str, range(10))]
    assert [line.split()[0] for line in lines[1:]] == [*fed.party_ids, "total"]
    rows = {line.split()[0]: line.replace("|", "").split()[1:] for line in lines[1:]}
    for pid, party in fed.items():
        n_train, n_test, *counts = map(int, rows[pid])
        assert (n_train, n_test) == (len(party.train), len(party.test))
        assert sum(counts) == n_train
        assert counts == fed.label_stats()[pid].tolist()
    n_train, n_test, *counts = map(int, rows["total"])
    assert n_train + n_test == 200
    assert sum(counts) == n_train


# --- size caps (SizeLimits) -------------------------------------------------------------------


def test_idx_gzip_bomb_stops_at_max_bytes(tmp_path: Path) -> None:
    path = tmp_path / "bomb.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.zeros(1 << 20, dtype=np.uint8))))
    with pytest.raises(SizeLimitError, match=r"bomb\.gz: gzip data inflates to 65,537 bytes; the "):
        load_idx(path, limits=SizeLimits(max_bytes=1 << 16))
    assert load_idx(path).shape == (1 << 20,)


def test_party_npz_past_max_bytes_is_refused_before_reading() -> None:
    raw = npz_bytes(**party_arrays(n_train=100))
    with pytest.raises(SizeLimitError, match=r"<bytes>: \.npz file inflates to .* limit is 4,096"):
        load_party_npz(raw, limits=SizeLimits(max_bytes=4096))
    assert len(load_party_npz(raw).train) == 100


def test_party_npz_file_object_is_read_at_most_max_bytes() -> None:
    class Upload(io.BytesIO):
        name = "upload.npz"
        largest_read = 0

        def read(self, size: int | None = -1) -> bytes:
            Upload.largest_read = max(Upload.largest_read, size if size and size > 0 else 1 << 62)
            return super().read(size)

    with pytest.raises(SizeLimitError, match=r"upload\.npz: \.npz file inflates to 1,001 bytes"):
        load_party_npz(Upload(bytes(10_000)), limits=SizeLimits(max_bytes=1000))
    assert Upload.largest_read == 1001


def test_party_npz_compressed_members_keep_loading() -> None:
    buffer = io.BytesIO()
    arrays = party_arrays(n_train=50)
    np.savez_compressed(buffer, **arrays)
    assert_party_equals(load_party_npz(buffer.getvalue()), arrays)
