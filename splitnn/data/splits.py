"""What every reader returns: a train and a test Split of float32 features and int64
labels, and the checks and seeded splits the readers share."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from splitnn.errors import DataError

DEFAULT_TEST_FRACTION = 0.2


@dataclass
class Split:
    """Rows of one split: ``x`` float32 features, ``y`` int64 labels, same length."""

    x: np.ndarray
    y: np.ndarray

    def __post_init__(self) -> None:
        if self.x.dtype != np.float32:
            raise DataError(f"x must be float32, got {self.x.dtype}")
        if self.y.dtype != np.int64 or self.y.ndim != 1:
            raise DataError(f"y must be a 1-D int64 array, got {self.y.dtype} {self.y.shape}")
        if self.x.shape[0] != self.y.shape[0]:
            raise DataError(f"x has {self.x.shape[0]} rows but y has {self.y.shape[0]}")

    def __len__(self) -> int:
        return int(self.y.shape[0])


@dataclass
class SourceData:
    """A train and a test split with ``classes`` labels numbered ``0..classes-1``."""

    train: Split
    test: Split
    classes: int
    name: str
    class_names: tuple[str, ...] | None = None


# --------------------------------------------------------------------------- helpers


def seeded_split(n: int, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted train and test row indices of a seeded random split of ``n`` rows."""
    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"test fraction must be between 0 and 1, got {test_fraction}")
    if n < 2:
        raise DataError(f"need at least 2 rows to split into train and test, got {n}")
    n_test = min(max(1, round(n * test_fraction)), n - 1)
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[n_test:]), np.sort(order[:n_test])


def encode_labels(*arrays: np.ndarray) -> tuple[list[np.ndarray], int, tuple[str, ...] | None]:
    """Labels as int64 class indices. Non-negative integers (or integral floats) are kept;
    strings are numbered in sorted order and their names returned."""
    kinds = {a.dtype.kind for a in arrays}
    if kinds == {"U", "S"}:
        raise DataError("labels mix text and byte strings; use one kind")
    if kinds <= {"U", "S"}:
        names = sorted(set().union(*(np.unique(a).tolist() for a in arrays)))
        lookup = {name: i for i, name in enumerate(names)}
        out = [np.fromiter((lookup[v] for v in a.tolist()), np.int64, a.size) for a in arrays]
        shown = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)
        return out, len(names), shown
    out = []
    for a in arrays:
        if a.dtype.kind == "b":
            a = a.astype(np.int64)
        elif a.dtype.kind == "f":
            if not np.all(np.isfinite(a)) or not np.all(a == np.round(a)):
                raise DataError("labels must be whole numbers (found fractional or NaN values)")
            a = a.astype(np.int64)
        elif a.dtype.kind not in "iu":
            raise DataError(f"labels must be integers or strings, got dtype {a.dtype}")
        a = a.astype(np.int64)
        if a.size and a.min() < 0:
            raise DataError(f"labels must be non-negative, found {int(a.min())}")
        out.append(a)
    classes = int(max((int(a.max()) for a in out if a.size), default=-1)) + 1
    return out, classes, None


def check_labels(y: np.ndarray, classes: int, what: str) -> None:
    bad = y[(y < 0) | (y >= classes)]
    if bad.size:
        raise DataError(f"{what}: label {int(bad[0])} outside 0..{classes - 1}")


def require_file(path: Path, what: str) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{what}: no such file: {path}")
    if not path.is_file():
        raise DataError(f"{what}: not a regular file: {path}")
    return path


def numeric_x(x: np.ndarray, what: str) -> np.ndarray:
    if x.dtype.kind not in "biuf":
        raise DataError(f"{what}: features must be numeric, got dtype {x.dtype}")
    if x.ndim < 1:
        raise DataError(f"{what}: features must have a row dimension")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.all(np.isfinite(x)):
        raise DataError(f"{what}: features contain NaN or infinite values")
    return x
