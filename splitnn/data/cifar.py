"""A user's own CIFAR-10 copy: python or binary version, a directory or a .tar.gz."""

from __future__ import annotations

import tarfile
import zlib
from pathlib import Path

import numpy as np

from splitnn.data.pickles import restricted_loads
from splitnn.data.splits import (
    SourceData,
    Split,
    check_labels,
)
from splitnn.errors import DataError

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
    check_labels(y, 10, what)
    return raw.astype(np.uint8), y


def _cifar_binary_batch(data: bytes, what: str) -> tuple[np.ndarray, np.ndarray]:
    if len(data) == 0 or len(data) % _CIFAR_RECORD:
        raise DataError(
            f"{what}: size {len(data)} is not a whole number of {_CIFAR_RECORD}-byte records"
        )
    records = np.frombuffer(data, dtype=np.uint8).reshape(-1, _CIFAR_RECORD)
    y = records[:, 0].astype(np.int64)
    check_labels(y, 10, what)
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


def _read_cifar_files(files, layout: str) -> SourceData:
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

    return SourceData(to_split(parts[:-1]), to_split(parts[-1:]), 10, "cifar10", CIFAR10_CLASSES)


def load_cifar10(path: str | Path) -> SourceData:
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
