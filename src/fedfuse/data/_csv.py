"""A CSV file with a header row and a label column, as one ``ArrayDataset`` (stdlib csv, no pandas).

Every other column is a numeric feature. A value that is empty, not a number, NaN or infinite is
an error naming its row and column, never a silent NaN: a party's data is checked before it
trains on it.
"""

from __future__ import annotations

import array
import csv
import math
import os
from collections import Counter
from pathlib import Path

import numpy as np

from fedfuse.data._dataset import ArrayDataset
from fedfuse.data._files import DatasetFormatError, checked_size
from fedfuse.weights import SizeLimits

__all__ = ["load_csv"]

_LIMITS = SizeLimits()


def _number(cell: str, where: str) -> float:
    try:
        value = float(cell)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        shown = "an empty value" if not cell.strip() else repr(cell)
        raise DatasetFormatError(f"{where}: {shown} is not a finite number")
    return value


def load_csv(
    path: str | os.PathLike,
    label: str = "label",
    *,
    delimiter: str = ",",
    limits: SizeLimits = _LIMITS,
) -> ArrayDataset:
    """Read ``path`` (UTF-8, header row first) into features ``x`` and labels ``y``.

    ``label`` names the column holding each row's class, a non-negative integer (``3`` or
    ``3.0``); every other column, in file order, is a feature. ``x`` is float32 ``(N, columns - 1)``
    and ``y`` int64 ``(N,)``. Blank lines are skipped. The file's size is checked against
    ``limits.max_bytes`` before it is read.

    Example:
        >>> train = load_csv("clinic_a.csv", label="diagnosis")

    Raises:
        DatasetNotFoundError: no file at ``path``.
        DatasetFormatError: no header, no ``label`` column (the message lists the columns), a
            repeated column name, a row of the wrong length, or a value that is empty, not a
            number or not finite (the message names the row and column), a label that is not a
            non-negative integer.
        SizeLimitError: the file is larger than ``limits.max_bytes``.
    """
    path = Path(path)
    checked_size(path, limits, "CSV file")
    features = array.array("d")
    labels = array.array("q")
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh, delimiter=delimiter)
            header = [name.strip() for name in next(reader, [])]
            if not header:
                raise DatasetFormatError(f"{path}: empty file; expected a header row first")
            repeated = sorted(name for name, count in Counter(header).items() if count > 1)
            if repeated:
                raise DatasetFormatError(f"{path}: column(s) {', '.join(repeated)} appear twice")
            if label not in header:
                raise DatasetFormatError(
                    f"{path}: no label column {label!r}; the columns are {', '.join(header)} "
                    "(pass label=<column name>)"
                )
            if len(header) < 2:
                raise DatasetFormatError(f"{path}: only the label column; no feature columns")
            label_at = header.index(label)
            row = 0
            for cells in reader:
                if not cells or (len(cells) == 1 and not cells[0].strip()):
                    continue
                row += 1
                where = f"{path}: row {row} (line {reader.line_num})"
                if len(cells) != len(header):
                    raise DatasetFormatError(
                        f"{where} has {len(cells)} values; the header has {len(header)} columns"
                    )
                for column, (name, cell) in enumerate(zip(header, cells, strict=True)):
                    value = _number(cell, f"{where}, column {name!r}")
                    if column != label_at:
                        features.append(value)
                    elif value < 0 or not value.is_integer() or value >= 2**63:
                        raise DatasetFormatError(
                            f"{where}, column {name!r}: label {cell!r} is not a non-negative "
                            "integer"
                        )
                    else:
                        labels.append(int(value))
    except UnicodeDecodeError as exc:
        raise DatasetFormatError(f"{path}: not UTF-8 text: {exc}") from None
    except csv.Error as exc:
        raise DatasetFormatError(f"{path}: not readable as CSV: {exc}") from None
    x = np.frombuffer(features, dtype=np.float64).reshape(len(labels), len(header) - 1)
    with np.errstate(over="ignore"):
        x32 = x.astype(np.float32)
    overflow = np.argwhere(~np.isfinite(x32))
    if overflow.size:
        row, column = (int(i) for i in overflow[0])
        name = [n for n in header if n != label][column]
        raise DatasetFormatError(
            f"{path}: row {row + 1}, column {name!r}: {x[row, column]} does not fit float32"
        )
    return ArrayDataset(x32, np.frombuffer(labels, dtype=np.int64).copy())
