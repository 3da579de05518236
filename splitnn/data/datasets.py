"""A worker's own datasets: .npz files with arrays x and y, plus the built-in toy set."""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from splitnn.errors import DataError, InvalidArgument, NotFound

TOY_NAME = "toy"


# The notebook's cell 3, row for row: every combination of 4 binary features, the eight
# with the fourth feature 0 first (by how many bits are set), then the eight with it 1.
# Each row's label is its fourth feature.
_TOY_ROWS = (
    (0, 0, 0, 0), (1, 0, 0, 0), (0, 1, 0, 0), (0, 0, 1, 0),
    (1, 1, 0, 0), (1, 0, 1, 0), (0, 1, 1, 0), (1, 1, 1, 0),
    (0, 0, 0, 1), (1, 0, 0, 1), (0, 1, 0, 1), (0, 0, 1, 1),
    (1, 1, 0, 1), (1, 0, 1, 1), (0, 1, 1, 1), (1, 1, 1, 1),
)  # fmt: skip


def toy_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The seed notebook's 16-row toy set exactly as its cell 3 lists it: x of shape
    [16, 4] and y of shape [16, 1], float32; y is 0 for the first eight rows and 1 for
    the last eight (the fourth feature)."""
    x = np.array(_TOY_ROWS, dtype=np.float32)
    y = np.array([[0.0]] * 8 + [[1.0]] * 8, dtype=np.float32)
    return x, y


@dataclass
class Dataset:
    """Rows a worker holds; the tensors never leave the worker."""

    name: str
    x: torch.Tensor
    y: torch.Tensor

    @property
    def rows(self) -> int:
        return int(self.x.shape[0])

    def take(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows by index, checked against the dataset size."""
        index = self._index(indices)
        return self.x.index_select(0, index), self.y.index_select(0, index)

    def features(self, indices) -> torch.Tensor:
        """The x of rows by index (take without the labels)."""
        return self.x.index_select(0, self._index(indices))

    def labels(self, indices) -> torch.Tensor:
        """The y of rows by index (take without the features)."""
        return self.y.index_select(0, self._index(indices))

    def _index(self, indices) -> torch.Tensor:
        # Checked as Python ints: a batch's few hundred indices cost less that way
        # than two tensor reductions.
        indices = list(indices)
        if not indices:
            raise InvalidArgument(f"dataset {self.name!r}: no rows requested")
        if min(indices) < 0 or max(indices) >= self.rows:
            raise InvalidArgument(f"dataset {self.name!r}: row index outside 0..{self.rows - 1}")
        return torch.tensor(indices, dtype=torch.int64)


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of an .npz file, read without pickle (an object array is refused): the
    one place splitnn opens an .npz."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {k: archive[k] for k in archive.files}
    except ValueError as err:
        raise DataError(f"{path}: cannot read without pickle ({err})") from None
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"{path}: not a readable .npz file ({err})") from None


def load_npz(name: str, path: str | Path) -> Dataset:
    """A worker's dataset from an .npz file with arrays x and y, refusing pickled objects."""
    path = Path(path)
    if not path.is_file():
        raise NotFound(f"dataset {name!r}: no file at {path}")
    try:
        arrays = read_npz(path)
    except DataError as err:
        raise InvalidArgument(f"dataset {name!r}: {err}") from None
    if "x" not in arrays or "y" not in arrays:
        raise InvalidArgument(f"dataset {name!r}: {path} must hold arrays 'x' and 'y'")
    return from_arrays(name, arrays["x"], arrays["y"])


def from_arrays(name: str, x: np.ndarray, y: np.ndarray) -> Dataset:
    """A dataset from numpy arrays: features as float32, labels as int64 or float32."""
    if x.shape[0] != y.shape[0]:
        raise InvalidArgument(f"dataset {name!r}: x has {x.shape[0]} rows, y has {y.shape[0]}")
    if x.dtype.kind not in "fiub" or y.dtype.kind not in "fiub":
        raise InvalidArgument(f"dataset {name!r}: x and y must be numeric arrays")
    x_t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    y_np = np.ascontiguousarray(y)
    y_t = torch.from_numpy(y_np.astype(np.float32 if y_np.dtype.kind == "f" else np.int64))
    return Dataset(name, x_t, y_t)


def builtin(name: str) -> Dataset:
    """A dataset every worker has without a file."""
    if name != TOY_NAME:
        raise NotFound(f"no built-in dataset {name!r}")
    return from_arrays(TOY_NAME, *toy_arrays())
