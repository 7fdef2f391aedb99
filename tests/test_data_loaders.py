"""Tests for the loaders of files users already have: CIFAR-10, TFF's EMNIST, LEAF json, CSV.

Every file is written by the test itself, in the exact format its publisher uses (CIFAR's binary
records and pickled python batches, TFF's HDF5 layout, LEAF's json), then damaged on purpose.
"""

from __future__ import annotations

import json
import os
import pickle
import struct
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from fedfuse._extras import MissingExtraError
from fedfuse.data import (
    FEDERATED_DATASETS,
    DatasetFormatError,
    DatasetNotFoundError,
    load_cifar10,
    load_csv,
    load_dataset,
    load_federated_dataset,
    load_federated_emnist,
    load_leaf,
)
from fedfuse.weights import SizeLimitError, SizeLimits

# --- CIFAR-10 ----------------------------------------------------------------------------------

TRAIN_SIZES = (2, 3, 1, 2, 2)  # images per data_batch_1 .. data_batch_5
TEST_SIZE = 3


def cifar_arrays(seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Batch name -> (pixels (N, 3, 32, 32) uint8, labels (N,)), one marked pixel per batch."""
    rng = np.random.default_rng(seed)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    arrays = {}
    for name, n in zip(names, (*TRAIN_SIZES, TEST_SIZE), strict=True):
        pixels = rng.integers(0, 200, (n, 3, 32, 32), dtype=np.uint8)
        pixels[0, 1, 2, 3] = 255  # green channel, row 2, column 3 of the first image
        arrays[name] = (pixels, rng.integers(0, 10, n))
    return arrays


def write_cifar_bin(folder: Path, arrays: dict) -> Path:
    """Records of 1 label byte + 3072 pixel bytes (red plane, green plane, blue plane)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, (pixels, labels) in arrays.items():
        records = b"".join(
            bytes([int(label)]) + image.tobytes()
            for image, label in zip(pixels, labels, strict=True)
        )
        (folder / f"{name}.bin").write_bytes(records)
    return folder


def write_cifar_py(
    folder: Path, arrays: dict, *, protocol: int = 2, str_keys: bool = False
) -> Path:
    """Pickled dicts as the python version holds them: data (N, 3072) uint8, labels a list."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, (pixels, labels) in arrays.items():
        batch = {
            b"batch_label": name.encode(),
            b"labels": [int(v) for v in labels],
            b"data": pixels.reshape(len(pixels), -1),
            b"filenames": [f"img_{i}.png".encode() for i in range(len(pixels))],
        }
        if str_keys:
            batch = {key.decode(): value for key, value in batch.items()}
        with (folder / name).open("wb") as fh:
            pickle.dump(batch, fh, protocol=protocol)
    (folder / "batches.meta").write_bytes(b"not read")
    return folder


def assert_cifar_equals(train, test, arrays: dict) -> None:
    names = [f"data_batch_{i}" for i in range(1, 6)]
    expected_x = np.concatenate([arrays[n][0] for n in names]).astype(np.float32) / 255.0
    expected_y = np.concatenate([arrays[n][1] for n in names])
    assert train.x.shape == (sum(TRAIN_SIZES), 3, 32, 32) and train.x.dtype == np.float32
    assert train.y.dtype == np.int64 and test.x.shape == (TEST_SIZE, 3, 32, 32)
    np.testing.assert_allclose(train.x, expected_x, rtol=1e-6)
    np.testing.assert_array_equal(train.y, expected_y)
    np.testing.assert_allclose(test.x, arrays["test_batch"][0] / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(test.y, arrays["test_batch"][1])
    assert train.x[0, 1, 2, 3] == 1.0 and train.x.min() >= 0.0 and train.x.max() <= 1.0


def test_cifar_binary_record_layout_by_hand(tmp_path: Path) -> None:
    arrays = cifar_arrays()
    folder = write_cifar_bin(tmp_path / "cifar-10-batches-bin", arrays)
    raw = (folder / "data_batch_1.bin").read_bytes()
    assert len(raw) == 2 * 3073 and raw[0] == arrays["data_batch_1"][1][0]
    assert raw[1 + 1024 * 1 + 32 * 2 + 3] == 255  # the marked green pixel, counted by hand
    train, _ = load_cifar10(folder)
    assert train.x[0, 1, 2, 3] == 1.0
    assert train.x[0, 0, 0, 0] == np.float32(raw[1] / 255.0)
    assert train.x[0, 2, 31, 31] == np.float32(raw[3072] / 255.0)


@pytest.mark.parametrize("where", ["folder", "parent"])
def test_cifar_binary_folder_or_its_parent(tmp_path: Path, where: str) -> None:
    arrays = cifar_arrays()
    folder = write_cifar_bin(tmp_path / "cifar-10-batches-bin", arrays)
    assert_cifar_equals(*load_cifar10(folder if where == "folder" else tmp_path), arrays)


@pytest.mark.parametrize("protocol", [2, 4, 5])
@pytest.mark.parametrize("str_keys", [False, True])
def test_cifar_python_batches(tmp_path: Path, protocol: int, str_keys: bool) -> None:
    arrays = cifar_arrays(1)
    write_cifar_py(tmp_path / "cifar-10-batches-py", arrays, protocol=protocol, str_keys=str_keys)
    assert_cifar_equals(*load_cifar10(tmp_path), arrays)  # torchvision's root
    assert_cifar_equals(*load_cifar10(tmp_path / "cifar-10-batches-py"), arrays)


def python2_batch(pixels: np.ndarray, labels: np.ndarray) -> bytes:
    """A batch as Python 2's cPickle wrote the distributed files: str (not unicode) keys and
    data, ``numpy.core.multiarray._reconstruct`` spelled the numpy 1 way, protocol 2 opcodes."""

    def string(value: bytes) -> bytes:  # SHORT_BINSTRING or BINSTRING: a Python 2 str
        if len(value) < 256:
            return b"U" + bytes([len(value)]) + value
        return b"T" + struct.pack("<i", len(value)) + value

    def small_int(value: int) -> bytes:
        return b"K" + bytes([value]) if value < 256 else b"M" + struct.pack("<H", value)

    flat = pixels.reshape(len(pixels), -1)
    dtype = b"cnumpy\ndtype\n" + string(b"u1") + b"\x89\x88\x87R"  # dtype('u1', False, True)
    dtype += b"(K\x03" + string(b"|") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
    array = b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85" + string(b"b")
    array += b"\x87R(K\x01" + small_int(len(flat)) + small_int(flat.shape[1]) + b"\x86"
    array += dtype + b"\x89" + string(flat.tobytes()) + b"tb"
    label_list = b"]q\x00(" + b"".join(small_int(int(v)) for v in labels) + b"e"
    return b"\x80\x02}(" + string(b"data") + array + string(b"labels") + label_list + b"u."


def test_cifar_python2_pickles_as_distributed(tmp_path: Path) -> None:
    arrays = cifar_arrays(2)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name, (pixels, labels) in arrays.items():
        (folder / name).write_bytes(python2_batch(pixels, labels))
    assert_cifar_equals(*load_cifar10(tmp_path), arrays)


def test_cifar_through_load_dataset(tmp_path: Path) -> None:
    arrays = cifar_arrays()
    write_cifar_py(tmp_path / "cifar-10-batches-py", arrays)
    assert_cifar_equals(*load_dataset("cifar10", data_dir=tmp_path), arrays)
    with pytest.raises(DatasetNotFoundError, match="'cifar10' needs data_dir: a folder holding"):
        load_dataset("cifar10")


def test_cifar_prefers_binary_and_never_unpickles_then(tmp_path: Path) -> None:
    arrays = cifar_arrays()
    write_cifar_bin(tmp_path / "cifar-10-batches-bin", arrays)
    python = write_cifar_py(tmp_path / "cifar-10-batches-py", cifar_arrays(5))
    (python / "data_batch_1").write_bytes(b"\x80\x04c__builtin__\neval\n.")
    assert_cifar_equals(*load_cifar10(tmp_path), arrays)


class RunsCommand:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def hostile_batch(folder: Path, payload: object, name: str = "data_batch_3") -> Path:
    write_cifar_py(folder, cifar_arrays())
    with (folder / name).open("wb") as fh:
        pickle.dump({b"data": payload, b"labels": [1]}, fh, protocol=4)
    return folder / name


def test_cifar_pickle_naming_os_system_is_refused_by_name(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    path = hostile_batch(tmp_path / "py", RunsCommand(marker))
    refused = f"{os.system.__module__}.system"  # posix.system on Linux
    with pytest.raises(DatasetFormatError, match=f"refusing to unpickle {refused}") as info:
        load_cifar10(tmp_path / "py")
    assert str(path) in str(info.value)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("payload", "refused"),
    [
        (b"cos\nsystem\n(S'touch ran'\ntR.", "os.system"),  # protocol 0 GLOBAL
        (b"(S'touch ran'\nios\nsystem\n.", "os.system"),  # protocol 0 INST
        (b"\x80\x02cbuiltins\neval\nX\x04\x00\x00\x001+1;\x85R.", "builtins.eval"),
        (b"\x80\x02cnumpy\nload\nX\x01\x00\x00\x00x\x85R.", "numpy.load"),
        (b"\x80\x02c_codecs\ndecode\nX\x01\x00\x00\x00x\x85R.", "_codecs.decode"),
    ],
)
def test_cifar_raw_hostile_pickles_are_refused_by_name(
    tmp_path: Path, payload: bytes, refused: str
) -> None:
    folder = write_cifar_py(tmp_path, cifar_arrays())
    (folder / "test_batch").write_bytes(payload)
    with pytest.raises(DatasetFormatError, match=f"refusing to unpickle {refused}:"):
        load_cifar10(folder)
    assert not (Path.cwd() / "ran").exists()


class HugeArray:
    def __init__(self, call: str) -> None:
        self.call = call

    def __reduce__(self):
        if self.call == "ndarray":
            return (np.ndarray, ((1 << 40,),))
        reconstruct = np.zeros(1).__reduce__()[0]  # numpy's own _reconstruct, either spelling
        return (reconstruct, (np.ndarray, (1 << 40,), b"b"))


def test_cifar_pickle_bytes_only_through_latin1(tmp_path: Path) -> None:
    folder = write_cifar_py(tmp_path, cifar_arrays())
    (folder / "test_batch").write_bytes(
        b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00xX\x04\x00\x00\x00zlib\x86R."
    )
    with pytest.raises(DatasetFormatError, match="test_batch: _codecs.encode with encoding 'zlib'"):
        load_cifar10(folder)


def test_cifar_pickle_cannot_allocate_an_array_of_its_choosing(tmp_path: Path) -> None:
    hostile_batch(tmp_path / "a", HugeArray("reconstruct"))
    with pytest.raises(DatasetFormatError, match="_reconstruct of shape \\(1099511627776,\\)"):
        load_cifar10(tmp_path / "a")
    hostile_batch(tmp_path / "b", HugeArray("ndarray"))
    with pytest.raises(DatasetFormatError, match="not a readable CIFAR-10 python batch"):
        load_cifar10(tmp_path / "b")


def test_cifar_missing_says_which_files_go_where(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError) as info:
        load_cifar10(tmp_path / "nowhere")
    message = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    for part in ("cifar-10-batches-bin", "data_batch_1.bin", "test_batch.bin"):
        assert part in message
    assert "cifar-10-batches-py" in message and "data_batch_5, test_batch" in message


def test_cifar_partial_folder_names_the_missing_batches(tmp_path: Path) -> None:
    folder = write_cifar_bin(tmp_path / "cifar-10-batches-bin", cifar_arrays())
    (folder / "test_batch.bin").unlink()
    (folder / "data_batch_4.bin").unlink()
    with pytest.raises(DatasetNotFoundError, match="lacks data_batch_4.bin, test_batch.bin"):
        load_cifar10(tmp_path)


@pytest.mark.parametrize("cut", [1, 3072, 3073 + 1])
def test_cifar_truncated_binary_batch(tmp_path: Path, cut: int) -> None:
    folder = write_cifar_bin(tmp_path, cifar_arrays())
    path = folder / "data_batch_2.bin"
    path.write_bytes(path.read_bytes()[:-cut])
    message = "not a whole number of 3073-byte CIFAR-10 records"
    with pytest.raises(DatasetFormatError, match=message) as info:
        load_cifar10(folder)
    assert str(path) in str(info.value)


def test_cifar_binary_label_out_of_range(tmp_path: Path) -> None:
    arrays = cifar_arrays()
    arrays["test_batch"][1][2] = 10
    write_cifar_bin(tmp_path, arrays)
    with pytest.raises(DatasetFormatError, match="label 10 is not a CIFAR-10 class \\(0..9\\)"):
        load_cifar10(tmp_path)


def test_cifar_truncated_pickle(tmp_path: Path) -> None:
    folder = write_cifar_py(tmp_path, cifar_arrays())
    path = folder / "data_batch_1"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DatasetFormatError, match="not a readable CIFAR-10 python batch"):
        load_cifar10(folder)


@pytest.mark.parametrize(
    ("batch", "message"),
    [
        ([1, 2], "a CIFAR-10 batch is a dict, got list"),
        ({b"labels": [0]}, "no 'data' entry in the batch \\(found b'labels'\\)"),
        ({b"data": np.zeros((1, 3072), np.uint8)}, "no 'labels' entry"),
        ({b"data": np.zeros((1, 1000), np.uint8), b"labels": [0]}, "shape \\(N, 3072\\)"),
        ({b"data": np.zeros((1, 3072), np.float32), b"labels": [0]}, "uint8 array, got float32"),
        ({b"data": b"\x00" * 3072, b"labels": [0]}, "uint8 array, got bytes"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, "2 images but 1 labels"),
        ({b"data": np.zeros((1, 3072), np.uint8), b"labels": ["cat"]}, "list of int"),
        ({b"data": np.zeros((1, 3072), np.uint8), b"labels": [11]}, "label 11 is not"),
    ],
)
def test_cifar_python_batch_wrong_contents(tmp_path: Path, batch: object, message: str) -> None:
    folder = write_cifar_py(tmp_path, cifar_arrays())
    with (folder / "data_batch_5").open("wb") as fh:
        pickle.dump(batch, fh)
    with pytest.raises(DatasetFormatError, match=message):
        load_cifar10(folder)


def test_cifar_size_caps(tmp_path: Path) -> None:
    folder = write_cifar_bin(tmp_path, cifar_arrays())
    with pytest.raises(SizeLimitError, match="data_batch_2.bin: CIFAR-10 binary batch inflates"):
        load_cifar10(folder, limits=SizeLimits(max_bytes=2 * 3073))
    with pytest.raises(SizeLimitError, match="CIFAR-10 as float32 inflates to 122,880 bytes"):
        load_cifar10(folder, limits=SizeLimits(max_bytes=4 * 3073))


# --- TFF federated EMNIST (HDF5) ---------------------------------------------------------------


def writer_arrays(n: int, seed: int, num_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    pixels = rng.random((n, 28, 28), dtype=np.float32)
    return pixels, rng.integers(0, num_classes, n).astype(np.int32)


def write_tff(path: Path, writers: dict[str, tuple[np.ndarray, np.ndarray]]) -> Path:
    """TFF's layout: examples/<writer id>/pixels (N, 28, 28) float32 and .../label (N,) int32."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        examples = f.create_group("examples")
        for writer, (pixels, labels) in writers.items():
            group = examples.create_group(writer)
            group.create_dataset("pixels", data=pixels)
            group.create_dataset("label", data=labels)
    return path


TRAIN_WRITERS = {"f0000_14": 5, "f0001_41": 3, "f0002_07": 4}


def write_digits(folder: Path, *, test: bool = True) -> dict[str, dict]:
    arrays = {
        "train": {w: writer_arrays(n, i) for i, (w, n) in enumerate(TRAIN_WRITERS.items())},
        "test": {w: writer_arrays(2, 10 + i) for i, w in enumerate(["f0000_14", "f0002_07"])},
    }
    write_tff(folder / "fed_emnist_digitsonly_train.h5", arrays["train"])
    if test:
        write_tff(folder / "fed_emnist_digitsonly_test.h5", arrays["test"])
    return arrays


def test_emnist_one_party_per_writer_with_its_id(tmp_path: Path) -> None:
    arrays = write_digits(tmp_path)
    fed = load_federated_emnist(tmp_path)
    assert fed.party_ids == list(TRAIN_WRITERS)
    assert fed.num_classes == 10 and fed.test is None
    for writer, (pixels, labels) in arrays["train"].items():
        assert fed[writer].train.x.shape == (len(labels), 1, 28, 28)
        assert fed[writer].train.x.dtype == np.float32 and fed[writer].train.y.dtype == np.int64
        np.testing.assert_array_equal(fed[writer].train.x[:, 0], pixels)
        np.testing.assert_array_equal(fed[writer].train.y, labels)
    np.testing.assert_array_equal(fed["f0002_07"].test.x[:, 0], arrays["test"]["f0002_07"][0])
    np.testing.assert_array_equal(fed["f0000_14"].test.y, arrays["test"]["f0000_14"][1])
    assert fed["f0001_41"].test is None  # not in the test file


def test_emnist_max_clients_and_no_test_file(tmp_path: Path) -> None:
    write_digits(tmp_path, test=False)
    fed = load_federated_dataset("emnist", data_dir=tmp_path, max_clients=2)
    with h5py.File(tmp_path / "fed_emnist_digitsonly_train.h5") as f:
        assert fed.party_ids == list(f["examples"])[:2] == ["f0000_14", "f0001_41"]
    assert all(fed[w].test is None for w in fed)
    with pytest.raises(ValueError, match="max_clients must be at least 1"):
        load_federated_emnist(tmp_path, max_clients=0)


def test_emnist_full_variant_has_62_classes(tmp_path: Path) -> None:
    write_tff(tmp_path / "fed_emnist_train.h5", {"w": writer_arrays(3, 0, num_classes=62)})
    fed = load_federated_emnist(tmp_path)
    assert fed.num_classes == 62
    with pytest.raises(DatasetNotFoundError, match="pass only_digits=False"):
        load_federated_emnist(tmp_path, only_digits=True)
    write_digits(tmp_path)
    with pytest.raises(ValueError, match="holds both .* only_digits=True or only_digits=False"):
        load_federated_emnist(tmp_path)
    assert load_federated_emnist(tmp_path, only_digits=True).num_classes == 10
    assert load_federated_emnist(tmp_path, only_digits=False).party_ids == ["w"]


def test_emnist_missing_files_say_where(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match="put fed_emnist_digitsonly_train.h5") as info:
        load_federated_emnist(tmp_path)
    assert str(tmp_path) in str(info.value) and "~/.keras/datasets" in str(info.value)
    with pytest.raises(DatasetNotFoundError, match="is not a folder"):
        load_federated_emnist(tmp_path / "absent")
    with pytest.raises(DatasetNotFoundError, match="'emnist' needs data_dir"):
        load_federated_dataset("emnist")


def test_emnist_without_h5py_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_digits(tmp_path)
    monkeypatch.setitem(sys.modules, "h5py", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'fedfuse\[emnist\]'"):
        load_federated_emnist(tmp_path)


def emnist_file(tmp_path: Path) -> Path:
    return tmp_path / "fed_emnist_digitsonly_train.h5"


@pytest.mark.parametrize(
    ("pixels", "labels", "message"),
    [
        (
            np.zeros((2, 28, 27), np.float32),
            np.zeros(2, np.int32),
            "pixels must be float \\(N, 28, 28\\)",
        ),
        (np.zeros((2, 784), np.float32), np.zeros(2, np.int32), "pixels must be float"),
        (np.zeros((2, 28, 28), np.uint8), np.zeros(2, np.int32), "pixels must be float"),
        (np.zeros((2, 28, 28), np.float32), np.zeros(2, np.float32), "label must be int"),
        (
            np.zeros((2, 28, 28), np.float32),
            np.zeros((2, 1), np.int32),
            "label must be int \\(N,\\)",
        ),
        (np.zeros((2, 28, 28), np.float32), np.zeros(3, np.int32), "2 images but 3 labels"),
        (
            np.full((1, 28, 28), 255.0, np.float32),
            np.zeros(1, np.int32),
            "pixels must be finite and in \\[0, 1\\]",
        ),
        (
            np.full((1, 28, 28), np.nan, np.float32),
            np.zeros(1, np.int32),
            "pixels must be finite and in \\[0, 1\\]",
        ),
        (np.zeros((1, 28, 28), np.float32), np.array([10], np.int32), "label 10 is not in 0..9"),
        (np.zeros((1, 28, 28), np.float32), np.array([-1], np.int32), "label -1 is not in 0..9"),
    ],
)
def test_emnist_wrong_shapes_and_values(
    tmp_path: Path, pixels: np.ndarray, labels: np.ndarray, message: str
) -> None:
    write_tff(emnist_file(tmp_path), {"good": writer_arrays(2, 0), "bad": (pixels, labels)})
    with pytest.raises(DatasetFormatError, match=f"writer 'bad': {message}"):
        load_federated_emnist(tmp_path)


def test_emnist_not_hdf5_or_truncated(tmp_path: Path) -> None:
    path = emnist_file(tmp_path)
    path.write_text("not hdf5")
    with pytest.raises(DatasetFormatError, match="not a readable HDF5 file"):
        load_federated_emnist(tmp_path)
    write_tff(path, {w: writer_arrays(50, 0) for w in ("a", "b")})
    path.write_bytes(path.read_bytes()[:-5000])
    with pytest.raises(DatasetFormatError, match="not a readable HDF5 file"):
        load_federated_emnist(tmp_path)


def test_emnist_refuses_links_and_data_outside_the_file(tmp_path: Path) -> None:
    secret = tmp_path / "other.h5"
    write_tff(secret, {"w": writer_arrays(1, 0)})
    path = emnist_file(tmp_path)
    write_tff(path, {"good": writer_arrays(1, 0)})
    with h5py.File(path, "a") as f:
        f["examples/elsewhere"] = h5py.ExternalLink(str(secret), "/examples/w")
    with pytest.raises(DatasetFormatError, match="examples/elsewhere is a ExternalLink"):
        load_federated_emnist(tmp_path)
    write_tff(path, {"good": writer_arrays(1, 0)})
    with h5py.File(path, "a") as f:
        f["examples/alias"] = h5py.SoftLink("/examples/good")
    with pytest.raises(DatasetFormatError, match="examples/alias is a SoftLink"):
        load_federated_emnist(tmp_path)
    raw = tmp_path / "raw.bin"
    raw.write_bytes(bytes(28 * 28 * 4))
    with h5py.File(path, "w") as f:
        group = f.create_group("examples/w")
        group.create_dataset("pixels", (1, 28, 28), "f4", external=[(str(raw), 0, 28 * 28 * 4)])
        group.create_dataset("label", data=np.zeros(1, np.int32))
    with pytest.raises(DatasetFormatError, match="pixels keeps its data outside this file"):
        load_federated_emnist(tmp_path)


def test_emnist_wrong_layout(tmp_path: Path) -> None:
    path = emnist_file(tmp_path)
    with h5py.File(path, "w") as f:
        f.create_dataset("pixels", data=np.zeros((1, 28, 28), np.float32))
    with pytest.raises(DatasetFormatError, match="/examples is missing"):
        load_federated_emnist(tmp_path)
    with h5py.File(path, "w") as f:
        f.create_group("examples/w").create_dataset("pixels", data=np.zeros((1, 28, 28), "f4"))
    with pytest.raises(DatasetFormatError, match="/examples/w/label is missing"):
        load_federated_emnist(tmp_path)
    with h5py.File(path, "w") as f:
        f.create_dataset("examples/w", data=np.zeros(3))
    with pytest.raises(DatasetFormatError, match="/examples/w is a Dataset, not a Group"):
        load_federated_emnist(tmp_path)


def test_emnist_size_cap_checked_before_reading(tmp_path: Path) -> None:
    write_digits(tmp_path)
    with pytest.raises(SizeLimitError, match="3 writers as float32 inflates to 37,728 bytes"):
        load_federated_emnist(tmp_path, limits=SizeLimits(max_bytes=30_000))
    assert len(load_federated_emnist(tmp_path, max_clients=1, limits=SizeLimits(30_000))) == 1


# --- LEAF json ---------------------------------------------------------------------------------


def leaf_user(n: int, seed: int, width: int = 784) -> dict[str, list]:
    rng = np.random.default_rng(seed)
    return {"x": rng.random((n, width)).round(4).tolist(), "y": rng.integers(0, 62, n).tolist()}


def write_leaf(path: Path, users: dict[str, dict], **extra: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "users": list(users),
        "num_samples": [len(u["y"]) for u in users.values()],
        "user_data": users,
        **extra,
    }
    path.write_text(json.dumps(document))
    return path


def write_femnist(root: Path) -> dict[str, dict[str, dict]]:
    """Two train files (natural order: _2 before _10), their users' test examples in test/."""
    train = {
        "all_data_10": {"f0100_33": leaf_user(2, 3)},
        "all_data_2": {"f0003_01": leaf_user(3, 1), "f0000_12": leaf_user(4, 2)},
    }
    test = {"all_data_2": {"f0000_12": leaf_user(1, 7), "f0100_33": leaf_user(2, 8)}}
    for split, files in (("train", train), ("test", test)):
        for name, users in files.items():
            write_leaf(root / split / f"{name}_niid_0_keep_0_{split}_9.json", users)
    return {"train": train["all_data_2"] | train["all_data_10"], "test": test["all_data_2"]}


def test_femnist_parties_keep_leaf_user_ids(tmp_path: Path) -> None:
    users = write_femnist(tmp_path)
    fed = load_federated_dataset("femnist", data_dir=tmp_path)
    assert fed.party_ids == ["f0003_01", "f0000_12", "f0100_33"]
    assert fed.num_classes == 62 and fed.test is None
    for user, data in users["train"].items():
        assert fed[user].train.x.shape == (len(data["y"]), 1, 28, 28)
        np.testing.assert_allclose(fed[user].train.x.reshape(len(data["y"]), -1), data["x"])
        np.testing.assert_array_equal(fed[user].train.y, data["y"])
    np.testing.assert_array_equal(fed["f0100_33"].test.y, users["test"]["f0100_33"]["y"])
    assert fed["f0003_01"].test is None
    assert FEDERATED_DATASETS == ("emnist", "femnist")


def test_leaf_flat_rows_max_clients_and_single_file(tmp_path: Path) -> None:
    write_femnist(tmp_path)
    fed = load_leaf(tmp_path, max_clients=2)
    assert fed.party_ids == ["f0003_01", "f0000_12"]
    assert fed["f0000_12"].train.x.shape == (4, 784) and fed["f0000_12"].test.x.shape == (1, 784)
    labels = [d.y for u in fed for d in (fed[u].train, fed[u].test) if d is not None]
    assert fed.num_classes == 1 + max(int(y.max()) for y in labels)
    one = write_leaf(tmp_path / "one.json", {"u1": leaf_user(2, 0, width=5)})
    assert load_leaf(one).party_ids == ["u1"] and load_leaf(one)["u1"].test is None
    assert load_leaf(tmp_path / "train").party_ids == ["f0003_01", "f0000_12", "f0100_33"]


def test_leaf_users_only_in_test_are_the_central_test_set(tmp_path: Path) -> None:
    write_leaf(tmp_path / "train" / "a.json", {"u1": leaf_user(3, 0, 4), "u2": leaf_user(2, 1, 4)})
    held_out = {"u3": leaf_user(2, 2, 4), "u4": leaf_user(1, 3, 4)}
    write_leaf(tmp_path / "test" / "a.json", held_out)
    fed = load_leaf(tmp_path)
    assert fed.party_ids == ["u1", "u2"] and all(fed[u].test is None for u in fed)
    np.testing.assert_array_equal(fed.test.y, held_out["u3"]["y"] + held_out["u4"]["y"])
    assert fed.test.x.shape == (3, 4)
    assert load_leaf(tmp_path, max_clients=1).test is None


def leaf_file(tmp_path: Path, document: object) -> Path:
    path = tmp_path / "train" / "bad.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(document if isinstance(document, str) else json.dumps(document))
    return path


def good(**user: object) -> dict:
    return {"users": ["u"], "user_data": {"u": {"x": [[0.5, 0.25]], "y": [1], **user}}}


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (
            '{"users": ["u"], "user_data": {"u": {"x": [[1.0, 2.0]], "y": [1]}',
            "not valid LEAF json",
        ),
        ('{"users": ["u"], "user_data": {"u": {"x": [[NaN, 2.0]], "y": [1]}}}', "NaN"),
        ('{"users": ["u"], "user_data": {"u": {"x": [[Infinity]], "y": [1]}}}', "Infinity"),
        ([1, 2], "expected a json object, got list"),
        ({"users": [1], "user_data": {}}, "'users' must be a list of user ids"),
        ({"users": ["u"], "user_data": []}, "'user_data' must be an object"),
        ({"users": ["u"], "user_data": {}}, "user 'u': user_data has no"),
        (good(x=[[1.0, 2.0], [3.0]], y=[0, 1]), "user 'u': x row 1 has 1 values, row 0 has 2"),
        (good(x=[[1.0, "a"]]), "user 'u': x row 0 is not a list of numbers"),
        (good(x=[[[1.0], [2.0]]]), "x row 0 is not a list of numbers"),
        (good(x="pixels"), "'x' must be a list of rows"),
        (good(y=[1, 2]), "user 'u': 1 rows of x but 2 labels in y"),
        (good(y=[1.5]), "'y' must be a list of integer labels"),
        (good(y=[-3]), "label -3 is negative"),
        (good() | {"num_samples": [4]}, "num_samples says 4, user_data has 1"),
        (good() | {"num_samples": [1, 2]}, "'num_samples' must be a list with one count per user"),
        (good() | {"users": ["u", "u"], "num_samples": [1, 1]}, "listed twice"),
    ],
)
def test_leaf_bad_documents(tmp_path: Path, document: object, message: str) -> None:
    path = leaf_file(tmp_path, document)
    with pytest.raises(DatasetFormatError, match=message) as info:
        load_leaf(tmp_path)
    assert str(path) in str(info.value)


