"""splitnn.wire.lift: a received message parsed with its tensor chunk's bytes lifted
out gives exactly what protobuf's parse gives, or is left to protobuf's parse."""

from __future__ import annotations

import pytest
import torch
from google.protobuf.message import DecodeError
from hypothesis import given, settings
from hypothesis import strategies as st

from splitnn.v1 import worker_pb2
from splitnn.wire import codec, lift
from splitnn.wire.lift import Framed, Framer, Lifted, Parser
from splitnn.wire.ops import Answer, Op, OpKind, op_to_proto, reply_to_proto

REQUESTS = Parser(worker_pb2.ExchangeRequest)
RESPONSES = Parser(worker_pb2.ExchangeResponse)


@pytest.fixture(autouse=True)
def small_chunks_lifted_too(monkeypatch):
    """These tests use small messages: lift and frame them as large ones are."""
    monkeypatch.setattr(lift, "MIN_BYTES", 0)


def _restored(item, message_class):
    """The whole message a parse result stands for (data put back)."""
    if not isinstance(item, Lifted):
        return item
    whole = message_class()
    whole.CopyFrom(item.message)
    which = whole.WhichOneof("op" if message_class is worker_pb2.ExchangeRequest else "result")
    part = getattr(whole, which)
    (field,) = [
        f for f, _ in part.ListFields() if f.message_type and f.message_type.name == "TensorChunk"
    ]
    getattr(part, field.name).data = bytes(item.data)
    return whole


def _head():
    return worker_pb2.ForwardRequest(run_id="r", segments=[1, 2], batch_id=9, micro_batch=1)


def _request_messages(rows=300, chunk_bytes=4096):
    tensor = torch.arange(rows * 7, dtype=torch.float32).reshape(rows, 7)
    return op_to_proto(Op(OpKind.FORWARD, _head(), tensor), chunk_bytes), tensor


def test_every_chunk_is_lifted_and_restores_to_the_message_sent():
    messages, tensor = _request_messages()
    assert len(messages) > 1
    assembler = codec.TensorAssembler()
    for message in messages:
        item = REQUESTS(message.SerializeToString())
        assert isinstance(item, Lifted)
        assert item.message.forward.input.data == b""
        assert _restored(item, worker_pb2.ExchangeRequest) == message
        assert item.ByteSize() == message.ByteSize()
        out = assembler.add(item.message.forward.input, item.data)
    assert torch.equal(out, tensor)


def test_answers_are_lifted_too():
    head = worker_pb2.BackwardResponse(batch_id=3)
    tensor = torch.randn(64, 5)
    answer = Answer(head, tensor, "input_grad")
    for message in reply_to_proto(OpKind.BACKWARD, answer, 512, exchange=True):
        item = RESPONSES(message.SerializeToString())
        assert isinstance(item, Lifted)
        assert _restored(item, worker_pb2.ExchangeResponse) == message


def test_messages_without_one_plain_chunk_go_to_protobuf():
    step = worker_pb2.ExchangeRequest(step=worker_pb2.StepRequest(run_id="r", segments=[1]))
    assert REQUESTS(step.SerializeToString()) == step
    (first, *_), _ = _request_messages()
    raw = first.SerializeToString()
    # The forward given twice (protobuf merges the two): not lifted, parsed as protobuf does.
    twice = REQUESTS(raw + raw)
    assert not isinstance(twice, Lifted)
    assert twice == worker_pb2.ExchangeRequest.FromString(raw + raw)
    # Another member of the oneof after it: protobuf's last-one-wins decides, not us.
    both = raw + step.SerializeToString()
    assert REQUESTS(both) == worker_pb2.ExchangeRequest.FromString(both)
    assert REQUESTS(both).WhichOneof("op") == "step"
    with pytest.raises(DecodeError):
        REQUESTS(b"\x0a\xff\xff\xff\xff\x0f")  # a length past the end


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_damaged_bytes_parse_as_protobuf_parses_them_or_fail_as_it_does(data):
    messages, _ = _request_messages(rows=20, chunk_bytes=256)
    raw = bytearray(data.draw(st.sampled_from(messages)).SerializeToString())
    for _ in range(data.draw(st.integers(1, 4))):
        kind = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        at = data.draw(st.integers(0, max(0, len(raw) - 1)))
        if kind == "flip" and raw:
            raw[at] ^= data.draw(st.integers(1, 255))
        elif kind == "cut":
            del raw[at : at + data.draw(st.integers(1, 8))]
        else:
            raw[at:at] = data.draw(st.binary(min_size=1, max_size=6))
    raw = bytes(raw)
    try:
        expected = worker_pb2.ExchangeRequest.FromString(raw)
    except DecodeError:
        with pytest.raises(DecodeError):
            REQUESTS(raw)
        return
    assert _restored(REQUESTS(raw), worker_pb2.ExchangeRequest) == expected


def test_framed_requests_and_answers_serialize_to_the_plain_messages():
    messages, tensor = _request_messages()
    framed = op_to_proto(Op(OpKind.FORWARD, _head(), tensor), 4096, framed=True)
    frame = Framer(worker_pb2.ExchangeRequest)
    for plain, item in zip(messages, framed, strict=True):
        assert isinstance(item, Framed)
        raw = frame(item)
        assert worker_pb2.ExchangeRequest.FromString(raw) == plain
        assert abs(item.ByteSize() - len(raw)) <= 8
        assert isinstance(REQUESTS(raw), Lifted)
    answer = Answer(worker_pb2.ForwardResponse(batch_id=2), torch.randn(50, 9), "output")
    frame = Framer(worker_pb2.ForwardResponse)
    plain = list(reply_to_proto(OpKind.FORWARD, answer, 1024, exchange=False))
    framed = list(reply_to_proto(OpKind.FORWARD, answer, 1024, exchange=False, framed=True))
    for a, b in zip(plain, framed, strict=True):
        assert worker_pb2.ForwardResponse.FromString(frame(b)) == a


def test_small_tensors_travel_inside_their_messages(monkeypatch):
    monkeypatch.setattr(lift, "MIN_BYTES", 32 << 10)
    small = torch.zeros(10, 7)  # 280 bytes
    (item,) = op_to_proto(Op(OpKind.FORWARD, _head(), small), 1 << 20, framed=True)
    assert not isinstance(item, Framed) and len(item.forward.input.data) == 280
    assert not isinstance(REQUESTS(item.SerializeToString()), Lifted)
    large = op_to_proto(Op(OpKind.FORWARD, _head(), torch.zeros(4096, 8)), 1 << 20, framed=True)
    assert isinstance(large[0], Framed)
