"""Hostile requests straight at a live worker: property-based fuzzing of every RPC.

One real worker (gRPC on 127.0.0.1, in this process) hosts a three-segment run
(Linear+Tanh / BatchNorm1d / Linear+Sigmoid) on the toy set, SGD with momentum,
and two batches left pending on segment 0. Hypothesis then builds requests that
are invalid *by construction* (every one carries at least one defect that the
worker must refuse, whatever else it draws) for LoadSegment, Forward, Backward,
Step, Exchange, Drive, ExportSegment and DropSegment. Each must end with a
deliberate status code (never INTERNAL or UNKNOWN, which mean an unhandled
exception), and after each one every segment's exported state and every
pending count must be exactly what it was. At the end the worker still trains
exactly like plain PyTorch from the same weights.

Generation is derandomized (same requests on every run of the same test selection;
Hypothesis also draws constants from the loaded modules, so another selection may
differ) and not shrunk (see FUZZ).
"""

from __future__ import annotations

import math
import socket
import struct
from collections import Counter

import grpc
import pytest
import torch
from hypothesis import HealthCheck, Phase, assume, event, given, settings
from hypothesis import strategies as st
from torch import nn

from splitnn.data.datasets import TOY_NAME, builtin
from splitnn.model import layers as layer_specs
from splitnn.model import optim as optim_specs
from splitnn.services.segment_host import Limits
from splitnn.training.pipeline import Pipeline, Stage
from splitnn.transport.aio_client import AsyncExchangeClient
from splitnn.transport.client import WorkerClient
from splitnn.v1 import tensor_pb2, worker_pb2
from splitnn.wire import codec
from tests import helpers
from tests.conftest import start_worker
from tests.helpers import assert_unchanged, model_state, snapshot

Code = grpc.StatusCode
RUN = "fuzz-run"
HOST = "alice"
SEED = 7
SEGMENTS = [
    [{"type": "Linear", "in_features": 4, "out_features": 3}, {"type": "Tanh"}],
    [{"type": "BatchNorm1d", "num_features": 3}],
    [{"type": "Linear", "in_features": 3, "out_features": 1}, {"type": "Sigmoid"}],
]
IN_WIDTH = [4, 3, 3]  # input width of each segment
OPTIMIZER = {"name": "sgd", "lr": 0.1, "momentum": 0.9}
# Two Forwards of [0] stay pending through the whole fuzz run. The worker replays its stored
# answer to a repeat of the latest op (same run, kind, segments and batch id: a retry), so
# LATEST_BATCH is never sent again; PENDING_BATCH is the one hostile requests aim at.
PENDING_BATCH = 4242
LATEST_BATCH = 4243
PENDING_SHAPE = (2, 3)  # their output shape: a Backward gradient must match it
TOY_ROWS = 16
# Small caps keep memory bounded: anything a hostile request declares beyond them is refused
# before allocation, and "valid but big" layers cannot be built at all.
LIMITS = Limits(max_parameters=1_000_000, max_tensor_bytes=1 << 20)
TIMEOUT = 30
DRIVE_TIMEOUT = 10

REFUSALS = frozenset(
    {
        Code.INVALID_ARGUMENT,
        Code.NOT_FOUND,
        Code.FAILED_PRECONDITION,
        Code.RESOURCE_EXHAUSTED,
        Code.ALREADY_EXISTS,
        Code.OUT_OF_RANGE,
        Code.PERMISSION_DENIED,
        Code.UNAUTHENTICATED,
    }
)
# Drive through a peer nobody answers for: the driver retries, then reports the peer's
# failure as ABORTED (so that the caller does not retry the whole Drive).
PEER_DOWN = frozenset({Code.ABORTED, Code.UNAVAILABLE, Code.DEADLINE_EXCEEDED})

SENT: Counter = Counter()  # refused hostile requests, by RPC
PROBES: Counter = Counter()  # hostile requests that must succeed (GetStatus) without effect

# No shrinking: a request wrongly accepted may change the shared worker, and every later
# example would then fail too; the first failing example is the one to read.
FUZZ = settings(
    max_examples=100,
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
    ],
)


# ---- the worker under attack -----------------------------------------------------------