def test_leaf_users_must_agree_across_files(tmp_path: Path) -> None:
    write_leaf(tmp_path / "train" / "1.json", {"u1": leaf_user(2, 0, 4)})
    write_leaf(tmp_path / "train" / "2.json", {"u2": leaf_user(2, 0, 3)})
    with pytest.raises(DatasetFormatError, match="train user 'u2': rows of \\(3,\\) values"):
        load_leaf(tmp_path)
    write_leaf(tmp_path / "train" / "2.json", {"u1": leaf_user(2, 0, 4)})
    with pytest.raises(DatasetFormatError, match="user 'u1' is also in .*1.json"):
        load_leaf(tmp_path)


def test_leaf_shape_and_classes_are_checked(tmp_path: Path) -> None:
    write_leaf(tmp_path / "train" / "1.json", {"u1": leaf_user(2, 0, 6)})
    with pytest.raises(
        DatasetFormatError, match="rows of 6 values cannot be shaped \\(1, 28, 28\\)"
    ):
        load_federated_dataset("femnist", data_dir=tmp_path)
    user = leaf_user(1, 0) | {"y": [62]}
    write_leaf(tmp_path / "train" / "1.json", {"u1": user})
    with pytest.raises(DatasetFormatError, match="label 62 is past the 62 classes"):
        load_federated_dataset("femnist", data_dir=tmp_path)


