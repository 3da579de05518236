"""Tensors and state blobs to and from wire messages.

Tensors travel as dtype + shape + raw bytes, split into chunks so that any
size fits under gRPC's message limit. Pickle is never used: a peer can only
send numbers, and whatever it sends is checked before it is turned into a
tensor. Received bytes are copied into a fresh tensor, because a tensor read
straight out of a protobuf buffer may be misaligned and then rounds
differently in matrix kernels.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from splitnn.errors import InvalidArgument, ResourceExhausted
from splitnn.v1 import tensor_pb2
from splitnn.wire import compress

DEFAULT_CHUNK_BYTES = 1 << 20
DEFAULT_MAX_TENSOR_BYTES = 1 << 30
MAX_DIMS = 8

_TO_WIRE: dict[torch.dtype, tensor_pb2.Dtype] = {
    torch.float32: tensor_pb2.DTYPE_FLOAT32,
    torch.float64: tensor_pb2.DTYPE_FLOAT64,
    torch.float16: tensor_pb2.DTYPE_FLOAT16,
    torch.bfloat16: tensor_pb2.DTYPE_BFLOAT16,
    torch.int64: tensor_pb2.DTYPE_INT64,
    torch.int32: tensor_pb2.DTYPE_INT32,
    torch.int16: tensor_pb2.DTYPE_INT16,
    torch.int8: tensor_pb2.DTYPE_INT8,
    torch.uint8: tensor_pb2.DTYPE_UINT8,
    torch.bool: tensor_pb2.DTYPE_BOOL,
}
_FROM_WIRE = {v: k for k, v in _TO_WIRE.items()}

# torch.frombuffer warns on read-only buffers; we always clone right after.
warnings.filterwarnings("ignore", message="The given buffer is not writable")


def wire_dtype(dtype: torch.dtype) -> tensor_pb2.Dtype:
    """The wire enum for a torch dtype; InvalidArgument for types we do not carry."""
    try:
        return _TO_WIRE[dtype]
    except KeyError:
        raise InvalidArgument(f"dtype {dtype} cannot travel on the wire") from None


def torch_dtype(value: int) -> torch.dtype:
    """The torch dtype for a wire enum value; InvalidArgument when unknown."""
    try:
        return _FROM_WIRE[value]  # type: ignore[index, unused-ignore]  # any int from the wire
    except KeyError:
        raise InvalidArgument(f"unknown or unspecified dtype {value}") from None


def tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """The raw bytes of a tensor, as one contiguous CPU buffer (no copy when possible)."""
    t = tensor.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    t = t.contiguous()
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    return t.numpy().reshape(-1).view("uint8").data


def chunk_fillers(tensor: torch.Tensor, chunk_bytes: int = DEFAULT_CHUNK_BYTES, wire: int = 0):
    """One function per TensorChunk of a tensor, each filling a chunk message in place
    (one inside an op's message, say: no copy of a built chunk into it), of at most
    `chunk_bytes` of data; a float tensor narrowed first for a `wire` format other than
    0 (splitnn.wire.compress). `fill(chunk, data=False)` leaves the chunk's bytes out
    and returns them, a view of the tensor's memory (framed by splitnn.wire.lift)."""
    sent, row_scales = compress.narrow(tensor, wire)
    widen_to = wire_dtype(tensor.dtype) if sent.dtype != tensor.dtype else 0
    dtype = wire_dtype(sent.dtype)
    shape = list(sent.shape)
    raw = tensor_bytes(sent)
    count = max(1, math.ceil(len(raw) / chunk_bytes))

    def filler(i: int):
        def fill(chunk, data: bool = True) -> memoryview | None:
            chunk.dtype, chunk.index, chunk.count = dtype, i, count
            chunk.shape.extend(shape)
            piece = raw[i * chunk_bytes : (i + 1) * chunk_bytes]
            if widen_to:
                chunk.widen_to = widen_to
                if i == 0 and row_scales is not None:
                    chunk.row_scales = row_scales
            if not data:
                return piece
            chunk.data = piece.tobytes()
            return None

        return fill

    return [filler(i) for i in range(count)]


def encode(tensor: torch.Tensor, chunk_bytes: int = DEFAULT_CHUNK_BYTES, wire: int = 0) -> list:
    """Split a tensor into TensorChunk messages (see chunk_fillers)."""
    chunks = []
    for fill in chunk_fillers(tensor, chunk_bytes, wire):
        chunk = tensor_pb2.TensorChunk()
        fill(chunk)
        chunks.append(chunk)
    return chunks


def expected_nbytes(dtype: torch.dtype, shape, max_bytes: int) -> int:
    """Validate a declared shape and return its byte size, before any allocation."""
    if len(shape) > MAX_DIMS:
        raise InvalidArgument(f"tensor has {len(shape)} dimensions; at most {MAX_DIMS} allowed")
    numel = 1
    for dim in shape:
        if dim < 0:
            raise InvalidArgument(f"negative dimension in shape {list(shape)}")
        numel *= dim
        if numel * dtype.itemsize > max_bytes:
            raise ResourceExhausted(
                f"tensor of shape {list(shape)} exceeds the {max_bytes}-byte limit"
            )
    return numel * dtype.itemsize


class TensorAssembler:
    """Collects the chunks of one tensor in order and checks every one of them."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_TENSOR_BYTES):
        self.max_bytes = max_bytes
        # dtype, shape, chunk count and byte size of the tensor being assembled
        self._first: tuple[torch.dtype, tuple[int, ...], int, int] | None = None
        # The tensor's bytes as they come in: torch's own (aligned) memory, written
        # through a memoryview and viewed as the tensor at the end, with no further copy.
        self._buffer: torch.Tensor | None = None
        self._view: memoryview | None = None
        self._widen: tuple[int, bytes] = (0, b"")  # the first chunk's widen_to, row_scales
        self._filled = 0
        self._next = 0

    def add(self, chunk, data=None) -> torch.Tensor | None:
        """Take the next chunk; return the tensor once the last chunk is in. `data`:
        the chunk's bytes where they were lifted out of it (splitnn.wire.lift)."""
        if data is None:
            data = chunk.data
        if self._first is None:
            if chunk.index != 0:
                raise InvalidArgument(f"tensor chunk {chunk.index} arrived before chunk 0")
            if chunk.count < 1:
                raise InvalidArgument("tensor chunk count must be at least 1")
            dtype = torch_dtype(chunk.dtype)
            nbytes = expected_nbytes(dtype, chunk.shape, self.max_bytes)
            if chunk.count > max(1, nbytes):
                raise InvalidArgument(f"{chunk.count} chunks for a {nbytes}-byte tensor")
            self._widen = (chunk.widen_to, chunk.row_scales)
            if chunk.widen_to:  # the widened tensor counts against the limit too
                expected_nbytes(torch_dtype(chunk.widen_to), chunk.shape, self.max_bytes)
            if chunk.count == 1:
                return self._widened(_single_chunk(chunk, dtype, nbytes, data))
            self._first = (dtype, tuple(chunk.shape), chunk.count, nbytes)
            self._buffer = torch.empty(nbytes, dtype=torch.uint8)
            self._view = self._buffer.numpy().data
        else:
            dtype, shape, count, nbytes = self._first
            if chunk.index != self._next:
                raise InvalidArgument(f"tensor chunk {chunk.index} arrived, expected {self._next}")
            if (
                chunk.count != count
                or tuple(chunk.shape) != shape
                or chunk.dtype != wire_dtype(dtype)
                or chunk.widen_to != self._widen[0]
            ):
                raise InvalidArgument("tensor chunks disagree on dtype, shape or count")
        assert self._first is not None and self._view is not None
        dtype, shape, count, nbytes = self._first
        end = self._filled + len(data)
        if end > nbytes:
            raise InvalidArgument(f"tensor chunks carry more than the {nbytes} bytes declared")
        self._view[self._filled : end] = data
        self._filled = end
        self._next = chunk.index + 1
        if self._next < count:
            return None
        if self._filled != nbytes:
            raise InvalidArgument(f"tensor chunks carry {self._filled} bytes, expected {nbytes}")
        buffer = self._buffer
        assert buffer is not None
        self._first, self._buffer, self._view, self._filled, self._next = None, None, None, 0, 0
        return self._widened(buffer.view(dtype).reshape(shape))

    def _widened(self, tensor: torch.Tensor) -> torch.Tensor:
        widen_to, row_scales = self._widen
        if not widen_to:
            if row_scales:
                raise InvalidArgument("row scales come only with a narrowed tensor")
            return tensor
        return compress.widen(tensor, torch_dtype(widen_to), row_scales)


def _single_chunk(chunk, dtype: torch.dtype, nbytes: int, data) -> torch.Tensor:
    if len(data) != nbytes:
        raise InvalidArgument(
            f"tensor of dtype {dtype} and shape {list(chunk.shape)} needs {nbytes} bytes, "
            f"got {len(data)}"
        )
    return _from_buffer(data, dtype, tuple(chunk.shape))


def _from_buffer(buffer, dtype: torch.dtype, shape) -> torch.Tensor:
    if len(buffer) == 0:
        try:
            return torch.empty(shape, dtype=dtype)
        except RuntimeError as err:  # huge dimensions next to a zero: strides overflow
            raise InvalidArgument(f"tensor shape {list(shape)} cannot be built: {err}") from None
    # clone(): a fresh, well-aligned tensor that owns its memory.
    return torch.frombuffer(buffer, dtype=dtype).reshape(shape).clone()


def encode_state(tensors: dict[str, torch.Tensor]) -> bytes:
    """A safetensors blob of named tensors (a safe format: a JSON header and raw bytes)."""
    return st_save({k: v.detach().contiguous().clone() for k, v in tensors.items()})


def decode_state(blob: bytes) -> dict[str, torch.Tensor]:
    """Named tensors from a safetensors blob; InvalidArgument if it is not one."""
    try:
        return st_load(bytes(blob))
    except (SafetensorError, ValueError, OSError, RuntimeError) as err:
        raise InvalidArgument(f"segment state is not a valid safetensors blob: {err}") from None


def blob_chunks(blob: bytes, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> Iterator:
    """Split a blob into BlobChunk messages."""
    count = max(1, math.ceil(len(blob) / chunk_bytes))
    view = memoryview(blob)
    for i in range(count):
        yield tensor_pb2.BlobChunk(
            index=i, count=count, data=view[i * chunk_bytes : (i + 1) * chunk_bytes].tobytes()
        )


class BlobAssembler:
    """Collects BlobChunks in order, refusing gaps, repeats and oversize blobs."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_TENSOR_BYTES):
        self.max_bytes = max_bytes
        self.parts: list[bytes] = []
        self.count: int | None = None
        self.size = 0

    def add(self, chunk) -> None:
        """Take the next chunk of the blob."""
        if self.count is None:
            if chunk.count < 1:
                raise InvalidArgument("blob chunk count must be at least 1")
            self.count = chunk.count
        if chunk.count != self.count or chunk.index != len(self.parts):
            raise InvalidArgument(
                f"blob chunk {chunk.index}/{chunk.count} out of order "
                f"(expected {len(self.parts)}/{self.count})"
            )
        self.size += len(chunk.data)
        if self.size > self.max_bytes:
            raise ResourceExhausted(f"state blob exceeds the {self.max_bytes}-byte limit")
        self.parts.append(chunk.data)

    @property
    def complete(self) -> bool:
        """True when every declared chunk has arrived."""
        return self.count is not None and len(self.parts) == self.count

    def blob(self) -> bytes:
        """The whole blob; InvalidArgument if chunks are missing."""
        if self.count is None:
            return b""
        if not self.complete:
            raise InvalidArgument(f"blob has {len(self.parts)} of {self.count} chunks")
        return b"".join(self.parts)