def reference_segments(seed: int = SEED) -> list[nn.Sequential]:
    """The run's segments as plain PyTorch builds them after `manual_seed(seed)` (the
    global RNG is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return [layer_specs.build_segment(layers) for layers in SEGMENTS]


def spec_proto(index: int, layers: list, optimizer: dict = OPTIMIZER) -> worker_pb2.SegmentSpec:
    return worker_pb2.SegmentSpec(
        index=index,
        layers=[layer_specs.layer_to_proto(layer) for layer in layers],
        optimizer=optim_specs.to_proto(optim_specs.normalize(optimizer)),
    )


def with_state(first: worker_pb2.LoadSegmentRequest, chunks: list) -> list:
    """LoadSegment messages: `first` carrying the first blob chunk, then one per chunk."""
    messages = [first]
    for i, chunk in enumerate(chunks):
        if i == 0:
            first.state.CopyFrom(chunk)
        else:
            messages.append(worker_pb2.LoadSegmentRequest(state=chunk))
    return messages


class Target:
    """The running worker, its baseline state and a port where nobody listens."""

    def __init__(self, running, dead_address: str):
        self.running = running
        self.stub = running.stub
        self.address = running.address
        self.dead_address = dead_address
        self.baseline = snapshot(self.stub)

    def check(self) -> None:
        assert_unchanged(self.stub, self.baseline)


def start_fuzz_worker():
    """A conftest worker whose Drive peers retry an unreachable host once, quickly (the
    default backs off for ~3 s), so that a refused Drive has ended, cleanup included,
    when its call returns."""

    def peers(name, address, server_name=None):
        return AsyncExchangeClient(name, address, server_name=server_name, retries=1, backoff=0.01)

    return start_worker(HOST, LIMITS, peer_factory=peers)


@pytest.fixture(scope="module")
def target():
    running, stop = start_fuzz_worker()
    # Bound but never listening: connecting to it is refused, and nobody else can take it.
    dead = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    dead.bind(("127.0.0.1", 0))
    try:
        for index, (layers, module) in enumerate(zip(SEGMENTS, reference_segments(), strict=True)):
            chunks = list(codec.blob_chunks(codec.encode_state(model_state(module)), 256))
            first = worker_pb2.LoadSegmentRequest(run_id=RUN, spec=spec_proto(index, layers))
            running.stub.LoadSegment(iter(with_state(first, chunks)), timeout=TIMEOUT)
        for batch_id in (PENDING_BATCH, LATEST_BATCH):
            op = worker_pb2.ForwardRequest(
                run_id=RUN, segments=[0], batch_id=batch_id, mode=worker_pb2.FORWARD_MODE_TRAIN
            )
            op.input.CopyFrom(codec.encode(torch.zeros(PENDING_SHAPE[0], 4))[0])
            assert len(list(running.stub.Forward(iter([op]), timeout=TIMEOUT))) == 1
        yield Target(running, f"127.0.0.1:{dead.getsockname()[1]}")
    finally:
        dead.close()
        stop()


def refused(rpc: str, call, allowed=REFUSALS) -> Code:
    """Send one hostile request (consuming any response stream); it must be refused with
    one of `allowed`."""
    SENT[rpc] += 1
    try:
        return helpers.refused(call, set(allowed)).code()
    except AssertionError as err:
        raise AssertionError(f"{rpc}: {err}") from None


# ---- building blocks -------------------------------------------------------------------

UINT32 = st.integers(0, 2**32 - 1)
UINT64 = st.integers(0, 2**64 - 1).filter(lambda b: b != LATEST_BATCH)  # see LATEST_BATCH
INT64 = st.integers(-(2**63), 2**63 - 1)
ENUM = st.integers(-(2**31), 2**31 - 1)  # proto3 enums are open: any int32 goes on the wire
TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=24)  # valid UTF-8 only
NON_FINITE = st.sampled_from([math.nan, math.inf, -math.inf])
SMALL = st.integers(1, 8)
LOSSES = [
    worker_pb2.LOSS_KIND_SUM_SQUARED_ERROR,
    worker_pb2.LOSS_KIND_MEAN_SQUARED_ERROR,
    worker_pb2.LOSS_KIND_BINARY_CROSS_ENTROPY,
    worker_pb2.LOSS_KIND_BINARY_CROSS_ENTROPY_WITH_LOGITS,
]
ANY_LOSS = st.sampled_from(LOSSES + [worker_pb2.LOSS_KIND_CROSS_ENTROPY])  # CE: float labels
BAD_LOSS = ENUM.filter(lambda k: not 1 <= k <= 5)
TRAIN_MODES = st.sampled_from([worker_pb2.FORWARD_MODE_TRAIN, worker_pb2.FORWARD_MODE_UNSPECIFIED])
MODES = st.one_of(
    st.sampled_from(
        [
            worker_pb2.FORWARD_MODE_TRAIN,
            worker_pb2.FORWARD_MODE_EVAL,
            worker_pb2.FORWARD_MODE_UNSPECIFIED,
        ]
    ),
    ENUM,
)
VALID_LISTS = [[0], [1], [2], [0, 1], [1, 2], [0, 1, 2]]
VALID_SEGMENTS = st.sampled_from(VALID_LISTS)
# Every other wire dtype, and values no dtype has.
OTHER_DTYPES = [d for d in codec._TO_WIRE if d != torch.float32]
BAD_WIRE_DTYPE = ENUM.filter(lambda v: v not in codec._FROM_WIRE)
GOOD_ROWS = st.lists(st.integers(0, TOY_ROWS - 1), min_size=1, max_size=TOY_ROWS)
BAD_ROWS = st.one_of(
    st.just([]),
    st.lists(INT64, min_size=1, max_size=6).map(lambda r: r + [TOY_ROWS]),
    st.lists(st.integers(0, TOY_ROWS - 1), max_size=6).flatmap(
        lambda r: st.integers(-(2**63), -1).map(lambda bad: r + [bad])
    ),
    st.lists(st.integers(TOY_ROWS, 2**63 - 1), min_size=1, max_size=4),
)
UNKNOWN_DATASET = TEXT.filter(lambda name: name != TOY_NAME)


def bad_run_ids(loadable: bool = False):
    """Run ids the worker must refuse: empty or too long; with `loadable` False also any
    well-formed id that is not the run's (NotFound on every call but LoadSegment)."""
    malformed = st.one_of(st.just(""), st.text(min_size=129, max_size=300, alphabet="ab-_xyz"))
    if loadable:
        return malformed
    return st.one_of(malformed, TEXT.filter(lambda r: r not in ("", RUN)))


def consecutive(start: int, length: int) -> list[int]:
    return list(range(start, start + length))


# Segment lists that can never name a chain of the run: empty, out of order, or unknown.
BAD_SEGMENTS = st.one_of(
    st.just([]),
    st.lists(st.integers(0, 4), min_size=2, max_size=5).filter(
        lambda s: any(b != a + 1 for a, b in zip(s, s[1:], strict=False))
    ),
    st.lists(UINT32, min_size=2, max_size=4).filter(
        lambda s: any(b != a + 1 for a, b in zip(s, s[1:], strict=False))
    ),
    st.builds(consecutive, st.integers(3, 2**32 - 6), st.integers(1, 4)),
    st.builds(consecutive, st.integers(0, 2), st.integers(4, 6)),
    st.just([2**32 - 1]),
)


def finite_tensor(rows: int, width: int, draw) -> torch.Tensor:
    values = draw(
        st.lists(
            st.floats(-1e6, 1e6, allow_nan=False, width=32),
            min_size=rows * width,
            max_size=rows * width,
        )
    )
    return torch.tensor(values, dtype=torch.float32).reshape(rows, width)


def well_formed_chunks(tensor: torch.Tensor, draw) -> list:
    chunk_bytes = draw(st.sampled_from([4, 7, 16, 64, codec.DEFAULT_CHUNK_BYTES]))
    return codec.encode(tensor, chunk_bytes)


def copy_chunk(chunk, **changes):
    out = tensor_pb2.TensorChunk()
    out.CopyFrom(chunk)
    for name, value in changes.items():
        if name == "shape":
            del out.shape[:]
            out.shape.extend(value)
        else:
            setattr(out, name, value)
    return out


