"""The worker over real gRPC: every bad input gets its status code, changes nothing, and the
worker keeps serving; big tensors travel in chunks and come back equal."""

from __future__ import annotations

import grpc
import pytest
import torch

from splitnn.data.datasets import TOY_NAME, builtin
from splitnn.errors import WorkerError
from splitnn.model import layers as layer_specs
from splitnn.model import optim as optim_specs
from splitnn.services.registration import SERVICE
from splitnn.transport.channels import MAX_MESSAGE_BYTES, create_channel
from splitnn.transport.client import WorkerClient
from splitnn.v1 import tensor_pb2, worker_pb2, worker_pb2_grpc
from splitnn.wire import codec
from splitnn.wire.ops import Op, OpKind
from tests.conftest import start_worker
from tests.helpers import SEG0, SEG1, assert_unchanged, pending, reference_pair, snapshot
from tests.helpers import export as export_from
from tests.helpers import refused as refused_with

Code = grpc.StatusCode
RUN = "run-rpc"
SGD = {"name": "sgd", "lr": 0.2}
ROWS = list(range(16))
TIMEOUT = 30


def export(stub, index, run_id=RUN) -> dict[str, torch.Tensor]:
    return export_from(stub, index, run_id)


def refused(code: Code, call) -> grpc.RpcError:
    """Run `call` (consuming any response stream); assert it fails with `code`."""
    return refused_with(call, code)


# ---- helpers --------------------------------------------------------------------------


def load_messages(index, layers, state=None, run_id=RUN, replace=False, optimizer=SGD):
    spec = worker_pb2.SegmentSpec(
        index=index,
        layers=[layer_specs.layer_to_proto(layer) for layer in layers],
        optimizer=optim_specs.to_proto(optim_specs.normalize(optimizer)),
    )
    messages = [worker_pb2.LoadSegmentRequest(run_id=run_id, spec=spec, replace=replace)]
    if state is not None:
        for i, chunk in enumerate(codec.blob_chunks(codec.encode_state(state), 64)):
            if i == 0:
                messages[0].state.CopyFrom(chunk)
            else:
                messages.append(worker_pb2.LoadSegmentRequest(state=chunk))
    return messages


def load(stub, index, layers, state=None, **kwargs) -> worker_pb2.LoadSegmentResponse:
    return stub.LoadSegment(iter(load_messages(index, layers, state, **kwargs)), timeout=TIMEOUT)


def status(stub) -> worker_pb2.GetStatusResponse:
    return stub.GetStatus(worker_pb2.GetStatusRequest(), timeout=TIMEOUT)


def tensor_messages(op, field: str, tensor, chunk_bytes=codec.DEFAULT_CHUNK_BYTES) -> list:
    """`op` carrying the first chunk of `tensor`, then one bare message per further chunk."""
    messages = []
    for i, chunk in enumerate(codec.encode(tensor, chunk_bytes)):
        part = op if i == 0 else type(op)()
        getattr(part, field).CopyFrom(chunk)
        messages.append(part)
    return messages


def forward_op(segments, batch_id=1, **fields) -> worker_pb2.ForwardRequest:
    return worker_pb2.ForwardRequest(run_id=RUN, segments=segments, batch_id=batch_id, **fields)


def collect(responses, field: str):
    """All response messages, and the tensor their `field` chunks assemble to (or None)."""
    messages, tensor, assembler = list(responses), None, codec.TensorAssembler()
    for message in messages:
        if message.HasField(field):
            tensor = assembler.add(getattr(message, field))
    return messages, tensor


def forward(stub, op, tensor=None, field="output", chunk_bytes=codec.DEFAULT_CHUNK_BYTES):
    messages = [op] if tensor is None else tensor_messages(op, "input", tensor, chunk_bytes)
    return collect(stub.Forward(iter(messages), timeout=TIMEOUT), field)


def backward(stub, segments, batch_id, grad, step=True):
    op = worker_pb2.BackwardRequest(run_id=RUN, segments=segments, batch_id=batch_id, step=step)
    messages = tensor_messages(op, "output_grad", grad)
    return collect(stub.Backward(iter(messages), timeout=TIMEOUT), "input_grad")


