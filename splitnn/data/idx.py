"""Fashion-MNIST from the idx files of Debian's dataset-fashion-mnist package."""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np

from splitnn.data.splits import (
    SourceData,
    Split,
    check_labels,
    require_file,
)
from splitnn.errors import DataError

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


# --------------------------------------------------------------------------- idx (Fashion-MNIST)

_IDX_TYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def parse_idx(data: bytes, what: str = "idx data") -> np.ndarray:
    """Parse an idx file's bytes: 2 zero bytes, a type code, the number of dimensions,
    that many big-endian uint32 sizes, then exactly the data they describe."""
    if len(data) < 4:
        raise DataError(f"{what}: too short for an idx header ({len(data)} bytes)")
    zero, type_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0:
        raise DataError(f"{what}: bad idx magic number 0x{data[:4].hex()} (must start 0x0000)")
    if type_code not in _IDX_TYPES:
        raise DataError(f"{what}: unknown idx data type code 0x{type_code:02x}")
    if ndim == 0:
        raise DataError(f"{what}: idx header declares 0 dimensions")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{what}: truncated idx header ({len(data)} of {header} bytes)")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    dtype = _IDX_TYPES[type_code]
    expected = math.prod(dims) * dtype.itemsize
    body = len(data) - header
    if body != expected:
        state = "truncated" if body < expected else "has trailing bytes"
        raise DataError(
            f"{what}: idx body {state}: dims {list(dims)} need {expected} bytes, found {body}"
        )
    return (
        np.frombuffer(data, dtype=dtype, offset=header)
        .reshape(dims)
        .astype(dtype.newbyteorder("="))
    )


def read_idx(path: str | Path) -> np.ndarray:
    """Read an idx file, gzip'd (by magic bytes) or plain."""
    path = require_file(Path(path), "idx file")
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:
            raise DataError(f"{path}: corrupt gzip data: {err}") from None
    return parse_idx(raw, str(path))


def _find_idx(directory: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (directory / name).is_file():
            return directory / name
    raise FileNotFoundError(f"missing {stem}.gz in {directory}")


def _read_idx_pair(directory: Path, prefix: str, classes: int) -> Split:
    images = read_idx(_find_idx(directory, f"{prefix}-images-idx3-ubyte"))
    labels = read_idx(_find_idx(directory, f"{prefix}-labels-idx1-ubyte"))
    if images.ndim != 3 or images.shape[1:] != (28, 28) or images.dtype != np.uint8:
        raise DataError(
            f"{prefix} images in {directory}: expected uint8 [N,28,28], "
            f"got {images.dtype} {list(images.shape)}"
        )
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise DataError(f"{prefix} labels in {directory}: expected uint8 [N], got {labels.shape}")
    if labels.shape[0] != images.shape[0]:
        raise DataError(
            f"{prefix} in {directory}: {images.shape[0]} images but {labels.shape[0]} labels"
        )
    y = labels.astype(np.int64)
    check_labels(y, classes, f"{prefix} labels in {directory}")
    x = (images.astype(np.float32) / np.float32(255.0)).reshape(-1, 1, 28, 28)
    return Split(x, y)


def load_fashion_mnist(directory: str | Path = FASHION_MNIST_DIR) -> SourceData:
    """Fashion-MNIST from a directory of idx files (Debian: ``dataset-fashion-mnist``)."""
    directory = Path(directory)
    if not directory.is_dir():
        hint = ""
        if directory == FASHION_MNIST_DIR:
            hint = " (install it: apt-get install dataset-fashion-mnist)"
        raise FileNotFoundError(f"Fashion-MNIST directory not found: {directory}{hint}")
    train = _read_idx_pair(directory, "train", 10)
    test = _read_idx_pair(directory, "t10k", 10)
    return SourceData(train, test, 10, "fashion-mnist", FASHION_MNIST_CLASSES)
