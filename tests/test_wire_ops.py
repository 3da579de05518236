"""splitnn.wire.ops: every op and reply to messages and back, for each kind, whole and
in chunks; what does not fit the framing is refused."""

from __future__ import annotations

import pytest
import torch

from splitnn.errors import InvalidArgument
from splitnn.v1 import worker_pb2
from splitnn.wire.ops import (
    Answer,
    Op,
    OpKind,
    ReplyAssembler,
    kind_of,
    op_key,
    op_to_proto,
    ops_from_proto,
    reply_to_proto,
    unwrap_exchange,
)

CHUNK = 64  # bytes: a 10x4 float32 tensor takes 3 chunks


def heads() -> dict[OpKind, object]:
    return {
        OpKind.FORWARD: worker_pb2.ForwardRequest(
            run_id="r", segments=[1, 2], batch_id=7, micro_batch=2, want_output=True
        ),
        OpKind.BACKWARD: worker_pb2.BackwardRequest(
            run_id="r", segments=[1, 2], batch_id=7, micro_batch=2, step=True
        ),
        OpKind.STEP: worker_pb2.StepRequest(run_id="r", segments=[1, 2], batch_id=7),
    }


def op_of(kind: OpKind) -> Op:
    tensor = None if kind is OpKind.STEP else torch.arange(40.0).reshape(10, 4)
    return Op(kind, heads()[kind], tensor)


def decoded(messages) -> list[Op]:
    return list(ops_from_proto((unwrap_exchange(m) for m in messages), 1 << 20))


@pytest.mark.parametrize("kind", list(OpKind))
def test_op_round_trips_through_exchange_messages(kind):
    op = op_of(kind)

    messages = op_to_proto(op, CHUNK)
    (back,) = decoded(messages)

    assert len(messages) == (1 if op.tensor is None else 3)
    assert back.kind is kind and back.key == op.key
    assert back.head.run_id == "r" and list(back.head.segments) == [1, 2]
    if op.tensor is None:
        assert back.tensor is None
    else:
        assert torch.equal(back.tensor, op.tensor)


def test_ops_of_every_kind_interleave_on_one_stream():
    sent = [op_of(OpKind.FORWARD), op_of(OpKind.STEP), op_of(OpKind.BACKWARD)]

    back = decoded([m for op in sent for m in op_to_proto(op, CHUNK)])

    assert [op.kind for op in back] == [OpKind.FORWARD, OpKind.STEP, OpKind.BACKWARD]


def test_a_new_op_before_the_last_chunk_is_refused():
    forward = op_to_proto(op_of(OpKind.FORWARD), CHUNK)
    step = op_to_proto(op_of(OpKind.STEP), CHUNK)

    with pytest.raises(InvalidArgument, match="last chunk"):
        decoded([forward[0], step[0]])
    with pytest.raises(InvalidArgument, match="stream ended"):
        decoded(forward[:2])


def test_an_empty_exchange_message_is_refused():
    with pytest.raises(InvalidArgument, match="no op"):
        unwrap_exchange(worker_pb2.ExchangeRequest())


def test_a_step_carries_no_tensor():
    with pytest.raises(InvalidArgument):
        op_to_proto(Op(OpKind.STEP, heads()[OpKind.STEP], torch.zeros(1)), CHUNK)


@pytest.mark.parametrize("exchange", [True, False], ids=["exchange", "bare"])
@pytest.mark.parametrize("kind", list(OpKind))
def test_reply_round_trips(kind, exchange):
    head = {
        OpKind.FORWARD: worker_pb2.ForwardResponse(batch_id=7, micro_batch=2),
        OpKind.BACKWARD: worker_pb2.BackwardResponse(batch_id=7, micro_batch=2),
        OpKind.STEP: worker_pb2.StepResponse(batch_id=7),
    }[kind]
    tensor = None if kind is OpKind.STEP else torch.randn(10, 4)
    answer = Answer(head, tensor, "" if tensor is None else "input_grad")

    messages = list(reply_to_proto(kind, answer, CHUNK, exchange))
    assembler, replies = ReplyAssembler(kind), []
    for message in messages:
        reply = assembler.add(message)
        if reply is not None:
            replies.append(reply)

    assert len(replies) == 1 and replies[0].message.batch_id == 7
    assert (replies[0].tensor is None) == (tensor is None)
    if tensor is not None:
        assert torch.equal(replies[0].tensor, tensor)
    if kind is not OpKind.STEP:  # the head (the replay cache keeps it) is not modified
        assert not head.HasField("input_grad")


def test_an_answer_of_another_kind_is_refused():
    answer = Answer(worker_pb2.StepResponse(batch_id=1))
    (message,) = reply_to_proto(OpKind.STEP, answer, CHUNK)

    with pytest.raises(InvalidArgument, match="step answer came for a forward op"):
        ReplyAssembler(OpKind.FORWARD).add(message)


def test_kind_and_key_of_heads():
    for kind, head in heads().items():
        assert kind_of(head) is kind
        assert op_key(kind, head) == ("r", kind, (1, 2), 7, head.micro_batch)