@st.composite
def chaotic_chunks(draw, width: int = 4) -> list:
    """TensorChunk sequences that no assembler may accept, whatever the op around them."""
    rows = draw(st.integers(1, 6))
    tensor = finite_tensor(rows, width, draw)
    kind = draw(
        st.sampled_from(
            [
                "dtype",
                "negative_dim",
                "huge",
                "too_many_dims",
                "nbytes",
                "first_index",
                "zero_count",
                "count_too_big",
                "zero_size_overflow",
                "swap",
                "duplicate",
                "drop",
                "count_disagrees",
                "shape_disagrees",
                "dtype_disagrees",
                "extra_byte",
                "missing_byte",
            ]
        )
    )
    single = codec.encode(tensor)[0]
    if kind == "dtype":
        return [copy_chunk(single, dtype=draw(BAD_WIRE_DTYPE))]
    if kind == "negative_dim":
        shape = draw(st.lists(st.integers(0, 64), min_size=0, max_size=4))
        shape.insert(draw(st.integers(0, len(shape))), draw(st.integers(-(2**63), -1)))
        return [copy_chunk(single, shape=shape)]
    if kind == "huge":
        dims = st.integers(2**10, 2**40)
        shape = draw(st.lists(dims, min_size=2, max_size=4))
        return [copy_chunk(single, shape=shape, count=draw(st.integers(1, 2**32 - 1)))]
    if kind == "too_many_dims":
        shape = draw(st.lists(st.integers(0, 2), min_size=codec.MAX_DIMS + 1, max_size=20))
        return [copy_chunk(single, shape=shape)]
    if kind == "nbytes":
        data = bytes(single.data)
        data = draw(st.binary(max_size=len(data) + 16).filter(lambda d: len(d) != len(data)))
        return [copy_chunk(single, data=data)]
    if kind == "first_index":
        return [copy_chunk(single, index=draw(st.integers(1, 2**32 - 1)))]
    if kind == "zero_count":
        return [copy_chunk(single, count=0)]
    if kind == "count_too_big":
        nbytes = len(single.data)
        return [copy_chunk(single, count=draw(st.integers(nbytes + 1, 2**32 - 1)))]
    if kind == "zero_size_overflow":
        # No bytes at all, but the other dimensions alone overflow any tensor.
        shape = [0] + draw(st.lists(st.integers(2**31, 2**62), min_size=2, max_size=4))
        return [copy_chunk(single, shape=shape, data=b"")]
    chunks = codec.encode(tensor, draw(st.sampled_from([4, 8])))  # >= 12 bytes: >= 2 chunks
    assert len(chunks) >= 2
    i = draw(st.integers(0, len(chunks) - 1))
    j = draw(st.integers(0, len(chunks) - 1).filter(lambda j: j != i))
    if kind == "swap":
        chunks[i], chunks[j] = chunks[j], chunks[i]
    elif kind == "duplicate":
        chunks.insert(i, chunks[i])
    elif kind == "drop":
        del chunks[i]
    elif kind == "count_disagrees":
        k = max(i, 1)
        count = draw(UINT32.filter(lambda c: c != chunks[k].count))
        chunks[k] = copy_chunk(chunks[k], count=count)
    elif kind == "shape_disagrees":
        k = max(i, 1)
        shape = draw(st.lists(st.integers(0, 64), max_size=4).filter(lambda s: s != [rows, width]))
        chunks[k] = copy_chunk(chunks[k], shape=shape)
    elif kind == "dtype_disagrees":
        k = max(i, 1)
        dtype = draw(ENUM.filter(lambda d: d != tensor_pb2.DTYPE_FLOAT32))
        chunks[k] = copy_chunk(chunks[k], dtype=dtype)
    elif kind == "extra_byte":
        chunks[i] = copy_chunk(
            chunks[i], data=bytes(chunks[i].data) + draw(st.binary(min_size=1, max_size=8))
        )
    else:  # missing_byte
        chunks[i] = copy_chunk(chunks[i], data=bytes(chunks[i].data)[:-1])
    return chunks


def attach(op, field: str, chunks: list) -> list:
    """`op` carrying the first chunk in `field`, then one bare op per further chunk."""
    messages = []
    for i, chunk in enumerate(chunks):
        part = op if i == 0 else type(op)()
        getattr(part, field).CopyFrom(chunk)
        messages.append(part)
    return messages


# ---- Forward ---------------------------------------------------------------------------

FORWARD_DEFECTS = [
    "run",
    "segments",
    "chunks",
    "dtype",
    "width",
    "both_sources",
    "no_source",
    "dataset",
    "rows",
    "loss_kind",
    "loss_dataset",
    "loss_rows",
    "loss_count",
    "nan",
    "in_flight",
    "bn_single_row",
]


@st.composite
def forward_ops(draw, defect: str | None = None) -> list:
    """The messages of one Forward op that carries at least one defect."""
    defect = defect or draw(st.sampled_from(FORWARD_DEFECTS))
    op = worker_pb2.ForwardRequest(
        run_id=RUN,
        segments=draw(VALID_SEGMENTS),
        batch_id=draw(UINT64),
        mode=draw(MODES),
        step=draw(st.booleans()),
        want_output=draw(st.booleans()),
    )
    use_data = draw(st.booleans())
    rows = draw(st.integers(1, TOY_ROWS))
    if draw(st.booleans()):
        op.loss.kind = draw(ANY_LOSS)
        op.loss.dataset = TOY_NAME
        op.loss.indices.extend(draw(st.lists(st.integers(0, 15), min_size=rows, max_size=rows)))
    chunks = None

    if defect == "run":
        op.run_id = draw(bad_run_ids())
    elif defect == "segments":
        del op.segments[:]
        op.segments.extend(draw(BAD_SEGMENTS))
    elif defect in ("chunks", "dtype", "width", "both_sources", "nan", "bn_single_row"):
        use_data = False
    elif defect in ("dataset", "rows"):
        use_data = True
    elif defect == "in_flight":
        op.run_id, op.batch_id, op.mode = RUN, PENDING_BATCH, worker_pb2.FORWARD_MODE_TRAIN
        del op.segments[:]
        op.segments.append(0)
        op.ClearField("loss")
        # Not a retry of the pending Forward (which asked for no output): another op
        # under its id.
        op.want_output = True
    elif defect == "loss_kind":
        op.loss.kind = draw(BAD_LOSS)
    elif defect == "loss_dataset":
        op.loss.kind = draw(ANY_LOSS)
        op.loss.dataset = draw(UNKNOWN_DATASET)
    elif defect == "loss_rows":
        op.loss.kind = draw(ANY_LOSS)
        op.loss.dataset = TOY_NAME
        del op.loss.indices[:]
        op.loss.indices.extend(draw(BAD_ROWS))
    elif defect == "loss_count":
        op.loss.kind = draw(ANY_LOSS)
        op.loss.dataset = TOY_NAME
        del op.loss.indices[:]
        count = draw(st.integers(1, TOY_ROWS).filter(lambda n: n != rows))
        op.loss.indices.extend(draw(st.lists(st.integers(0, 15), min_size=count, max_size=count)))

    width = IN_WIDTH[op.segments[0]] if list(op.segments) in VALID_LISTS else 4
    if defect == "bn_single_row":
        rows, op.mode = 1, draw(TRAIN_MODES)
        del op.segments[:]
        op.segments.extend(draw(st.sampled_from([[1], [1, 2]])))
        width = 3
        op.ClearField("loss")
    if defect == "nan":
        # A NaN input meets a loss in training: the loss is NaN, and must be refused
        # (binary cross-entropy refuses NaN outputs outright).
        op.mode = draw(TRAIN_MODES)
        del op.segments[:]
        op.segments.extend(draw(st.sampled_from([[2], [1, 2], [0, 1, 2], [0], [0, 1]])))
        width = IN_WIDTH[op.segments[0]]
        op.loss.kind = draw(ANY_LOSS)
        event(f"nan: loss {op.loss.kind} through {list(op.segments)}")
        op.loss.dataset = TOY_NAME
        del op.loss.indices[:]
        op.loss.indices.extend(draw(st.lists(st.integers(0, 15), min_size=rows, max_size=rows)))
        x = finite_tensor(rows, width, draw).reshape(-1)
        x[draw(st.lists(st.integers(0, x.numel() - 1), min_size=1, unique=True))] = math.nan
        chunks = well_formed_chunks(x.reshape(rows, width), draw)
    elif defect == "chunks":
        chunks = draw(chaotic_chunks(width))
    elif defect == "dtype":
        dtype = draw(st.sampled_from(OTHER_DTYPES))
        chunks = well_formed_chunks(torch.zeros(rows, width).to(dtype), draw)
    elif defect == "width":
        bad = draw(st.integers(1, 9).filter(lambda w: w != width))
        chunks = well_formed_chunks(finite_tensor(rows, bad, draw), draw)
    elif not use_data or defect == "both_sources":
        chunks = well_formed_chunks(finite_tensor(rows, width, draw), draw)

    if defect == "no_source":
        chunks = None
    elif use_data or defect == "both_sources":
        op.data.dataset = TOY_NAME
        op.data.indices.extend(draw(st.lists(st.integers(0, 15), min_size=rows, max_size=rows)))
        if defect == "dataset":
            op.data.dataset = draw(UNKNOWN_DATASET)
        if defect == "rows":
            del op.data.indices[:]
            op.data.indices.extend(draw(BAD_ROWS))
    return [op] if chunks is None else attach(op, "input", chunks)