def test_leaf_missing_and_size_cap(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match="put the train files in .*train") as info:
        load_leaf(tmp_path)
    assert "preprocess.sh" in str(info.value)
    path = write_leaf(tmp_path / "train" / "1.json", {"u1": leaf_user(20, 0)})
    with pytest.raises(SizeLimitError, match="1.json: LEAF json file inflates to"):
        load_leaf(tmp_path, limits=SizeLimits(max_bytes=path.stat().st_size - 1))
    with pytest.raises(ValueError, match="unknown federated dataset 'leaf'; choose one of"):
        load_federated_dataset("leaf", data_dir=tmp_path)


# --- CSV ---------------------------------------------------------------------------------------


def write_csv(tmp_path: Path, text: str, name: str = "site.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_csv_features_in_file_order_and_labels(tmp_path: Path) -> None:
    path = write_csv(tmp_path, "age, label ,bmi\n41,1,22.5\n35,0,30\n\n29,2.0,-1e-3\n")
    data = load_csv(path)
    assert data.x.dtype == np.float32 and data.y.dtype == np.int64
    np.testing.assert_allclose(data.x, [[41, 22.5], [35, 30], [29, -1e-3]], rtol=1e-6)
    np.testing.assert_array_equal(data.y, [1, 0, 2])


def test_csv_label_name_delimiter_and_bom(tmp_path: Path) -> None:
    path = tmp_path / "excel.csv"
    path.write_bytes("\ufeffdiagnosis;x\n3;0.5\n".encode())
    data = load_csv(path, label="diagnosis", delimiter=";")
    np.testing.assert_array_equal(data.y, [3])
    np.testing.assert_allclose(data.x, [[0.5]])


def test_csv_header_only_is_an_empty_dataset(tmp_path: Path) -> None:
    data = load_csv(write_csv(tmp_path, "a,b,label\n"))
    assert data.x.shape == (0, 2) and len(data) == 0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a,label\n1,0\n2,\n", "row 2 \\(line 3\\), column 'label': an empty value is not"),
        ("a,label\n1,0\n,1\n", "row 2 \\(line 3\\), column 'a': an empty value"),
        ("a,b,label\n1,x,0\n", "row 1 \\(line 2\\), column 'b': 'x' is not a finite number"),
        ("a,label\nnan,0\n", "column 'a': 'nan' is not a finite number"),
        ("a,label\n-inf,0\n", "column 'a': '-inf' is not a finite number"),
        ("a,label\n1e39,0\n", "row 1, column 'a': 1e\\+39 does not fit float32"),
        ("a,label\n1,cat\n", "column 'label': 'cat' is not a finite number"),
        ("a,label\n1,1.5\n", "column 'label': label '1.5' is not a non-negative integer"),
        ("a,label\n1,-1\n", "label '-1' is not a non-negative integer"),
        ("a,b,label\n1,2,0\n3,4\n", "row 2 \\(line 3\\) has 2 values; the header has 3"),
        ("a,b,label\n1,2,0\n3,4,5,6\n", "row 2 \\(line 3\\) has 4 values"),
        ("a,b\n1,2\n", "no label column 'label'; the columns are a, b"),
        ("a,a,label\n1,2,0\n", "column\\(s\\) a appear twice"),
        ("label\n1\n", "only the label column"),
        ("", "empty file"),
        ('a,label\n"1,0\n', "row 1 \\(line 2\\) has 1 values"),
    ],
)
def test_csv_errors_name_row_and_column(tmp_path: Path, text: str, message: str) -> None:
    path = write_csv(tmp_path, text)
    with pytest.raises(DatasetFormatError, match=message) as info:
        load_csv(path)
    assert str(path) in str(info.value)


def test_csv_not_text_missing_and_size_cap(tmp_path: Path) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes("a,label\n\xe9,0\n".encode("latin-1"))
    with pytest.raises(DatasetFormatError, match="not UTF-8 text"):
        load_csv(path)
    with pytest.raises(DatasetNotFoundError, match="absent.csv: no such file"):
        load_csv(tmp_path / "absent.csv")
    path = write_csv(tmp_path, "a,label\n" + "1,0\n" * 100)
    with pytest.raises(SizeLimitError, match="site.csv: CSV file inflates to 408 bytes"):
        load_csv(path, limits=SizeLimits(max_bytes=100))
    assert len(load_csv(path)) == 100
