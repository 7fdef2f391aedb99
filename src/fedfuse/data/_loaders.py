"""Loaders that turn files on disk (or bundled data) into ``ArrayDataset``s. Offline, no pickle.

Supported sources:

- MNIST-format idx files (MNIST, Fashion-MNIST), plain or gzipped: ``load_idx``, ``load_mnist_idx``.
- Fashion-MNIST as installed by Debian's ``dataset-fashion-mnist`` package: ``fashion_mnist_dir``.
- scikit-learn's bundled sets that need no download: ``load_sklearn``.
- Party ``.npz`` files with ``x_train, y_train, x_test, y_test`` (the Model Fusion API tutorial
  layout): ``load_party_npz``, ``load_federated_npz``.
- CIFAR-10's binary or python batches (``load_cifar10``), a CSV file with a label column
  (``load_csv``), TFF's federated EMNIST HDF5 files (``load_federated_emnist``) and LEAF's json
  files (``load_leaf``), each in its own module.

``load_dataset(name)`` is the one entry point over the centralized sets in ``DATASETS`` (a
``(train, test)`` pair); ``load_federated_dataset(name)`` over the naturally federated ones in
``FEDERATED_DATASETS`` (a ``FederatedDataset``, one party per writer or user).
"""

from __future__ import annotations

import gzip
import io
import math
import os
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np

from fedfuse._natural import natural_key
from fedfuse.data._cifar import load_cifar10
from fedfuse.data._dataset import ArrayDataset, FederatedDataset, PartyData
from fedfuse.data._emnist import load_federated_emnist
from fedfuse.data._files import DatasetFormatError, DatasetNotFoundError
from fedfuse.data._leaf import load_leaf
from fedfuse.weights import SizeLimitError, SizeLimits

__all__ = [
    "DATASETS",
    "DEBIAN_FASHION_MNIST_DIR",
    "DatasetFormatError",
    "DatasetNotFoundError",
    "FEDERATED_DATASETS",
    "fashion_mnist_dir",
    "load_dataset",
    "load_federated_dataset",
    "load_federated_npz",
    "load_idx",
    "load_mnist_idx",
    "load_party_npz",
    "load_sklearn",
]

#: Where Debian's ``dataset-fashion-mnist`` package installs its four gzipped idx files.
DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

#: Environment variable naming a folder of the four Fashion-MNIST idx files; checked first.
FASHION_MNIST_ENV = "FEDFUSE_FASHION_MNIST_DIR"

_GZIP_MAGIC = b"\x1f\x8b"
_ZIP_MAGIC = b"PK\x03\x04"

# idx dtype codes (third byte of the magic number) -> big-endian numpy dtype.
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

_NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
_LIMITS = SizeLimits()  # the default caps (an immutable value)


# --- idx files -------------------------------------------------------------------------------


def _read_maybe_gzipped(path: Path, limits: SizeLimits) -> bytes:
    """The file's bytes, decompressed when it starts with the gzip magic (whatever its name),
    at most ``limits.max_bytes`` of them (a gzip bomb stops there)."""
    raw = path.read_bytes()
    if not raw.startswith(_GZIP_MAGIC):
        return raw
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(raw)) as stream:
            data = stream.read(limits.max_bytes + 1)
    except (EOFError, OSError, zlib.error) as exc:
        raise DatasetFormatError(f"{path}: corrupt or truncated gzip data: {exc}") from exc
    limits.check_bytes(len(data), f"{path}: gzip data")
    return data