# ---- Backward and Step -----------------------------------------------------------------

BACKWARD_DEFECTS = [
    "no_grad",
    "not_pending",
    "run",
    "segments",
    "chunks",
    "grad_dtype",
    "grad_shape",
    "grad_non_finite",
]


@st.composite
def backward_ops(draw, defect: str | None = None) -> list:
    """The messages of one Backward op that carries at least one defect."""
    defect = defect or draw(st.sampled_from(BACKWARD_DEFECTS))
    op = worker_pb2.BackwardRequest(
        run_id=RUN, segments=[0], batch_id=PENDING_BATCH, step=draw(st.booleans())
    )
    grad = finite_tensor(*PENDING_SHAPE, draw)
    if defect == "no_grad":
        if draw(st.booleans()):
            op.batch_id = draw(UINT64)
        return [op]
    if defect == "not_pending":
        segments = draw(VALID_SEGMENTS)
        op.segments[:] = segments
        if segments == [0]:
            op.batch_id = draw(UINT64.filter(lambda b: b != PENDING_BATCH))
        else:
            op.batch_id = draw(st.sampled_from([PENDING_BATCH, 0, 1, 2**64 - 1]))
        grad = finite_tensor(draw(SMALL), draw(SMALL), draw)
    elif defect == "run":
        op.run_id = draw(bad_run_ids())
    elif defect == "segments":
        op.segments[:] = draw(BAD_SEGMENTS)
    elif defect == "chunks":
        return attach(op, "output_grad", draw(chaotic_chunks(3)))
    elif defect == "grad_dtype":
        grad = grad.to(draw(st.sampled_from(OTHER_DTYPES)))
    elif defect == "grad_shape":
        shape = draw(st.lists(st.integers(0, 5), min_size=1, max_size=3))
        assume(tuple(shape) != PENDING_SHAPE)
        grad = torch.ones(shape)
    else:  # grad_non_finite
        flat = grad.reshape(-1)
        where = draw(st.lists(st.integers(0, flat.numel() - 1), min_size=1, unique=True))
        flat[where] = torch.tensor([draw(NON_FINITE) for _ in where])
    return attach(op, "output_grad", well_formed_chunks(grad, draw))


@st.composite
def step_ops(draw) -> worker_pb2.StepRequest:
    """A Step that must be refused: bad run or segments, or segments with a pending batch."""
    defect = draw(st.sampled_from(["run", "segments", "pending"]))
    op = worker_pb2.StepRequest(run_id=RUN, segments=draw(VALID_SEGMENTS), batch_id=draw(UINT64))
    if defect == "run":
        op.run_id = draw(bad_run_ids())
    elif defect == "segments":
        op.segments[:] = draw(BAD_SEGMENTS)
    else:
        op.segments[:] = draw(st.sampled_from([[0], [0, 1], [0, 1, 2]]))
    return op


# ---- LoadSegment -----------------------------------------------------------------------


def arg_value(value) -> worker_pb2.ArgValue:
    arg = worker_pb2.ArgValue()
    if isinstance(value, bool):
        arg.bool_value = value
    elif isinstance(value, int):
        arg.int_value = value
    elif isinstance(value, float):
        arg.float_value = value
    elif isinstance(value, str):
        arg.string_value = value
    elif isinstance(value, list):
        arg.ints_value.values.extend(value)
    return arg


def layer_proto(layer_type: str, args: dict) -> worker_pb2.LayerSpec:
    spec = worker_pb2.LayerSpec(type=layer_type)
    for name, value in args.items():
        spec.args[name].CopyFrom(arg_value(value))
    return spec


ARG_OF_KIND = {
    layer_specs.INT: st.integers(-3, 16),
    layer_specs.FLOAT: st.floats(0, 1, allow_nan=False),
    layer_specs.BOOL: st.booleans(),
    layer_specs.STR: st.sampled_from(["same", "valid", "zeros", "none", "tanh", "reflect", "x"]),
    layer_specs.INTS: st.lists(st.integers(-1, 5), min_size=1, max_size=4),
}
WRONG_VALUE = {
    layer_specs.INT: st.integers(-(2**24), 2**24),
    layer_specs.FLOAT: st.floats(allow_nan=False, allow_infinity=False),
    layer_specs.BOOL: st.booleans(),
    layer_specs.STR: TEXT,
    layer_specs.INTS: st.lists(st.integers(-(2**24), 2**24), min_size=1, max_size=4),
}
SIZE_ARGS = {
    "Linear": ["in_features", "out_features"],
    "BatchNorm1d": ["num_features"],
    "BatchNorm2d": ["num_features"],
    "Conv2d": ["in_channels", "out_channels"],
    "LayerNorm": ["normalized_shape"],
}
FLOAT_ARGS = [
    (name, arg)
    for name, kind in layer_specs.ALLOWED_LAYERS.items()
    for arg, kinds in kind.args.items()
    if layer_specs.FLOAT in kinds
]


@st.composite
def random_layer(draw) -> worker_pb2.LayerSpec:
    """Any allowed layer with small arguments of plausible kinds (valid or not)."""
    name = draw(st.sampled_from(sorted(layer_specs.ALLOWED_LAYERS)))
    kind = layer_specs.ALLOWED_LAYERS[name]
    args = {}
    for arg, kinds in kind.args.items():
        if arg in kind.required or draw(st.integers(0, 3)) == 0:
            args[arg] = draw(ARG_OF_KIND[draw(st.sampled_from(kinds))])
    return layer_proto(name, args)


def good_layers(index: int) -> list:
    return [layer_specs.layer_to_proto(layer) for layer in SEGMENTS[index % 3]]


