"""A user's own .npz (arrays x, y, optionally x_test, y_test) or .csv (a header row,
a label column, every other column numeric)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from splitnn.data.datasets import read_npz
from splitnn.data.splits import (
    DEFAULT_TEST_FRACTION,
    SourceData,
    Split,
    encode_labels,
    numeric_x,
    require_file,
    seeded_split,
)
from splitnn.errors import DataError

# --------------------------------------------------------------------------- npz and csv


def load_npz_source(
    path: str | Path, *, seed: int = 0, test_fraction: float = DEFAULT_TEST_FRACTION
) -> SourceData:
    """A user's ``.npz``: arrays ``x`` and ``y`` (and optionally ``x_test``/``y_test``; else a
    seeded split). Features are used as they are (cast to float32, not rescaled)."""
    path = require_file(Path(path), "npz")
    arrays = read_npz(path)
    if "x" not in arrays or "y" not in arrays:
        raise DataError(f"{path}: must hold arrays 'x' and 'y' (found {sorted(arrays)})")
    has_test = ("x_test" in arrays, "y_test" in arrays)
    if any(has_test) and not all(has_test):
        raise DataError(f"{path}: give both 'x_test' and 'y_test' or neither")
    x = numeric_x(arrays["x"], f"{path}: x")
    if arrays["y"].ndim != 1 or arrays["y"].shape[0] != x.shape[0]:
        raise DataError(f"{path}: y must be 1-D with one label per row of x")
    if all(has_test):
        x_test = numeric_x(arrays["x_test"], f"{path}: x_test")
        if x_test.shape[1:] != x.shape[1:]:
            raise DataError(
                f"{path}: x_test rows have shape {list(x_test.shape[1:])}, x rows "
                f"{list(x.shape[1:])}"
            )
        if arrays["y_test"].ndim != 1 or arrays["y_test"].shape[0] != x_test.shape[0]:
            raise DataError(f"{path}: y_test must be 1-D with one label per row of x_test")
        (y, y_test), classes, names = encode_labels(arrays["y"], arrays["y_test"])
        train, test = Split(x, y), Split(x_test, y_test)
    else:
        (y,), classes, names = encode_labels(arrays["y"])
        tr, te = seeded_split(len(y), test_fraction, seed)
        train, test = Split(x[tr], y[tr]), Split(x[te], y[te])
    return SourceData(train, test, classes, path.stem, names)


def load_csv(
    path: str | Path,
    *,
    label_column: str = "label",
    seed: int = 0,
    test_fraction: float = DEFAULT_TEST_FRACTION,
) -> SourceData:
    """A ``.csv`` with a header row: ``label_column`` holds the labels (integers, or any text
    numbered in sorted order), every other column a number. Seeded train/test split."""
    path = require_file(Path(path), "csv")
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.reader(fh))
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text ({err})") from None
    except csv.Error as err:
        raise DataError(f"{path}: malformed CSV ({err})") from None
    rows = [r for r in rows if any(cell.strip() for cell in r)]
    if not rows:
        raise DataError(f"{path}: empty file (expected a header row)")
    header = [h.strip() for h in rows[0]]
    if label_column not in header:
        raise DataError(f"{path}: no column {label_column!r} in header {header}")
    if header.count(label_column) > 1:
        raise DataError(f"{path}: column {label_column!r} appears more than once")
    li = header.index(label_column)
    features = [i for i in range(len(header)) if i != li]
    if not features:
        raise DataError(f"{path}: no feature columns besides {label_column!r}")
    body = rows[1:]
    if len(body) < 2:
        raise DataError(f"{path}: need at least 2 data rows, found {len(body)}")
    x = np.empty((len(body), len(features)), dtype=np.float32)
    labels: list[str] = []
    for n, row in enumerate(body):
        line = n + 2
        if len(row) != len(header):
            raise DataError(f"{path}: line {line} has {len(row)} fields, header has {len(header)}")
        for j, i in enumerate(features):
            cell = row[i].strip()
            try:
                x[n, j] = float(cell)
            except ValueError:
                raise DataError(
                    f"{path}: line {line}, column {header[i]!r}: {cell!r} is not a number"
                ) from None
        label = row[li].strip()
        if not label:
            raise DataError(f"{path}: line {line}: empty label")
        labels.append(label)
    if not np.all(np.isfinite(x)):
        raise DataError(f"{path}: features contain NaN or infinite values")
    try:
        parsed = np.array([int(v) for v in labels], dtype=np.int64)
    except (ValueError, OverflowError):
        parsed = np.array(labels)  # text labels: numbered in sorted order
    (y,), classes, names = encode_labels(parsed)
    tr, te = seeded_split(len(y), test_fraction, seed)
    return SourceData(Split(x[tr], y[tr]), Split(x[te], y[te]), classes, path.stem, names)