def load_idx(path: str | os.PathLike, *, limits: SizeLimits = _LIMITS) -> np.ndarray:
    """Read one MNIST-format idx file into an array with the file's shape and dtype.

    The idx layout is: two zero bytes, a dtype code (0x08 ubyte, 0x09 byte, 0x0B short, 0x0C int,
    0x0D float, 0x0E double), the number of dimensions, then one big-endian uint32 per dimension,
    then the data, big-endian, row-major. Gzipped files are recognised by their magic bytes, so the
    ``.gz`` suffix is optional. The result uses native byte order.

    Raises:
        DatasetFormatError: the file is not idx, or its data length does not match its header.
        SizeLimitError: gzipped data inflating past ``limits.max_bytes``.
    """
    path = Path(path)
    data = _read_maybe_gzipped(path, limits)
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DatasetFormatError(f"{path}: not an idx file (bad magic number)")
    code, ndim = data[2], data[3]
    if code not in _IDX_DTYPES:
        raise DatasetFormatError(f"{path}: unknown idx dtype code 0x{code:02X}")
    header_size = 4 + 4 * ndim
    if len(data) < header_size:
        raise DatasetFormatError(
            f"{path}: truncated idx header: {ndim} dimensions need {header_size} bytes, "
            f"file has {len(data)}"
        )
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = _IDX_DTYPES[code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    found = len(data) - header_size
    if found != expected:
        problem = "truncated" if found < expected else "has trailing bytes"
        raise DatasetFormatError(
            f"{path}: idx data {problem}: header shape {shape} of {dtype.name} needs "
            f"{expected} bytes, file has {found}"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header_size).reshape(shape)
    return array.astype(dtype.newbyteorder("="))


def _find_idx_files(directory: Path) -> dict[str, Path]:
    """The four MNIST idx files in ``directory`` (plain name or ``.gz``), or a clear error."""
    found: dict[str, Path] = {}
    missing: list[str] = []
    for key, stem in _MNIST_FILES.items():
        candidates = [directory / stem, directory / f"{stem}.gz"]
        existing = [c for c in candidates if c.is_file()]
        if existing:
            found[key] = existing[0]
        else:
            missing.append(f"{stem}[.gz]")
    if missing:
        raise DatasetNotFoundError(
            f"MNIST-format idx files not found in {directory}: missing {', '.join(missing)} "
            f"(looked for {', '.join(f'{s}[.gz]' for s in _MNIST_FILES.values())})"
        )
    return found


def _idx_split(images_path: Path, labels_path: Path) -> ArrayDataset:
    """Images as float32 ``(N, 1, H, W)`` in [0, 1] and labels as int64 ``(N,)``."""
    images, labels = load_idx(images_path), load_idx(labels_path)
    if images.ndim != 3:
        raise DatasetFormatError(
            f"{images_path}: expected images of shape (N, rows, cols), got {images.shape}"
        )
    if labels.ndim != 1:
        raise DatasetFormatError(
            f"{labels_path}: expected labels of shape (N,), got {labels.shape}"
        )
    if len(images) != len(labels):
        raise DatasetFormatError(
            f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} labels"
        )
    x = images[:, None, :, :].astype(np.float32) / np.float32(255.0)
    return ArrayDataset(x, labels.astype(np.int64))


def load_mnist_idx(directory: str | os.PathLike) -> tuple[ArrayDataset, ArrayDataset]:
    """Load ``(train, test)`` from a folder of the four MNIST-format idx files.

    The folder must hold ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
    ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte``, each optionally gzipped with a
    ``.gz`` suffix (MNIST and Fashion-MNIST both ship this way). ``x`` is float32
    ``(N, 1, 28, 28)`` scaled to [0, 1]; ``y`` is int64.

    Raises:
        DatasetNotFoundError: a file is missing (the message lists the names looked for).
        DatasetFormatError: a file is not valid idx, or images and labels disagree.
    """
    files = _find_idx_files(Path(directory))
    train = _idx_split(files["train_images"], files["train_labels"])
    test = _idx_split(files["test_images"], files["test_labels"])
    return train, test


def _has_idx_files(directory: Path) -> bool:
    try:
        _find_idx_files(directory)
    except DatasetNotFoundError:
        return False
    return True


def fashion_mnist_dir() -> Path:
    """The folder holding Fashion-MNIST's idx files on this machine.

    Looks at ``$FEDFUSE_FASHION_MNIST_DIR`` first, then at ``DEBIAN_FASHION_MNIST_DIR``
    (``/usr/share/datasets/fashion-mnist``, installed by ``apt-get install dataset-fashion-mnist``).

    Raises:
        DatasetNotFoundError: neither place holds the four files; the message says how to get them.
    """
    from_env = os.environ.get(FASHION_MNIST_ENV)
    if from_env:
        directory = Path(from_env)
        if not _has_idx_files(directory):
            raise DatasetNotFoundError(
                f"{FASHION_MNIST_ENV}={from_env} does not hold the four Fashion-MNIST idx files "
                f"({', '.join(f'{s}[.gz]' for s in _MNIST_FILES.values())})"
            )
        return directory
    if _has_idx_files(DEBIAN_FASHION_MNIST_DIR):
        return DEBIAN_FASHION_MNIST_DIR
    raise DatasetNotFoundError(
        f"Fashion-MNIST not found in {DEBIAN_FASHION_MNIST_DIR}. Install it with "
        f"`sudo apt-get install dataset-fashion-mnist`, or set {FASHION_MNIST_ENV} to a folder "
        f"holding the four idx files ({', '.join(f'{s}[.gz]' for s in _MNIST_FILES.values())})."
    )