def sse_loss(indices=ROWS) -> worker_pb2.LossSpec:
    return worker_pb2.LossSpec(
        kind=worker_pb2.LOSS_KIND_SUM_SQUARED_ERROR, dataset=TOY_NAME, indices=indices
    )


def assert_serving(stub) -> None:
    """A good training step through both segments still works, and leaves nothing pending."""
    x, _ = builtin(TOY_NAME).take(ROWS)
    _, hidden = forward(stub, forward_op([0], batch_id=999), x)
    _, grad = forward(
        stub, forward_op([1], batch_id=999, loss=sse_loss(), step=True), hidden, field="input_grad"
    )
    backward(stub, [0], 999, grad)
    assert set(pending(stub).values()) == {0}


@pytest.fixture
def loaded(worker):
    """The worker with segments 0 and 1 of the seeded pair loaded under RUN."""
    reference = reference_pair()
    for index, (layers, module) in enumerate(zip([SEG0, SEG1], reference, strict=True)):
        state = {f"model.{k}": v for k, v in module.state_dict().items()}
        load(worker.stub, index, layers, state)
    return worker


# ---- the happy path is exact ----------------------------------------------------------


def test_training_step_over_grpc_equals_plain_pytorch(loaded):
    reference = reference_pair()
    x, y = builtin(TOY_NAME).take(ROWS)
    ref_loss = ((reference(x) - y) ** 2).sum()
    ref_loss.backward()
    torch.optim.SGD(reference.parameters(), lr=0.2).step()

    _, hidden = forward(loaded.stub, forward_op([0]), x)
    heads, grad = forward(
        loaded.stub, forward_op([1], loss=sse_loss(), step=True), hidden, field="input_grad"
    )
    _, input_grad = backward(loaded.stub, [0], 1, grad)

    assert heads[0].loss.loss == ref_loss.item()
    assert input_grad.shape == (16, 4)
    for index in (0, 1):
        state = export(loaded.stub, index)
        for name, value in reference[index].state_dict().items():
            assert torch.equal(state[f"model.{name}"], value), (index, name)


def test_status_lists_segments_datasets_and_pending(loaded):
    loaded_before = status(loaded.stub)
    forward(loaded.stub, forward_op([0]), torch.zeros(2, 4))

    after = status(loaded.stub)

    assert after.name == "alice"
    assert [(d.name, d.rows, list(d.x_shape)) for d in after.datasets] == [(TOY_NAME, 16, [4])]
    assert [(s.index, s.parameter_count) for s in loaded_before.segments] == [(0, 15), (1, 4)]
    assert pending(loaded.stub) == {(RUN, 0): 1, (RUN, 1): 0}


# ---- refusals -------------------------------------------------------------------------


def test_malformed_tensor_is_invalid_argument(loaded):
    before = snapshot(loaded.stub)
    chunk = tensor_pb2.TensorChunk(
        dtype=tensor_pb2.DTYPE_FLOAT32, shape=[16, 4], index=0, count=1, data=b"\0" * 10
    )

    error = refused(
        Code.INVALID_ARGUMENT, lambda: loaded.stub.Forward(iter([forward_op([0], input=chunk)]))
    )

    assert "needs 256 bytes" in error.details()
    assert_unchanged(loaded.stub, before)
    assert_serving(loaded.stub)


def test_tensor_declared_over_the_cap_is_resource_exhausted(loaded):
    before = snapshot(loaded.stub)
    chunk = tensor_pb2.TensorChunk(
        dtype=tensor_pb2.DTYPE_FLOAT32, shape=[1 << 20, 1 << 20], index=0, count=2, data=b"\0" * 8
    )

    refused(
        Code.RESOURCE_EXHAUSTED,
        lambda: loaded.stub.Forward(iter([forward_op([0], input=chunk)])),
    )

    assert_unchanged(loaded.stub, before)
    assert_serving(loaded.stub)