OPTIMIZER_PROTOS = st.builds(
    worker_pb2.OptimizerSpec,
    kind=st.sampled_from([1, 2, 3]),
    lr=st.floats(0, 1),
    momentum=st.floats(0, 0.99),
    beta1=st.floats(0, 0.99),
    beta2=st.floats(0, 0.99),
    eps=st.floats(0, 1e-3),
)


@st.composite
def bad_optimizer(draw) -> worker_pb2.OptimizerSpec:
    spec = draw(OPTIMIZER_PROTOS)
    defect = draw(st.sampled_from(["kind", "negative", "non_finite", "nesterov", "betas"]))
    if defect == "kind":
        spec.kind = draw(ENUM.filter(lambda k: not 1 <= k <= 3))
    elif defect == "negative":
        field = draw(st.sampled_from(["lr", "momentum", "dampening", "weight_decay", "eps"]))
        if field in ("momentum", "dampening"):
            spec.kind = worker_pb2.OPTIMIZER_KIND_SGD
        if field == "eps":
            spec.kind = draw(st.sampled_from([2, 3]))
        setattr(spec, field, draw(st.floats(max_value=-1e-300, allow_infinity=True)))
    elif defect == "non_finite":
        field = draw(st.sampled_from(["lr", "momentum", "dampening", "weight_decay", "eps"]))
        if field in ("momentum", "dampening"):
            spec.kind = worker_pb2.OPTIMIZER_KIND_SGD
        if field == "eps":
            spec.kind = draw(st.sampled_from([2, 3]))
        setattr(spec, field, draw(NON_FINITE))
    elif defect == "nesterov":
        spec.kind, spec.nesterov = worker_pb2.OPTIMIZER_KIND_SGD, True
        if draw(st.booleans()):
            spec.momentum = 0.0
        else:
            spec.momentum, spec.dampening = 0.5, draw(st.floats(1e-6, 1))
    else:
        spec.kind = draw(st.sampled_from([2, 3]))
        bad = st.one_of(st.floats(1, 1e9), st.floats(max_value=-1e-300), NON_FINITE)
        setattr(spec, draw(st.sampled_from(["beta1", "beta2"])), draw(bad))
    return spec


def state_blob(state: dict[str, torch.Tensor]) -> bytes:
    return codec.encode_state(state)


@st.composite
def garbage_blobs(draw) -> bytes:
    """Bytes that are not a usable safetensors file (checked here, not assumed)."""
    kind = draw(st.sampled_from(["random", "header", "json"]))
    if kind == "random":
        blob = draw(st.binary(min_size=1, max_size=256))
    elif kind == "header":  # a header length pointing past the end, or absurdly large
        length = draw(st.integers(0, 2**64 - 1))
        blob = struct.pack("<Q", length) + draw(st.binary(max_size=64))
    else:  # a well-framed header with hostile JSON
        body = draw(
            st.sampled_from(
                [
                    b'{"model.0.weight":{"dtype":"F32","shape":[3,4],"data_offsets":[0,48]}}',
                    b'{"model.0.weight":{"dtype":"F32","shape":[-3,4],"data_offsets":[0,48]}}',
                    b'{"model.0.weight":{"dtype":"F32","shape":[3,4],"data_offsets":[48,0]}}',
                    b'{"model.0.weight":{"dtype":"XX","shape":[3,4],"data_offsets":[0,48]}}',
                    b'{"model.0.weight":{"dtype":"F32","shape":[1099511627776,1099511627776],'
                    b'"data_offsets":[0,48]}}',
                    b'{"model.0.weight":{"dtype":"F32","shape":[3,4]}}',
                    b'{"__metadata__":{"a":1}}',
                    b"[1,2,3]",
                    b'{"model.0.weight":7}',
                    b"{not json",
                ]
            )
        )
        blob = struct.pack("<Q", len(body)) + body + draw(st.binary(max_size=64))
    try:
        codec.decode_state(blob)
    except Exception:  # refused here (or a decoder crash: send it, the worker must survive)
        return blob
    assume(False)  # it decoded: not garbage after all


def seg0_state(**overrides) -> dict[str, torch.Tensor]:
    state = model_state(reference_segments(seed=0)[0])
    state.update(overrides)
    return state


BAD_STATES = st.sampled_from(
    [
        {"junk": torch.zeros(1)},
        {"model.0.weight": torch.zeros(3, 4)},  # missing bias
        seg0_state(**{"model.0.weight": torch.zeros(3, 5)}),
        seg0_state(**{"model.0.weight": torch.zeros(3, 4, dtype=torch.float64)}),
        seg0_state(**{"model.7.weight": torch.zeros(3, 4)}),
        seg0_state(**{"model.0.bias": torch.zeros(())}),
        seg0_state(**{"optim.0.momentum_buffer": torch.zeros(4, 3)}),
        seg0_state(**{"optim.9.momentum_buffer": torch.zeros(3, 4)}),
        seg0_state(**{"optim.x.momentum_buffer": torch.zeros(3, 4)}),
        seg0_state(**{"optim.0.": torch.zeros(3, 4)}),
        seg0_state(**{"optim": torch.zeros(3, 4)}),
    ]
)


def blob_chunk_chaos(blob: bytes, draw) -> list:
    """A real blob split into chunks, then put out of order, repeated, cut or miscounted."""
    chunks = list(codec.blob_chunks(blob, draw(st.sampled_from([16, 40, 64]))))
    assert len(chunks) >= 3
    kind = draw(st.sampled_from(["swap", "duplicate", "drop", "count", "first_index", "zero"]))
    i = draw(st.integers(0, len(chunks) - 1))
    j = draw(st.integers(0, len(chunks) - 1).filter(lambda j: j != i))
    if kind == "swap":
        chunks[i], chunks[j] = chunks[j], chunks[i]
    elif kind == "duplicate":
        chunks.insert(i, chunks[i])
    elif kind == "drop":
        del chunks[i]
    elif kind == "count":
        chunks[i] = tensor_pb2.BlobChunk(
            index=chunks[i].index,
            count=draw(UINT32.filter(lambda c: c != len(chunks))),
            data=chunks[i].data,
        )
    elif kind == "first_index":
        chunks[0] = tensor_pb2.BlobChunk(
            index=draw(st.integers(1, 2**32 - 1)), count=chunks[0].count, data=chunks[0].data
        )
    else:
        chunks[0] = tensor_pb2.BlobChunk(index=0, count=0, data=chunks[0].data)
    return chunks


LOAD_DEFECTS = [
    "unknown_type",
    "extra_arg",
    "wrong_kind",
    "bad_choice",
    "negative_size",
    "int_out_of_range",
    "giant",
    "no_value",
    "ints_length",
    "non_finite_arg",
    "no_layers",
    "too_many_layers",
    "optimizer",
    "no_spec",
    "empty_stream",
    "run",
    "exists",
    "garbage_blob",
    "blob_chunks",
    "bad_state",
    "oversize_blob",
]


