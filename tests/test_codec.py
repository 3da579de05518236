"""splitnn.wire.codec: tensors and state blobs to and from wire messages, and what it refuses."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from splitnn.errors import InvalidArgument, ResourceExhausted
from splitnn.v1 import tensor_pb2
from splitnn.wire import codec
from tests.helpers import decode

DTYPES = [
    torch.float32,
    torch.float64,
    torch.float16,
    torch.bfloat16,
    torch.int64,
    torch.int32,
    torch.int16,
    torch.int8,
    torch.uint8,
    torch.bool,
]


def sample(dtype: torch.dtype, shape, seed: int = 0) -> torch.Tensor:
    """A deterministic tensor of any supported dtype, covering the dtype's range."""
    g = torch.Generator().manual_seed(seed)
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=g).bool()
    if dtype.is_floating_point:
        return (torch.randn(shape, generator=g, dtype=torch.float64) * 100).to(dtype)
    info = torch.iinfo(dtype)
    return torch.randint(info.min, info.max, shape, generator=g, dtype=torch.int64).to(dtype)


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal dtype, shape and bytes (bitwise: NaN and -0.0 count as themselves)."""
    return (
        a.dtype == b.dtype
        and a.shape == b.shape
        and bytes(codec.tensor_bytes(a)) == bytes(codec.tensor_bytes(b))
    )


def chunks_of(tensor: torch.Tensor, chunk_bytes: int) -> list:
    chunks = codec.encode(tensor, chunk_bytes)
    assert len(chunks) > 1, "the test needs a multi-chunk tensor"
    return chunks


def raw_chunk(dtype=tensor_pb2.DTYPE_FLOAT32, shape=(2,), data=b"\0" * 8, index=0, count=1):
    return tensor_pb2.TensorChunk(
        dtype=dtype, shape=list(shape), index=index, count=count, data=data
    )


# ---- round trips ----------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_round_trip_every_dtype(dtype):
    tensor = sample(dtype, (5, 7))

    decoded = decode(codec.encode(tensor))

    assert same(decoded, tensor)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_round_trip_every_dtype_in_many_small_chunks(dtype):
    tensor = sample(dtype, (9, 5), seed=1)

    chunks = chunks_of(tensor, chunk_bytes=7)  # not a multiple of any item size
    decoded = decode(chunks)

    assert same(decoded, tensor)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_round_trip_empty_tensor(dtype):
    tensor = sample(dtype, (0, 3))

    chunks = codec.encode(tensor)
    decoded = decode(chunks)

    assert len(chunks) == 1 and chunks[0].data == b""
    assert decoded.shape == (0, 3) and decoded.dtype == dtype


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_round_trip_scalar(dtype):
    tensor = sample(dtype, ())

    decoded = decode(codec.encode(tensor))

    assert decoded.dim() == 0
    assert same(decoded, tensor)


@pytest.mark.parametrize(
    "view",
    [
        lambda t: t.t(),
        lambda t: t[:, ::2],
        lambda t: t[1:5, 2:],
        lambda t: t[:1].expand(6, 8),
        lambda t: t.unsqueeze(0).permute(2, 0, 1),
    ],
    ids=["transposed", "strided", "sliced", "expanded", "permuted"],
)
def test_round_trip_non_contiguous(view):
    tensor = view(sample(torch.float32, (6, 8)))
    assert not tensor.is_contiguous()

    decoded = decode(codec.encode(tensor, chunk_bytes=16))

    assert decoded.is_contiguous()
    assert torch.equal(decoded, tensor)


def test_round_trip_keeps_special_float_values_bitwise():
    tensor = torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0, 1e-45])

    decoded = decode(codec.encode(tensor))

    assert same(decoded, tensor)


def test_round_trip_tensor_that_requires_grad():
    tensor = torch.randn(3, 4, requires_grad=True)

    decoded = decode(codec.encode(tensor))

    assert not decoded.requires_grad
    assert torch.equal(decoded, tensor.detach())


def test_encode_splits_into_chunks_of_at_most_chunk_bytes():
    tensor = torch.zeros(1000, dtype=torch.float32)  # 4000 bytes

    chunks = codec.encode(tensor, chunk_bytes=1024)

    assert [len(c.data) for c in chunks] == [1024, 1024, 1024, 928]
    assert [(c.index, c.count) for c in chunks] == [(i, 4) for i in range(4)]
    assert all(list(c.shape) == [1000] and c.dtype == tensor_pb2.DTYPE_FLOAT32 for c in chunks)


@settings(max_examples=150, deadline=None)
@given(
    dtype=st.sampled_from(DTYPES),
    shape=st.lists(st.integers(0, 5), max_size=4),
    chunk_bytes=st.integers(1, 64),
    seed=st.integers(0, 1000),
)
def test_round_trip_any_shape_and_chunk_size(dtype, shape, chunk_bytes, seed):
    tensor = sample(dtype, tuple(shape), seed)

    chunks = codec.encode(tensor, chunk_bytes)
    decoded = decode(chunks)

    assert len(chunks) == max(1, math.ceil(tensor.numel() * tensor.element_size() / chunk_bytes))
    assert same(decoded, tensor)


def test_assembler_decodes_consecutive_tensors():
    first, second = torch.randn(4, 4), torch.arange(10)
    assembler = codec.TensorAssembler()

    results = [assembler.add(c) for c in codec.encode(first, 16) + codec.encode(second, 16)]

    tensors = [r for r in results if r is not None]
    assert len(tensors) == 2
    assert torch.equal(tensors[0], first) and torch.equal(tensors[1], second)
    # Nothing of the second tensor lingers: a third one decodes on its own.
    assert torch.equal(assembler.add(codec.encode(torch.ones(2))[0]), torch.ones(2))


# ---- memory: owned and aligned --------------------------------------------------------


@pytest.mark.parametrize("chunk_bytes", [1 << 20, 24], ids=["single-chunk", "multi-chunk"])
def test_decoded_tensor_owns_its_memory(chunk_bytes):
    tensor = torch.arange(24, dtype=torch.float32)
    buffers = [bytearray(c.data) for c in codec.encode(tensor, chunk_bytes)]
    chunks = [
        SimpleNamespace(
            dtype=c.dtype,
            shape=list(c.shape),
            index=c.index,
            count=c.count,
            data=b,
            widen_to=0,
            row_scales=b"",
        )
        for c, b in zip(codec.encode(tensor, chunk_bytes), buffers, strict=True)
    ]

    decoded = decode(chunks)
    for buffer in buffers:
        buffer[:] = b"\xff" * len(buffer)

    assert torch.equal(decoded, tensor)


def test_decoded_tensor_is_writable():
    decoded = decode(codec.encode(torch.zeros(3)))

    decoded += 1

    assert decoded.tolist() == [1.0, 1.0, 1.0]


@pytest.mark.parametrize("chunk_bytes", [1 << 20, 100], ids=["single-chunk", "multi-chunk"])
@pytest.mark.parametrize("rows", [1, 3, 7, 33])
def test_decoded_tensor_is_64_byte_aligned(rows, chunk_bytes):
    # A protobuf bytes field puts the data at an arbitrary offset; matmul kernels round
    # differently on misaligned input, so the decoded tensor must be a fresh allocation.
    tensor = torch.randn(rows, 5)

    decoded = decode(codec.encode(tensor, chunk_bytes))

    assert decoded.data_ptr() % 64 == 0


# ---- refusals -------------------------------------------------------------------------


def test_refuses_chunk_before_chunk_zero():
    chunks = chunks_of(torch.randn(16), 16)

    with pytest.raises(InvalidArgument, match="before chunk 0"):
        decode([chunks[1], chunks[0], *chunks[2:]])


def test_refuses_chunks_out_of_order():
    chunks = chunks_of(torch.randn(16), 16)

    with pytest.raises(InvalidArgument, match="expected 1"):
        decode([chunks[0], chunks[2], chunks[1], chunks[3]])


def test_refuses_duplicate_chunk():
    chunks = chunks_of(torch.randn(16), 16)

    with pytest.raises(InvalidArgument):
        decode([chunks[0], chunks[0], *chunks[1:]])


def test_refuses_missing_middle_chunk():
    chunks = chunks_of(torch.randn(16), 16)

    with pytest.raises(InvalidArgument):
        decode([chunks[0], chunks[1], chunks[3]])


def test_refuses_stream_ending_before_last_chunk():
    chunks = chunks_of(torch.randn(16), 16)

    with pytest.raises(InvalidArgument, match="before its last chunk"):
        decode(chunks[:-1])


def test_refuses_empty_chunk_stream():
    with pytest.raises(InvalidArgument):
        decode([])


def test_refuses_more_chunks_than_declared():
    chunks = codec.encode(torch.randn(4))

    with pytest.raises(InvalidArgument, match="more tensor chunks"):
        decode(chunks + chunks)


def test_refuses_chunks_disagreeing_on_count():
    chunks = chunks_of(torch.randn(16), 16)
    chunks[1].count = 5

    with pytest.raises(InvalidArgument, match="disagree"):
        decode(chunks)


def test_refuses_chunks_disagreeing_on_shape():
    chunks = chunks_of(torch.randn(16), 16)
    chunks[2].shape[:] = [4, 4]

    with pytest.raises(InvalidArgument, match="disagree"):
        decode(chunks)


def test_refuses_chunks_disagreeing_on_dtype():
    chunks = chunks_of(torch.randn(16), 16)
    chunks[1].dtype = tensor_pb2.DTYPE_INT32

    with pytest.raises(InvalidArgument, match="disagree"):
        decode(chunks)


def test_refuses_zero_chunk_count():
    with pytest.raises(InvalidArgument, match="at least 1"):
        decode([raw_chunk(count=0)])


def test_refuses_more_chunks_than_bytes():
    with pytest.raises(InvalidArgument, match="chunks for a 8-byte tensor"):
        decode([raw_chunk(count=9)])


@pytest.mark.parametrize(
    "value", [tensor_pb2.DTYPE_UNSPECIFIED, 99], ids=["unspecified", "unknown"]
)
def test_refuses_unusable_dtype(value):
    with pytest.raises(InvalidArgument, match="dtype"):
        decode([raw_chunk(dtype=value)])


def test_refuses_encoding_a_dtype_without_wire_form():
    with pytest.raises(InvalidArgument, match="cannot travel"):
        codec.encode(torch.zeros(2, dtype=torch.complex64))


@pytest.mark.parametrize("nbytes", [0, 7, 9, 16], ids=lambda n: f"{n}-bytes")
def test_refuses_single_chunk_bytes_not_matching_shape(nbytes):
    with pytest.raises(InvalidArgument, match="needs 8 bytes"):
        decode([raw_chunk(shape=(2,), data=b"\0" * nbytes)])


def test_refuses_chunks_carrying_too_many_bytes():
    chunks = chunks_of(torch.randn(8), 16)
    chunks[0].data = chunks[0].data + b"\0" * 20

    with pytest.raises(InvalidArgument, match="more than the 32 bytes"):
        decode(chunks)


def test_refuses_chunks_carrying_too_few_bytes():
    chunks = chunks_of(torch.randn(8), 16)
    chunks[1].data = chunks[1].data[:-4]

    with pytest.raises(InvalidArgument, match="carry 28 bytes, expected 32"):
        decode(chunks)


def test_refuses_negative_dimension():
    with pytest.raises(InvalidArgument, match="negative"):
        decode([raw_chunk(shape=(-1, 2), data=b"")])


def test_refuses_too_many_dimensions():
    shape = (1,) * (codec.MAX_DIMS + 1)

    with pytest.raises(InvalidArgument, match="dimensions"):
        decode([raw_chunk(shape=shape, data=b"\0" * 4)])


def test_accepts_the_maximum_number_of_dimensions():
    tensor = torch.ones((1,) * codec.MAX_DIMS)

    assert decode(codec.encode(tensor)).shape == tensor.shape


def test_refuses_declared_size_over_max_bytes_before_allocating():
    # 2**40 float32 elements: 4 TiB declared, a few bytes sent.
    chunk = raw_chunk(shape=(1 << 20, 1 << 20), data=b"\0" * 8, count=2)

    with pytest.raises(ResourceExhausted, match="limit"):
        codec.TensorAssembler(max_bytes=1 << 30).add(chunk)


def test_refuses_tensor_one_byte_over_max_bytes():
    chunks = codec.encode(torch.zeros(4))  # 16 bytes

    with pytest.raises(ResourceExhausted):
        decode(chunks, max_bytes=15)


def test_accepts_tensor_exactly_at_max_bytes():
    chunks = codec.encode(torch.zeros(4))

    assert decode(chunks, max_bytes=16).shape == (4,)


def test_accepts_huge_dimension_next_to_a_zero_one():
    # numel is 0, so nothing is allocated; such a shape is harmless and decodes empty.
    decoded = decode([raw_chunk(shape=(0, 1 << 40), data=b"")])

    assert decoded.numel() == 0


# ---- blobs ----------------------------------------------------------------------------


@pytest.mark.parametrize("size,chunk_bytes", [(0, 8), (5, 8), (8, 8), (100, 7), (1000, 1 << 20)])
def test_blob_round_trip(size, chunk_bytes):
    blob = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
    assembler = codec.BlobAssembler()

    for chunk in codec.blob_chunks(blob, chunk_bytes):
        assembler.add(chunk)

    assert assembler.complete
    assert assembler.blob() == blob


def test_blob_chunk_sizes():
    chunks = list(codec.blob_chunks(b"x" * 20, 8))

    assert [len(c.data) for c in chunks] == [8, 8, 4]
    assert [(c.index, c.count) for c in chunks] == [(0, 3), (1, 3), (2, 3)]


def test_blob_without_chunks_is_empty():
    assert codec.BlobAssembler().blob() == b""


def test_blob_refuses_chunks_out_of_order():
    chunks = list(codec.blob_chunks(b"x" * 24, 8))
    assembler = codec.BlobAssembler()
    assembler.add(chunks[0])

    with pytest.raises(InvalidArgument, match="out of order"):
        assembler.add(chunks[2])


def test_blob_refuses_first_chunk_not_zero():
    chunks = list(codec.blob_chunks(b"x" * 24, 8))

    with pytest.raises(InvalidArgument, match="out of order"):
        codec.BlobAssembler().add(chunks[1])


def test_blob_refuses_duplicate_chunk():
    chunks = list(codec.blob_chunks(b"x" * 24, 8))
    assembler = codec.BlobAssembler()
    assembler.add(chunks[0])

    with pytest.raises(InvalidArgument):
        assembler.add(chunks[0])


def test_blob_refuses_count_changing_midway():
    chunks = list(codec.blob_chunks(b"x" * 24, 8))
    assembler = codec.BlobAssembler()
    assembler.add(chunks[0])
    chunks[1].count = 4

    with pytest.raises(InvalidArgument):
        assembler.add(chunks[1])


def test_blob_refuses_zero_count():
    with pytest.raises(InvalidArgument, match="at least 1"):
        codec.BlobAssembler().add(tensor_pb2.BlobChunk(index=0, count=0, data=b"x"))


def test_blob_refuses_missing_last_chunk():
    chunks = list(codec.blob_chunks(b"x" * 24, 8))
    assembler = codec.BlobAssembler()
    for chunk in chunks[:-1]:
        assembler.add(chunk)

    assert not assembler.complete
    with pytest.raises(InvalidArgument, match="2 of 3"):
        assembler.blob()


def test_blob_refuses_chunk_beyond_declared_count():
    chunks = list(codec.blob_chunks(b"x" * 16, 8))
    assembler = codec.BlobAssembler()

    with pytest.raises(InvalidArgument):
        for chunk in [*chunks, tensor_pb2.BlobChunk(index=2, count=2, data=b"y")]:
            assembler.add(chunk)
        assembler.blob()


def test_blob_refuses_size_over_max_bytes():
    assembler = codec.BlobAssembler(max_bytes=20)

    with pytest.raises(ResourceExhausted, match="20-byte limit"):
        for chunk in codec.blob_chunks(b"x" * 24, 8):
            assembler.add(chunk)


# ---- safetensors state ----------------------------------------------------------------


def test_state_round_trip():
    state = {
        "model.0.weight": torch.randn(3, 4),
        "model.1.num_batches_tracked": torch.tensor(7),
        "optim.0.step": torch.tensor(3.0),
        "optim.0.exp_avg": torch.randn(3, 4).t(),  # non-contiguous
        "mask": torch.tensor([True, False]),
    }

    decoded = codec.decode_state(codec.encode_state(state))

    assert decoded.keys() == state.keys()
    for key, value in state.items():
        assert same(decoded[key], value), key


def test_state_round_trip_of_empty_dict():
    assert codec.decode_state(codec.encode_state({})) == {}


@pytest.mark.parametrize(
    "blob",
    [
        b"garbage",
        b"",
        b"\xff" * 8 + b"{}",
        (1 << 40).to_bytes(8, "little") + b"{}",
        (10).to_bytes(8, "little") + b"not json!!",
        (2).to_bytes(8, "little") + b"[]",
    ],
    ids=["garbage", "empty", "huge-header-length", "header-past-end", "bad-json", "not-object"],
)
def test_state_refuses_garbage(blob):
    with pytest.raises(InvalidArgument, match="safetensors"):
        codec.decode_state(blob)


def test_state_refuses_truncated_blob():
    blob = codec.encode_state({"w": torch.randn(10, 10)})

    with pytest.raises(InvalidArgument, match="safetensors"):
        codec.decode_state(blob[:-1])


def test_state_refuses_offsets_pointing_past_the_data():
    header = b'{"w":{"dtype":"F32","shape":[1000],"data_offsets":[0,4000]}}'
    blob = len(header).to_bytes(8, "little") + header + b"\0" * 16

    with pytest.raises(InvalidArgument, match="safetensors"):
        codec.decode_state(blob)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_state_refuses_any_random_bytes_cleanly(blob):
    try:
        codec.decode_state(blob)
    except InvalidArgument:
        pass