# --- scikit-learn's bundled sets --------------------------------------------------------------


_SKLEARN_NAMES = ("breast_cancer", "digits", "iris", "wine")


def load_sklearn(
    name: str, *, seed: int = 0, test_size: float = 0.25
) -> tuple[ArrayDataset, ArrayDataset]:
    """One of scikit-learn's bundled sets (no download) as a seeded, stratified ``(train, test)``.

    ``digits``: x float32 ``(N, 64)`` with pixel values 0..16 scaled to [0, 1]. ``breast_cancer``,
    ``iris``, ``wine``: x float32 standardized with the *training* split's mean and std (so no test
    information leaks into training). y is int64 everywhere.
    """
    if name not in _SKLEARN_NAMES:
        raise ValueError(
            f"unknown scikit-learn dataset {name!r}; choose one of: {', '.join(_SKLEARN_NAMES)}"
        )
    # Imported here: scikit-learn takes about a second to import and most users never need it.
    from sklearn import datasets
    from sklearn.model_selection import train_test_split

    bunch = getattr(datasets, f"load_{name}")()
    x, y = np.asarray(bunch.data, dtype=np.float64), np.asarray(bunch.target, dtype=np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=test_size, random_state=seed, stratify=y
    )
    if name == "digits":
        x_train, x_test = x_train / 16.0, x_test / 16.0
    else:
        mean, std = x_train.mean(axis=0), x_train.std(axis=0)
        std[std == 0] = 1.0
        x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    return (
        ArrayDataset(x_train.astype(np.float32), y_train),
        ArrayDataset(x_test.astype(np.float32), y_test),
    )


# --- the registry -----------------------------------------------------------------------------

#: Names accepted by ``load_dataset``.
DATASETS = ("breast_cancer", "cifar10", "digits", "fashion_mnist", "iris", "mnist", "wine")


def _needs_data_dir(name: str, what: str) -> DatasetNotFoundError:
    return DatasetNotFoundError(f"dataset {name!r} needs data_dir: {what}")