def test_message_over_the_grpc_limit_is_refused_by_grpc(loaded):
    before = snapshot(loaded.stub)
    # A sender without a send limit: the worker's own receive limit must refuse it.
    channel = grpc.insecure_channel(loaded.address, options=[("grpc.max_send_message_length", -1)])
    stub = worker_pb2_grpc.WorkerServiceStub(channel)
    big = torch.zeros((MAX_MESSAGE_BYTES + (1 << 20)) // 4)
    chunk = codec.encode(big, chunk_bytes=len(codec.tensor_bytes(big)))[0]

    try:
        error = refused(
            Code.RESOURCE_EXHAUSTED, lambda: stub.Forward(iter([forward_op([0], input=chunk)]))
        )
    finally:
        channel.close()

    assert "larger than max" in error.details()
    assert_unchanged(loaded.stub, before)
    assert_serving(loaded.stub)


def test_message_over_the_grpc_limit_is_not_sent_by_the_project_channel(loaded):
    channel = create_channel(loaded.address)
    stub = worker_pb2_grpc.WorkerServiceStub(channel)
    big = torch.zeros((MAX_MESSAGE_BYTES + (1 << 20)) // 4)
    chunk = codec.encode(big, chunk_bytes=len(codec.tensor_bytes(big)))[0]

    try:
        refused(Code.RESOURCE_EXHAUSTED, lambda: stub.Forward(iter([forward_op([0], input=chunk)])))
    finally:
        channel.close()

    assert set(pending(loaded.stub).values()) == {0}


@pytest.mark.parametrize(
    "x",
    [torch.zeros(16, 5), torch.zeros(16, 2, 3), torch.zeros(4)],
    ids=["width", "rank", "4-rows-for-16-labels"],
)
def test_wrong_input_shape_is_invalid_argument(loaded, x):
    before = snapshot(loaded.stub)

    refused(
        Code.INVALID_ARGUMENT,
        lambda: forward(loaded.stub, forward_op([0, 1], loss=sse_loss(), step=True), x),
    )

    assert_unchanged(loaded.stub, before)
    assert_serving(loaded.stub)


def test_wrong_input_dtype_is_invalid_argument(loaded):
    before = snapshot(loaded.stub)

    error = refused(
        Code.INVALID_ARGUMENT,
        lambda: forward(loaded.stub, forward_op([0]), torch.zeros(16, 4, dtype=torch.float64)),
    )

    assert "dtype" in error.details()
    assert_unchanged(loaded.stub, before)
    assert_serving(loaded.stub)


@pytest.mark.parametrize(
    "run_id,segments", [(RUN, [7]), ("no-such-run", [0])], ids=["segment", "run"]
)
def test_unknown_segment_or_run_is_not_found_on_forward(loaded, run_id, segments):
    before = snapshot(loaded.stub)
    op = worker_pb2.ForwardRequest(run_id=run_id, segments=segments, batch_id=1)

    refused(Code.NOT_FOUND, lambda: forward(loaded.stub, op, torch.zeros(2, 4)))

    assert_unchanged(loaded.stub, before)
    assert_serving(loaded.stub)


@pytest.mark.parametrize(
    "call",
    [
        lambda s: s.ExportSegment(worker_pb2.ExportSegmentRequest(run_id=RUN, index=7)),
        lambda s: s.DropSegment(worker_pb2.DropSegmentRequest(run_id="nope", index=0)),
        lambda s: s.Step(worker_pb2.StepRequest(run_id=RUN, segments=[7])),
        lambda s: backward(s, [7], 1, torch.zeros(2, 3)),
    ],
    ids=["export", "drop", "step", "backward"],
)
def test_unknown_segment_is_not_found_on_every_rpc(loaded, call):
    before = snapshot(loaded.stub)

    refused(Code.NOT_FOUND, lambda: call(loaded.stub))

    assert_unchanged(loaded.stub, before)
    assert_serving(loaded.stub)


def test_non_consecutive_segments_are_invalid_argument(loaded):
    refused(
        Code.INVALID_ARGUMENT,
        lambda: forward(loaded.stub, forward_op([1, 0]), torch.zeros(2, 4)),
    )

    assert_serving(loaded.stub)


def test_backward_without_forward_is_failed_precondition(loaded):
    before = snapshot(loaded.stub)

    refused(Code.FAILED_PRECONDITION, lambda: backward(loaded.stub, [0], 5, torch.zeros(2, 3)))

    assert_unchanged(loaded.stub, before)
    assert_serving(loaded.stub)


def test_wrong_gradient_shape_is_invalid_argument_and_batch_stays_pending(loaded):
    forward(loaded.stub, forward_op([0], batch_id=4), torch.zeros(2, 4))
    before = snapshot(loaded.stub)

    refused(Code.INVALID_ARGUMENT, lambda: backward(loaded.stub, [0], 4, torch.zeros(3, 3)))

    assert_unchanged(loaded.stub, before)
    _, grad = backward(loaded.stub, [0], 4, torch.zeros(2, 3))
    assert grad.shape == (2, 4)
    assert_serving(loaded.stub)


def test_nan_gradient_is_failed_precondition(loaded):
    forward(loaded.stub, forward_op([0], batch_id=4), torch.zeros(2, 4))
    before = snapshot(loaded.stub)

    refused(
        Code.FAILED_PRECONDITION,
        lambda: backward(loaded.stub, [0], 4, torch.full((2, 3), float("nan"))),
    )

    assert_unchanged(loaded.stub, before)


def test_backward_without_gradient_is_invalid_argument(loaded):
    op = worker_pb2.BackwardRequest(run_id=RUN, segments=[0], batch_id=1)

    refused(Code.INVALID_ARGUMENT, lambda: loaded.stub.Backward(iter([op])))

    assert_serving(loaded.stub)


def test_unknown_loss_kind_is_invalid_argument(loaded):
    before = snapshot(loaded.stub)
    op = forward_op([1], loss=worker_pb2.LossSpec(kind=42, dataset=TOY_NAME, indices=ROWS))

    refused(Code.INVALID_ARGUMENT, lambda: forward(loaded.stub, op, torch.zeros(16, 3)))

    assert_unchanged(loaded.stub, before)
    assert_serving(loaded.stub)


def test_unknown_dataset_is_not_found(loaded):
    before = snapshot(loaded.stub)
    op = forward_op([0], data=worker_pb2.DataSource(dataset="mnist", indices=[0]))

    refused(Code.NOT_FOUND, lambda: forward(loaded.stub, op))

    assert_unchanged(loaded.stub, before)
    assert_serving(loaded.stub)


def test_row_index_out_of_range_is_invalid_argument(loaded):
    before = snapshot(loaded.stub)
    op = forward_op([0], data=worker_pb2.DataSource(dataset=TOY_NAME, indices=[0, 16]))

    refused(Code.INVALID_ARGUMENT, lambda: forward(loaded.stub, op))

    assert_unchanged(loaded.stub, before)
    assert_serving(loaded.stub)


def test_too_many_pending_batches_is_resource_exhausted():
    from splitnn.services.segment_host import Limits

    running, stop = start_worker(
        limits=Limits(max_pending_batches=1, run_share=1, identity_share=1)
    )
    try:
        load(running.stub, 0, SEG0)
        forward(running.stub, forward_op([0], batch_id=1), torch.zeros(2, 4))

        refused(
            Code.RESOURCE_EXHAUSTED,
            lambda: forward(running.stub, forward_op([0], batch_id=2), torch.zeros(2, 4)),
        )

        assert pending(running.stub) == {(RUN, 0): 1}
    finally:
        stop()


# ---- LoadSegment refusals ----------------------------------------------------------


def test_unknown_layer_type_is_invalid_argument(loaded):
    before = snapshot(loaded.stub)

    error = refused(Code.INVALID_ARGUMENT, lambda: load(loaded.stub, 2, [{"type": "os.system"}]))

    assert "unknown layer type" in error.details()
    assert_unchanged(loaded.stub, before)
    assert_serving(loaded.stub)


def test_duplicate_load_is_already_exists(loaded):
    before = snapshot(loaded.stub)

    refused(Code.ALREADY_EXISTS, lambda: load(loaded.stub, 0, SEG0))

    assert_unchanged(loaded.stub, before)
    assert_serving(loaded.stub)


def test_replace_load_is_accepted(loaded):
    response = load(loaded.stub, 0, SEG0, replace=True)

    assert response.index == 0 and response.parameter_count == 15


def test_load_with_mismatched_state_is_invalid_argument(loaded):
    before = snapshot(loaded.stub)
    state = {"model.0.weight": torch.zeros(3, 5), "model.0.bias": torch.zeros(3)}

    refused(Code.INVALID_ARGUMENT, lambda: load(loaded.stub, 2, SEG0, state))

    assert_unchanged(loaded.stub, before)


def test_load_with_garbage_state_blob_is_invalid_argument(loaded):
    before = snapshot(loaded.stub)
    messages = load_messages(2, SEG0)
    messages[0].state.CopyFrom(tensor_pb2.BlobChunk(index=0, count=1, data=b"not safetensors"))

    refused(Code.INVALID_ARGUMENT, lambda: loaded.stub.LoadSegment(iter(messages)))

    assert_unchanged(loaded.stub, before)


def test_load_with_state_chunks_out_of_order_is_invalid_argument(loaded):
    before = snapshot(loaded.stub)
    state = {f"model.{k}": v for k, v in reference_pair()[0].state_dict().items()}
    messages = load_messages(2, SEG0, state)
    assert len(messages) > 2
    messages[1], messages[2] = messages[2], messages[1]

    refused(Code.INVALID_ARGUMENT, lambda: loaded.stub.LoadSegment(iter(messages)))

    assert_unchanged(loaded.stub, before)


def test_load_without_spec_is_invalid_argument(loaded):
    refused(
        Code.INVALID_ARGUMENT,
        lambda: loaded.stub.LoadSegment(iter([worker_pb2.LoadSegmentRequest(run_id=RUN)])),
    )

    assert_serving(loaded.stub)


def test_empty_load_stream_is_invalid_argument(loaded):
    refused(Code.INVALID_ARGUMENT, lambda: loaded.stub.LoadSegment(iter([])))

    assert_serving(loaded.stub)


# ---- the Exchange stream ---------------------------------------------------------------


def exchange_forward_messages(op, tensor, chunk_bytes) -> list:
    return [
        worker_pb2.ExchangeRequest(forward=part)
        for part in tensor_messages(op, "input", tensor, chunk_bytes)
    ]


def test_exchange_chunks_out_of_order_are_invalid_argument(loaded):
    before = snapshot(loaded.stub)
    messages = exchange_forward_messages(forward_op([0]), torch.zeros(16, 4), chunk_bytes=64)
    messages[1], messages[2] = messages[2], messages[1]

    error = refused(Code.INVALID_ARGUMENT, lambda: loaded.stub.Exchange(iter(messages)))

    assert "chunk" in error.details()
    assert_unchanged(loaded.stub, before)
    assert_serving(loaded.stub)


def test_exchange_stream_ending_mid_tensor_is_invalid_argument(loaded):
    before = snapshot(loaded.stub)
    messages = exchange_forward_messages(forward_op([0]), torch.zeros(16, 4), chunk_bytes=64)

    refused(Code.INVALID_ARGUMENT, lambda: loaded.stub.Exchange(iter(messages[:-1])))

    assert_unchanged(loaded.stub, before)
    assert_serving(loaded.stub)


def test_exchange_new_op_before_last_chunk_is_invalid_argument(loaded):
    before = snapshot(loaded.stub)
    messages = exchange_forward_messages(forward_op([0]), torch.zeros(16, 4), chunk_bytes=64)
    step = worker_pb2.ExchangeRequest(step=worker_pb2.StepRequest(run_id=RUN, segments=[0]))

    refused(Code.INVALID_ARGUMENT, lambda: loaded.stub.Exchange(iter([messages[0], step])))

    assert_unchanged(loaded.stub, before)
    assert_serving(loaded.stub)


def test_exchange_message_without_op_is_invalid_argument(loaded):
    refused(
        Code.INVALID_ARGUMENT,
        lambda: loaded.stub.Exchange(iter([worker_pb2.ExchangeRequest()])),
    )

    assert_serving(loaded.stub)


def test_exchange_answers_earlier_ops_before_refusing_a_bad_one(loaded):
    good = exchange_forward_messages(forward_op([0], batch_id=1), torch.zeros(2, 4), 1 << 20)
    bad = exchange_forward_messages(forward_op([0], batch_id=2), torch.zeros(2, 5), 1 << 20)
    responses = loaded.stub.Exchange(iter(good + bad), timeout=TIMEOUT)

    first = next(responses)
    with pytest.raises(grpc.RpcError) as info:
        next(responses)

    assert first.forward.batch_id == 1 and list(first.forward.output.shape) == [2, 3]
    assert info.value.code() == Code.INVALID_ARGUMENT
    assert pending(loaded.stub) == {(RUN, 0): 1, (RUN, 1): 0}


def test_worker_client_recovers_after_a_refused_exchange_op(loaded):
    client = WorkerClient("alice", loaded.address, timeout=TIMEOUT)
    try:
        with pytest.raises(WorkerError) as info:
            client.call(Op(OpKind.FORWARD, forward_op([0]), torch.zeros(2, 5)))
        reply = client.call(Op(OpKind.FORWARD, forward_op([0], batch_id=2), torch.zeros(2, 4)))
    finally:
        client.close()

    assert info.value.code == Code.INVALID_ARGUMENT
    assert reply.tensor.shape == (2, 3)


# ---- big tensors travel in chunks ------------------------------------------------------

BIG_SHAPE = (16384, 1024)  # 64 MiB of float32: 64 chunks of 1 MiB, 4x the message limit


@pytest.fixture
def identity_worker(worker):
    load(worker.stub, 0, [{"type": "Identity"}])
    return worker


def test_big_tensor_through_forward_rpc_comes_back_equal(identity_worker):
    big = torch.randn(BIG_SHAPE)
    op = forward_op([0], mode=worker_pb2.FORWARD_MODE_EVAL)

    responses, out = forward(identity_worker.stub, op, big)

    assert len(responses) == 64
    assert torch.equal(out, big)
    assert pending(identity_worker.stub) == {(RUN, 0): 0}


def test_big_tensor_through_exchange_with_worker_client_comes_back_equal(identity_worker):
    big, grad = torch.randn(BIG_SHAPE), torch.randn(BIG_SHAPE)
    client = WorkerClient("alice", identity_worker.address, timeout=TIMEOUT)
    try:
        out = client.call(Op(OpKind.FORWARD, forward_op([0], batch_id=1), big))
        back = client.call(
            Op(
                OpKind.BACKWARD,
                worker_pb2.BackwardRequest(run_id=RUN, segments=[0], batch_id=1, step=True),
                grad,
            )
        )
    finally:
        client.close()

    assert torch.equal(out.tensor, big)
    assert torch.equal(back.tensor, grad)
    assert client.bytes_sent > 2 * big.numel() * 4
    assert pending(identity_worker.stub) == {(RUN, 0): 0}


# ---- bytes that are not a message ------------------------------------------------------

# Field 1, length-delimited, claims 5 bytes and carries 2: no protobuf parser accepts it.
_NOT_A_MESSAGE = b"\x0a\x05ab"


@pytest.mark.parametrize("method", [m.name for m in SERVICE.methods])
def test_bytes_that_are_not_a_message_are_invalid_argument(loaded, method):
    """Every method answers unparseable bytes with INVALID_ARGUMENT (gRPC's own
    registration says INTERNAL), changes nothing, and the worker keeps serving."""
    before = snapshot(loaded.stub)
    descriptor = SERVICE.methods_by_name[method]
    kind = (
        ("stream" if descriptor.client_streaming else "unary")
        + "_"
        + ("stream" if descriptor.server_streaming else "unary")
    )
    with grpc.insecure_channel(loaded.address) as channel:
        call = getattr(channel, kind)(f"/{SERVICE.full_name}/{method}")
        request = iter([_NOT_A_MESSAGE]) if descriptor.client_streaming else _NOT_A_MESSAGE
        with pytest.raises(grpc.RpcError) as info:
            answer = call(request, timeout=10)
            if descriptor.server_streaming:
                list(answer)
    assert info.value.code() == Code.INVALID_ARGUMENT, info.value.details()
    assert "not a valid splitnn.v1." in info.value.details()
    assert_unchanged(loaded.stub, before)
    assert_serving(loaded.stub)