@st.composite
def load_streams(draw, defect: str | None = None) -> list:
    """The messages of one LoadSegment stream that carries at least one defect."""
    defect = defect or draw(st.sampled_from(LOAD_DEFECTS))
    index = draw(st.one_of(st.integers(0, 5), UINT32))
    if draw(st.booleans()):
        layers = good_layers(index)
    else:
        layers = draw(st.lists(random_layer(), min_size=1, max_size=4))
    first = worker_pb2.LoadSegmentRequest(
        run_id=draw(st.one_of(st.just(RUN), TEXT.filter(bool))),
        replace=draw(st.booleans()),
    )
    first.spec.index = index
    first.spec.optimizer.CopyFrom(draw(OPTIMIZER_PROTOS))
    chunks: list = []

    if defect == "unknown_type":
        name = draw(
            st.one_of(
                st.sampled_from(["os.system", "__import__", "eval", "Module", "linear", "", "RNN"]),
                TEXT,
            ).filter(lambda n: n not in layer_specs.ALLOWED_LAYERS)
        )
        extra = layer_proto(name, draw(st.dictionaries(TEXT, INT64, max_size=2)))
        layers.insert(draw(st.integers(0, len(layers))), extra)
    elif defect == "extra_arg":
        i = draw(st.integers(0, len(layers) - 1))
        allowed = layer_specs.ALLOWED_LAYERS[layers[i].type].args
        name = draw(TEXT.filter(lambda n: n not in allowed))
        layers[i].args[name].CopyFrom(arg_value(draw(INT64)))
    elif defect in ("wrong_kind", "bad_choice", "int_out_of_range", "ints_length"):
        candidates = {
            "wrong_kind": lambda kinds: True,
            "bad_choice": lambda kinds: layer_specs.STR in kinds,
            "int_out_of_range": lambda kinds: layer_specs.INT in kinds,
            "ints_length": lambda kinds: layer_specs.INTS in kinds,
        }[defect]
        options = [
            (t, a)
            for t, k in layer_specs.ALLOWED_LAYERS.items()
            for a, kinds in k.args.items()
            if candidates(kinds)
        ]
        layer_type, arg = draw(st.sampled_from(options))
        kinds = layer_specs.ALLOWED_LAYERS[layer_type].args[arg]
        if defect == "wrong_kind":
            refused_kinds = [k for k in WRONG_VALUE if k not in kinds]
            if layer_specs.FLOAT in kinds:  # ints are taken as floats
                refused_kinds = [k for k in refused_kinds if k != layer_specs.INT]
            value = draw(WRONG_VALUE[draw(st.sampled_from(refused_kinds))])
        elif defect == "bad_choice":
            choices = (layer_specs.ALLOWED_LAYERS[layer_type].choices or {}).get(arg, ())
            value = draw(TEXT.filter(lambda s: s not in choices))
        elif defect == "int_out_of_range":
            big = st.one_of(st.integers(2**24 + 1, 2**63 - 1), st.integers(-(2**63), -(2**24) - 1))
            value = draw(big)
            if layer_specs.INTS in kinds and draw(st.booleans()):
                value = [1, value] if draw(st.booleans()) else [value]
        else:
            value = draw(
                st.one_of(st.just([]), st.lists(st.integers(1, 3), min_size=5, max_size=9))
            )
        spec = layer_proto(layer_type, {})
        spec.args[arg].CopyFrom(arg_value(value))
        layers.insert(draw(st.integers(0, len(layers))), spec)
    elif defect == "negative_size":
        layer_type = draw(st.sampled_from(sorted(SIZE_ARGS)))
        kind = layer_specs.ALLOWED_LAYERS[layer_type]
        args = {a: 3 for a in kind.required}
        bad_arg = draw(st.sampled_from(SIZE_ARGS[layer_type]))
        negative = draw(st.integers(-(2**24), -1))
        args[bad_arg] = [negative] if layer_type == "LayerNorm" else negative
        layers.insert(draw(st.integers(0, len(layers))), layer_proto(layer_type, args))
    elif defect == "giant":
        # Everything else valid, a new slot: the size alone is refused, before allocation
        # (a real 2**24 x 2**24 Linear could not be allocated at all).
        cap = LIMITS.max_parameters
        in_f = draw(st.integers(1, 2**24))
        out_f = draw(st.integers(cap // (in_f + 1) + 1, 2**24))
        giant = layer_proto("Linear", {"in_features": in_f, "out_features": out_f})
        layers = good_layers(0)
        layers.insert(draw(st.integers(0, len(layers))), giant)
        first.spec.index = draw(st.integers(3, 2**32 - 1))
        first.spec.optimizer.CopyFrom(optim_specs.to_proto(optim_specs.normalize(OPTIMIZER)))
    elif defect == "no_value":
        spec = layer_proto("Linear", {"in_features": 4})
        spec.args["out_features"].CopyFrom(worker_pb2.ArgValue())
        layers.insert(draw(st.integers(0, len(layers))), spec)
    elif defect == "non_finite_arg":
        layer_type, arg = draw(st.sampled_from(FLOAT_ARGS))
        kind = layer_specs.ALLOWED_LAYERS[layer_type]
        args = {a: 3 for a in kind.required}
        args[arg] = draw(NON_FINITE)
        layers.insert(draw(st.integers(0, len(layers))), layer_proto(layer_type, args))
    elif defect == "no_layers":
        layers = []
    elif defect == "too_many_layers":
        layers = [layer_proto("Identity", {})] * draw(st.integers(257, 400))
    elif defect == "optimizer":
        first.spec.optimizer.CopyFrom(draw(bad_optimizer()))
    elif defect == "run":
        first.run_id = draw(bad_run_ids(loadable=True))
    elif defect == "exists":
        first.run_id, first.replace, first.spec.index = RUN, False, draw(st.integers(0, 2))
        layers = good_layers(first.spec.index)
        first.spec.optimizer.CopyFrom(optim_specs.to_proto(optim_specs.normalize(OPTIMIZER)))
    elif defect == "garbage_blob":
        blob = draw(garbage_blobs())
        chunks = list(codec.blob_chunks(blob, draw(st.sampled_from([7, 64, 1 << 20]))))
    elif defect == "blob_chunks":
        chunks = blob_chunk_chaos(state_blob(seg0_state()), draw)
    elif defect == "bad_state":
        first.spec.index = draw(st.integers(0, 5))
        layers = good_layers(0)
        chunks = list(codec.blob_chunks(state_blob(draw(BAD_STATES)), 64))
    elif defect == "oversize_blob":
        size = LIMITS.max_tensor_bytes + draw(st.integers(1, 4096))
        blob = b"\0" * size
        chunks = list(codec.blob_chunks(blob, 1 << 19))

    first.spec.layers.extend(layers)
    messages = with_state(first, chunks)
    if defect == "no_spec":
        first.ClearField("spec")
        if draw(st.booleans()):
            messages.insert(0, worker_pb2.LoadSegmentRequest(run_id=RUN))
    if defect == "empty_stream":
        return []
    return messages


# ---- Exchange --------------------------------------------------------------------------


EXCHANGE_KINDS = ["forward", "backward", "step", "empty", "interleave"]


@st.composite
def exchange_streams(draw, kind: str | None = None) -> list:
    """An Exchange stream whose first op is refused (so nothing after it may run)."""
    kind = kind or draw(st.sampled_from(EXCHANGE_KINDS))
    if kind == "forward":
        messages = [worker_pb2.ExchangeRequest(forward=m) for m in draw(forward_ops())]
    elif kind == "backward":
        messages = [worker_pb2.ExchangeRequest(backward=m) for m in draw(backward_ops())]
    elif kind == "step":
        messages = [worker_pb2.ExchangeRequest(step=draw(step_ops()))]
    elif kind == "empty":
        messages = [worker_pb2.ExchangeRequest()]
    else:
        # A well-formed op cut off mid-tensor by another message.
        op = worker_pb2.ForwardRequest(
            run_id=RUN, segments=[0], batch_id=draw(UINT64), mode=worker_pb2.FORWARD_MODE_EVAL
        )
        chunks = codec.encode(torch.zeros(draw(st.integers(2, 8)), 4), 8)
        cut = draw(st.integers(1, len(chunks) - 1))
        messages = [
            worker_pb2.ExchangeRequest(forward=m) for m in attach(op, "input", chunks)[:cut]
        ]
        intruder = draw(
            st.sampled_from(
                [
                    worker_pb2.ExchangeRequest(
                        step=worker_pb2.StepRequest(run_id=RUN, segments=[1])
                    ),
                    worker_pb2.ExchangeRequest(forward=worker_pb2.ForwardRequest(run_id=RUN)),
                    worker_pb2.ExchangeRequest(
                        backward=worker_pb2.BackwardRequest(output_grad=chunks[cut])
                    ),
                    worker_pb2.ExchangeRequest(),
                ]
            )
        )
        messages.append(intruder)
    # More refused ops after the first; they must never run.
    for _ in range(draw(st.integers(0, 2))):
        if draw(st.booleans()):
            messages.append(worker_pb2.ExchangeRequest(step=draw(step_ops())))
        else:
            messages.append(worker_pb2.ExchangeRequest())
    return messages


# ---- Drive -----------------------------------------------------------------------------

GOOD_STAGE_PLANS = [
    [(0, 1, 2)],
    [(0,), (1, 2)],
    [(0, 1), (2,)],
    [(0,), (1,), (2,)],
]
DRIVE_DEFECTS = [
    "no_stages",
    "first_not_self",
    "last_not_self",
    "loss_kind",
    "no_address",
    "unreachable",
    "dataset",
    "rows",
    "segments",
    "cross_entropy",
    "run",
    "bn_single_row",
]


@st.composite
def drive_requests(
    draw, dead_address: str, defect: str | None = None
) -> tuple[worker_pb2.DriveRequest, frozenset]:
    """A Drive request with at least one defect, and the codes its refusal may carry."""
    defect = defect or draw(st.sampled_from(DRIVE_DEFECTS))
    request = worker_pb2.DriveRequest(
        run_id=RUN,
        loss=draw(st.sampled_from(LOSSES)),
        dataset=TOY_NAME,
        mode=draw(st.sampled_from([worker_pb2.FORWARD_MODE_TRAIN, worker_pb2.FORWARD_MODE_EVAL])),
    )
    for segments in draw(st.sampled_from(GOOD_STAGE_PLANS)):
        request.stages.add(host=HOST, segments=segments)
    batch_ids = st.one_of(UINT64, st.just(PENDING_BATCH))
    for _ in range(draw(st.integers(1, 3))):
        rows = draw(st.lists(st.integers(0, 15), min_size=2, max_size=TOY_ROWS))
        request.batches.add(batch_id=draw(batch_ids), indices=rows)
    allowed = REFUSALS
    other_host = TEXT.filter(lambda h: h != HOST)

    if defect == "no_stages":
        del request.stages[:]
        if draw(st.booleans()):
            del request.batches[:]
    elif defect in ("first_not_self", "last_not_self"):
        stage = request.stages[0 if defect == "first_not_self" else -1]
        stage.host = draw(other_host)
        stage.address = draw(st.sampled_from(["", dead_address, "nowhere:1"]))
    elif defect == "loss_kind":
        request.loss = draw(BAD_LOSS)
    elif defect in ("no_address", "unreachable"):
        plan = draw(st.sampled_from([[(0,), (1,), (2,)], [(0,), (1, 2), (2,)], [(0, 1), (2,)]]))
        del request.stages[:]
        for segments in plan:
            request.stages.add(host=HOST, segments=segments)
        middle = worker_pb2.Stage(host=draw(other_host), segments=draw(VALID_SEGMENTS))
        if defect == "unreachable":
            middle.address = dead_address
            allowed = REFUSALS | PEER_DOWN
        stages = list(request.stages)
        del request.stages[:]
        request.stages.extend(stages[:1] + [middle] + stages[1:])
    elif defect == "dataset":
        request.dataset = draw(UNKNOWN_DATASET)
    elif defect == "rows":
        request.batches[0].indices[:] = draw(BAD_ROWS)
    elif defect == "segments":
        stage = request.stages[draw(st.integers(0, len(request.stages) - 1))]
        stage.segments[:] = draw(BAD_SEGMENTS)
    elif defect == "cross_entropy":  # the toy labels are floats: refused at the last stage
        request.loss = worker_pb2.LOSS_KIND_CROSS_ENTROPY
    elif defect == "run":
        request.run_id = draw(bad_run_ids())
    elif defect == "bn_single_row":
        request.mode = worker_pb2.FORWARD_MODE_TRAIN
        request.batches[0].indices[:] = [draw(st.integers(0, 15))]
    return request, allowed


# ---- the properties --------------------------------------------------------------------
# One test per defect kind, so that every kind is exercised whatever Hypothesis draws.

# Defects whose requests are otherwise valid, so that exactly one refusal fits.
EXACT_CODES = {
    "giant": {Code.RESOURCE_EXHAUSTED},
    "oversize_blob": {Code.RESOURCE_EXHAUSTED},
    "exists": {Code.ALREADY_EXISTS},
    "in_flight": {Code.FAILED_PRECONDITION},
    "not_pending": {Code.FAILED_PRECONDITION},
    "grad_non_finite": {Code.FAILED_PRECONDITION},
    "grad_shape": {Code.INVALID_ARGUMENT},
    "grad_dtype": {Code.INVALID_ARGUMENT},
    "no_grad": {Code.INVALID_ARGUMENT},
}


@pytest.mark.parametrize("defect", LOAD_DEFECTS)
@settings(FUZZ, max_examples=8)
@given(data=st.data())
def test_hostile_load_segment_is_refused_and_changes_nothing(target, defect, data):
    messages = data.draw(load_streams(defect))
    allowed = EXACT_CODES.get(defect, REFUSALS)
    refused(
        "LoadSegment", lambda: target.stub.LoadSegment(iter(messages), timeout=TIMEOUT), allowed
    )
    target.check()


@pytest.mark.parametrize("defect", FORWARD_DEFECTS)
@settings(FUZZ, max_examples=10)
@given(data=st.data())
def test_hostile_forward_is_refused_and_changes_nothing(target, defect, data):
    messages = data.draw(forward_ops(defect))
    allowed = EXACT_CODES.get(defect, REFUSALS)
    refused("Forward", lambda: target.stub.Forward(iter(messages), timeout=TIMEOUT), allowed)
    target.check()


@pytest.mark.parametrize("defect", BACKWARD_DEFECTS)
@settings(FUZZ, max_examples=10)
@given(data=st.data())
def test_hostile_backward_is_refused_and_changes_nothing(target, defect, data):
    messages = data.draw(backward_ops(defect))
    allowed = EXACT_CODES.get(defect, REFUSALS)
    refused("Backward", lambda: target.stub.Backward(iter(messages), timeout=TIMEOUT), allowed)
    target.check()


@settings(FUZZ, max_examples=30)
@given(op=step_ops())
def test_hostile_step_is_refused_and_changes_nothing(target, op):
    refused("Step", lambda: target.stub.Step(op, timeout=TIMEOUT))
    target.check()


@pytest.mark.parametrize("kind", EXCHANGE_KINDS)
@settings(FUZZ, max_examples=15)
@given(data=st.data())
def test_hostile_exchange_is_refused_and_changes_nothing(target, kind, data):
    messages = data.draw(exchange_streams(kind))
    refused("Exchange", lambda: target.stub.Exchange(iter(messages), timeout=TIMEOUT))
    target.check()


@pytest.mark.parametrize("defect", DRIVE_DEFECTS)
@settings(FUZZ, max_examples=6)
@given(data=st.data())
def test_hostile_drive_is_refused_and_changes_nothing(target, defect, data):
    request, allowed = data.draw(drive_requests(target.dead_address, defect))
    refused("Drive", lambda: target.stub.Drive(request, timeout=DRIVE_TIMEOUT), allowed)
    target.check()


UNKNOWN_SEGMENT = st.tuples(st.one_of(st.just(RUN), TEXT), UINT32).filter(
    lambda key: not (key[0] == RUN and key[1] < 3)
)


@settings(FUZZ, max_examples=40)
@given(key=UNKNOWN_SEGMENT, drop=st.booleans())
def test_export_or_drop_of_unknown_segment_is_refused(target, key, drop):
    run_id, index = key
    if drop:
        request = worker_pb2.DropSegmentRequest(run_id=run_id, index=index)
        refused("DropSegment", lambda: target.stub.DropSegment(request, timeout=TIMEOUT))
    else:
        request = worker_pb2.ExportSegmentRequest(run_id=run_id, index=index)
        refused("ExportSegment", lambda: target.stub.ExportSegment(request, timeout=TIMEOUT))
    target.check()


@settings(FUZZ, max_examples=15)
@given(noise=st.one_of(forward_ops(), backward_ops()).map(lambda m: m[0]))
def test_get_status_ignores_unknown_fields(target, noise):
    # GetStatus has no arguments to refuse: unknown fields (another message's bytes)
    # must be ignored, and answering must not change anything.
    request = worker_pb2.GetStatusRequest.FromString(noise.SerializeToString())
    PROBES["GetStatus"] += 1
    response = target.stub.GetStatus(request, timeout=TIMEOUT)
    assert response.name == HOST
    assert [(s.run_id, s.index) for s in response.segments] == [(RUN, 0), (RUN, 1), (RUN, 2)]
    target.check()


# ---- afterwards: still exact -----------------------------------------------------------


def test_enough_hostile_requests_were_sent(target):
    total = sum(SENT.values())
    print(f"hostile requests refused: {total} {dict(SENT)}; status probes: {dict(PROBES)}")
    assert total >= 500, SENT
    assert set(SENT) >= {
        "LoadSegment",
        "Forward",
        "Backward",
        "Step",
        "Exchange",
        "Drive",
        "ExportSegment",
        "DropSegment",
    }


def test_worker_still_trains_exactly_like_plain_pytorch(target):
    target.check()
    # Finish the batches left pending for the fuzz run: a zero gradient, no step.
    for batch_id in (PENDING_BATCH, LATEST_BATCH):
        op = worker_pb2.BackwardRequest(run_id=RUN, segments=[0], batch_id=batch_id)
        zero = codec.encode(torch.zeros(PENDING_SHAPE))
        list(target.stub.Backward(iter(attach(op, "output_grad", zero)), timeout=TIMEOUT))

    reference = reference_segments()
    model = nn.Sequential(*reference)
    optimizers = [torch.optim.SGD(s.parameters(), lr=0.1, momentum=0.9) for s in reference]
    data = builtin(TOY_NAME)
    batches = [list(range(16)), [3, 1, 4, 1, 5, 9, 2, 6], list(range(15, -1, -1)), [0, 8, 15]]
    plans = [
        [Stage(HOST, (0, 1, 2))],
        [Stage(HOST, (0, 1, 2))],
        [Stage(HOST, (0,)), Stage(HOST, (1, 2))],
        [Stage(HOST, (0, 1)), Stage(HOST, (2,))],
    ]
    client = WorkerClient(HOST, target.address, timeout=TIMEOUT)
    try:
        for batch_id, (rows, stages) in enumerate(zip(batches, plans, strict=True), start=1):
            pipeline = Pipeline({HOST: client}, RUN, stages, "sum_squared_error")
            result = pipeline.train_step(batch_id, TOY_NAME, rows)
            pipeline.flush()

            x, y = data.take(rows)
            loss = ((model(x) - y) ** 2).sum()
            loss.backward()
            for optimizer in optimizers:
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            assert result.loss == loss.item()
            assert result.count == len(rows)
    finally:
        client.close()

    status = target.stub.GetStatus(worker_pb2.GetStatusRequest(), timeout=TIMEOUT)
    assert [s.pending_batches for s in status.segments] == [0, 0, 0]
    for index, (segment, optimizer) in enumerate(zip(reference, optimizers, strict=True)):
        state = helpers.export(target.stub, index, RUN)
        expected = {f"model.{k}": v for k, v in segment.state_dict().items()}
        params = list(segment.parameters())
        for i, param in enumerate(params):
            expected[f"optim.{i}.momentum_buffer"] = optimizer.state[param]["momentum_buffer"]
        assert state.keys() == expected.keys(), index
        for name, value in expected.items():
            assert torch.equal(state[name], value), (index, name)