def load_dataset(
    name: str, *, data_dir: str | os.PathLike | None = None, seed: int = 0
) -> tuple[ArrayDataset, ArrayDataset]:
    """Load a named dataset as ``(train, test)``. Nothing is ever downloaded.

    - ``digits``, ``breast_cancer``, ``iris``, ``wine``: bundled with scikit-learn; split with
      ``seed`` (see ``load_sklearn``).
    - ``fashion_mnist``: idx files from ``data_dir``, else from ``fashion_mnist_dir()``.
    - ``mnist``: idx files from ``data_dir``, which is required.
    - ``cifar10``: the binary or python batches from ``data_dir``, which is required: the
      ``cifar-10-batches-bin`` or ``cifar-10-batches-py`` folder, or one holding it (see
      ``load_cifar10``).

    The file-based sets come with their own fixed train/test split, so ``seed`` does not affect
    them.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    if name in _SKLEARN_NAMES:
        return load_sklearn(name, seed=seed)
    if name == "fashion_mnist":
        return load_mnist_idx(data_dir if data_dir is not None else fashion_mnist_dir())
    if name == "cifar10":
        if data_dir is None:
            raise _needs_data_dir(
                name, "a folder holding cifar-10-batches-bin/ or cifar-10-batches-py/"
            )
        return load_cifar10(data_dir)
    if data_dir is None:
        raise _needs_data_dir(
            name,
            "a folder holding the four MNIST idx files "
            f"({', '.join(f'{s}[.gz]' for s in _MNIST_FILES.values())})",
        )
    return load_mnist_idx(data_dir)


#: Names accepted by ``load_federated_dataset``.
FEDERATED_DATASETS = ("emnist", "femnist")

_FEMNIST_CLASSES = 62


def load_federated_dataset(
    name: str, *, data_dir: str | os.PathLike | None = None, max_clients: int | None = None
) -> FederatedDataset:
    """Load a naturally federated dataset, one party per writer or user, with their own ids.

    - ``emnist``: TensorFlow Federated's HDF5 files (``fed_emnist[_digitsonly]_{train,test}.h5``)
      in ``data_dir`` (see ``load_federated_emnist``; needs ``pip install 'fedfuse[emnist]'``).
    - ``femnist``: LEAF's FEMNIST json files, ``data_dir/train/*.json`` and
      ``data_dir/test/*.json`` (see ``load_leaf``), as ``(N, 1, 28, 28)`` images of 62 classes.

    ``max_clients`` keeps only the first writers or users. Nothing is ever downloaded.
    """
    if name not in FEDERATED_DATASETS:
        raise ValueError(
            f"unknown federated dataset {name!r}; choose one of: {', '.join(FEDERATED_DATASETS)}"
        )
    if data_dir is None:
        where = {
            "emnist": "a folder holding fed_emnist_train.h5 or fed_emnist_digitsonly_train.h5",
            "femnist": "a folder holding LEAF's train/ and test/ folders of .json files",
        }
        raise _needs_data_dir(name, where[name])
    if name == "emnist":
        return load_federated_emnist(data_dir, max_clients=max_clients)
    return load_leaf(
        data_dir, shape=(1, 28, 28), num_classes=_FEMNIST_CLASSES, max_clients=max_clients
    )


# --- party .npz files -------------------------------------------------------------------------

NpzSource = str | os.PathLike | bytes | BinaryIO


def _open_npz_source(source: NpzSource, limits: SizeLimits) -> tuple[str, BinaryIO | Path]:
    """A display name and something ``zipfile`` can read; uploads are read into memory, at
    most ``limits.max_bytes`` of them."""
    if isinstance(source, bytes | bytearray | memoryview):
        return "<bytes>", io.BytesIO(bytes(source))
    if isinstance(source, str | os.PathLike):
        return os.fspath(source), Path(source)
    name = str(getattr(source, "name", "<file object>"))
    data = source.read(limits.max_bytes + 1)
    limits.check_bytes(len(data), f"{name}: .npz file")
    return name, io.BytesIO(data)


def _read_head(target: BinaryIO | Path, size: int) -> bytes:
    if isinstance(target, Path):
        with target.open("rb") as fh:
            return fh.read(size)
    head = target.read(size)
    target.seek(0)
    return head


_NPY_HEADER_READERS = {
    (1, 0): np.lib.format.read_array_header_1_0,
    (2, 0): np.lib.format.read_array_header_2_0,
}


def _check_npy_header(
    archive: zipfile.ZipFile, member: zipfile.ZipInfo, key: str, name: str, limits: SizeLimits
) -> None:
    """Refuse a member whose ``.npy`` header declares object arrays, more bytes than
    ``limits.max_bytes``, or more bytes than the member holds, before numpy allocates them."""
    with archive.open(member) as fh:
        version = np.lib.format.read_magic(fh)
        if version not in _NPY_HEADER_READERS:
            raise DatasetFormatError(f"{name}: array {key!r} has .npy format {version}")
        shape, _, dtype = _NPY_HEADER_READERS[version](fh)
        header_size = fh.tell()
    if dtype.hasobject:
        raise DatasetFormatError(
            f"{name}: array {key!r} holds Python objects (dtype=object); refusing to unpickle. "
            "Save numeric arrays instead."
        )
    declared = math.prod(shape) * dtype.itemsize
    limits.check_bytes(declared, f"{name}: array {key!r} of shape {shape} and dtype {dtype}")
    if declared != member.file_size - header_size:
        raise DatasetFormatError(
            f"{name}: array {key!r} is corrupt or truncated: its header declares {declared:,} "
            f"bytes, the archive holds {member.file_size - header_size:,}"
        )


def _npz_array(archive: zipfile.ZipFile, key: str, name: str, limits: SizeLimits) -> np.ndarray:
    """One array from an open archive, its header checked first; format problems become
    ``DatasetFormatError``."""
    member = archive.getinfo(f"{key}.npy")
    try:
        _check_npy_header(archive, member, key, name, limits)
        with archive.open(member) as fh:
            array = np.lib.format.read_array(fh, allow_pickle=False)
    except ValueError as exc:
        if isinstance(exc, DatasetFormatError | SizeLimitError):
            raise
        raise DatasetFormatError(f"{name}: array {key!r} is not a valid .npy array: {exc}") from exc
    except (zipfile.BadZipFile, EOFError, OSError, zlib.error) as exc:
        raise DatasetFormatError(f"{name}: array {key!r} is corrupt or truncated: {exc}") from exc
    if array.ndim == 0:
        raise DatasetFormatError(f"{name}: array {key!r} is a scalar; expected one row per example")
    return array


def _paired(x: np.ndarray, y: np.ndarray, split: str, name: str) -> ArrayDataset:
    if len(x) != len(y):
        raise DatasetFormatError(
            f"{name}: x_{split} has {len(x)} rows but y_{split} has {len(y)}; "
            "they must have one row per example"
        )
    return ArrayDataset(x, y)


def load_party_npz(source: NpzSource, *, limits: SizeLimits = _LIMITS) -> PartyData:
    """Load one party's data from an ``.npz`` with ``x_train, y_train, x_test, y_test``.

    ``source`` is a path, the file's bytes, or a binary file object (an upload). Before any
    array is read, the zip directory's inflated sizes and each array's ``.npy`` header (shape
    and dtype) are checked against ``limits``. Object arrays are refused (nothing is unpickled).
    Extra keys are ignored. Empty ``x_test``/``y_test`` mean the party has no local test split
    (``PartyData.test is None``).

    Raises:
        DatasetFormatError: not a zip archive, truncated, object arrays, missing keys, or x and y
            with different row counts. The message names the file and the problem.
        SizeLimitError: the archive or an array is past ``limits.max_bytes``.
    """
    name, target = _open_npz_source(source, limits)
    if _read_head(target, len(_ZIP_MAGIC)) != _ZIP_MAGIC:
        raise DatasetFormatError(f"{name}: not an .npz file (expected a zip archive)")
    try:
        archive = zipfile.ZipFile(target)
    except (zipfile.BadZipFile, ValueError, EOFError, OSError) as exc:
        raise DatasetFormatError(f"{name}: corrupt or truncated .npz archive: {exc}") from exc
    with archive:
        limits.check_archive(archive, f"{name}: .npz file")
        found = [n.removesuffix(".npy") for n in archive.namelist()]
        missing = [k for k in _NPZ_KEYS if f"{k}.npy" not in archive.namelist()]
        if missing:
            raise DatasetFormatError(
                f"{name}: missing key(s) {', '.join(missing)}; found {', '.join(found)} "
                f"(expected {', '.join(_NPZ_KEYS)})"
            )
        arrays = {k: _npz_array(archive, k, name, limits) for k in _NPZ_KEYS}
    train = _paired(arrays["x_train"], arrays["y_train"], "train", name)
    test = _paired(arrays["x_test"], arrays["y_test"], "test", name)
    return PartyData(train=train, test=test if len(test) else None)


def load_federated_npz(
    paths: Sequence[NpzSource] | str | os.PathLike,
    *,
    party_prefix: str = "party_",
    limits: SizeLimits = _LIMITS,
) -> FederatedDataset:
    """Load party ``.npz`` files into a ``FederatedDataset`` with ids ``party_0``, ``party_1``, ...

    ``paths`` is a list of party files (paths, bytes or file objects), in party order, or a folder,
    whose ``*.npz`` files are taken in natural order (``data_party2`` before ``data_party10``).
    This is the inverse of ``FederatedDataset.save_npz``: ``load_federated_npz(fed.save_npz(d))``.
    The result has no central test set.
    """
    if isinstance(paths, str | os.PathLike):
        folder = Path(paths)
        if not folder.is_dir():
            raise DatasetNotFoundError(f"{folder} is not a folder of party .npz files")
        sources: Sequence[NpzSource] = sorted(
            folder.glob("*.npz"), key=lambda path: natural_key(path.name)
        )
        if not sources:
            raise DatasetNotFoundError(f"no .npz party files in {folder}")
    else:
        sources = paths
    parties = {
        f"{party_prefix}{i}": load_party_npz(src, limits=limits) for i, src in enumerate(sources)
    }
    return FederatedDataset(parties)
