"""The op stream: how a training op and its reply become wire messages and back.

An op is one of three kinds (`OpKind`): a forward through consecutive segments,
a backward through them, or an optimizer step. Each travels as a head message
(ForwardRequest, BackwardRequest, StepRequest) and at most one tensor, which is
cut into chunks: the first message carries the head and the first chunk, every
further message the next chunk. A reply is the same: a head (ForwardResponse,
BackwardResponse, StepResponse) and at most one tensor. On the Exchange stream
each message is wrapped in an ExchangeRequest / ExchangeResponse under its kind.
Every `x_to_proto` here sits beside its `x_from_proto`; nothing else in splitnn
frames ops.

Several ops in flight per run
----------------------------
A run may have many ops outstanding at once (micro-batches flowing through a
pipeline, several owners driving at once). The rules that make that safe:

1. An op is named by its `OpKey`: (run, kind, segments, batch id, micro-batch).
   Batch id 0 means "no id": such an op is never replayed.
2. Per-batch state on a worker (the input and output a Backward needs, the work a
   Backward put off) is keyed by (run, segments, batch id, micro-batch), so ops of
   different batches or micro-batches never overwrite each other's state.
3. A retried op carries the same OpKey as the first attempt; a worker answers it
   from memory instead of applying it twice, for any of the recent ops, not only
   the latest (services.replay keeps a bounded window per run and segments).
4. On one stream, answers come in the order the ops were sent. Ops on different
   streams are not ordered with each other; a sender that needs an order (a
   Backward after its Forward on another host) waits for the answer first.
5. A Step applies the gradients accumulated over every micro-batch of a batch: it
   is refused while any of them still awaits its Backward through those segments.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

import torch

from splitnn.errors import InvalidArgument
from splitnn.v1 import worker_pb2
from splitnn.wire import codec, lift


class OpKind(enum.Enum):
    """The three training ops; the value is the op's field name in ExchangeRequest."""

    FORWARD = "forward"
    BACKWARD = "backward"
    STEP = "step"


# Each kind's request and response messages, the field its request tensor travels
# in, and the fields its reply tensor may travel in.
REQUEST_TYPES = {
    OpKind.FORWARD: worker_pb2.ForwardRequest,
    OpKind.BACKWARD: worker_pb2.BackwardRequest,
    OpKind.STEP: worker_pb2.StepRequest,
}
RESPONSE_TYPES = {
    OpKind.FORWARD: worker_pb2.ForwardResponse,
    OpKind.BACKWARD: worker_pb2.BackwardResponse,
    OpKind.STEP: worker_pb2.StepResponse,
}
_REQUEST_TENSOR = {OpKind.FORWARD: "input", OpKind.BACKWARD: "output_grad", OpKind.STEP: None}
_REPLY_TENSORS = {
    OpKind.FORWARD: ("input_grad", "output"),
    OpKind.BACKWARD: ("input_grad",),
    OpKind.STEP: (),
}
_KIND_OF_REQUEST = {t: k for k, t in REQUEST_TYPES.items()}


# The head messages of an op and of its reply.
OpHead = worker_pb2.ForwardRequest | worker_pb2.BackwardRequest | worker_pb2.StepRequest
ReplyHead = worker_pb2.ForwardResponse | worker_pb2.BackwardResponse | worker_pb2.StepResponse


class OpKey(NamedTuple):
    """What names an op among those in flight (rule 1 above)."""

    run_id: str
    kind: OpKind
    segments: tuple[int, ...]
    batch_id: int
    micro_batch: int


@dataclass(slots=True)
class Op:
    """One op to send: its kind, its head message and the tensor it carries, if any.
    (Not frozen: a frozen dataclass costs a microsecond more per op to build.)"""

    kind: OpKind
    head: OpHead
    tensor: torch.Tensor | None = None

    @property
    def key(self) -> OpKey:
        return op_key(self.kind, self.head)


@dataclass
class Reply:
    """One answered op: the head message and the tensor it carried, if any."""

    message: ReplyHead
    tensor: torch.Tensor | None


@dataclass(frozen=True)
class Answer:
    """A worker's answer to an op before framing: head, tensor, and the head's field
    the tensor goes in ("" when there is no tensor)."""

    head: ReplyHead
    tensor: torch.Tensor | None = None
    field: str = ""


def kind_of(head: OpHead) -> OpKind:
    """The kind of an op's head message."""
    return _KIND_OF_REQUEST[type(head)]


def op_key(kind: OpKind, head: OpHead) -> OpKey:
    """The OpKey of an op's head message."""
    return OpKey(head.run_id, kind, tuple(head.segments), head.batch_id, head.micro_batch)


# ---- ops: sender -> worker ---------------------------------------------------------


def op_to_proto(op: Op, chunk_bytes: int, framed: bool = False) -> list:
    """The ExchangeRequests of one op: the head with the tensor's first chunk, then one
    message per further chunk. Filled in place: the tensor's bytes are copied once.
    `framed`: a chunk's bytes stay beside its message (lift.Framed), to be written
    after it by lift.Framer, which copies them once on the way out."""
    field = _REQUEST_TENSOR[op.kind]
    if op.tensor is not None and field is None:
        raise InvalidArgument(f"a {op.kind.value} op carries no tensor")
    wire = getattr(op.head, "wire", 0)  # how this op's tensors travel (Step has none)
    messages: list = []
    if op.tensor is None:
        message = worker_pb2.ExchangeRequest()
        getattr(message, op.kind.value).CopyFrom(op.head)
        return [message]
    assert field is not None
    for i, fill in enumerate(codec.chunk_fillers(op.tensor, chunk_bytes, wire)):
        message = worker_pb2.ExchangeRequest()
        part = getattr(message, op.kind.value)
        if i == 0:
            part.CopyFrom(op.head)
        if framed:
            chunk = getattr(part, field)
            messages.append(lift.keep_beside(message, chunk, fill(chunk, data=False)))
        else:
            fill(getattr(part, field))  # the chunk's bytes go straight into the message
            messages.append(message)
    return messages


def unwrap_exchange(item):
    """The op head inside a received ExchangeRequest (a Lifted one: the head, lifted)."""
    message, data = lift.split(item)
    which = message.WhichOneof("op")
    if which is None:
        raise InvalidArgument("Exchange message carries no op")
    head = getattr(message, which)
    return head if data is None else lift.Lifted(head, data, item.size)


def ops_from_proto(heads: Iterable, max_bytes: int, kind: OpKind | None = None) -> Iterator[Op]:
    """Group a stream of op head messages into whole Ops, assembling chunked tensors.
    `heads` are ForwardRequests, BackwardRequests or StepRequests (unwrapped from an
    Exchange stream, or a Forward / Backward stream of one `kind`), each maybe Lifted
    (splitnn.wire.lift). A tensor cut into n chunks arrives as n messages of the same
    kind, the first with every field."""
    current: Op | None = None
    field, assembler = "", codec.TensorAssembler(max_bytes)
    for item in heads:
        head, data = lift.split(item)
        op_kind = kind or kind_of(head)
        if current is None:
            tensor_field = _REQUEST_TENSOR[op_kind]
            if tensor_field is None or not head.HasField(tensor_field):
                yield Op(op_kind, head)
                continue
            current, field = Op(op_kind, head), tensor_field
        elif op_kind is not current.kind or not head.HasField(field):
            raise InvalidArgument("a new op arrived before the previous tensor's last chunk")
        chunk = getattr(head, field)
        if data is None:  # not lifted: the head holds no tensor bytes either way
            data = chunk.data
            chunk.ClearField("data")
        tensor = assembler.add(chunk, data)
        if tensor is not None:
            yield Op(current.kind, current.head, tensor)
            current = None
    if current is not None:
        raise InvalidArgument("stream ended before the tensor's last chunk")


# ---- replies: worker -> sender -----------------------------------------------------


def reply_to_proto(
    kind: OpKind,
    answer: Answer,
    chunk_bytes: int,
    exchange: bool = True,
    wire: int = 0,
    framed: bool = False,
) -> Iterator:
    """Response messages for an answered op: the head, then the tensor in chunks; with
    `exchange`, each inside an ExchangeResponse under the op's kind. Built in place, so
    the head (which the replay cache may hold) is never modified and the tensor's bytes
    are copied once. `wire`: the op's WireFormat, which its answer travels in too;
    `framed`: as op_to_proto's."""
    head, tensor = answer.head, answer.tensor
    fillers: list = [None] if tensor is None else codec.chunk_fillers(tensor, chunk_bytes, wire)
    for i, fill in enumerate(fillers):
        message: worker_pb2.ExchangeResponse | ReplyHead
        if exchange:
            message = worker_pb2.ExchangeResponse()
            part = getattr(message, kind.value)
        else:
            message = part = RESPONSE_TYPES[kind]()
        if i == 0:
            part.CopyFrom(head)
        else:
            part.batch_id = head.batch_id
        if fill is None:
            yield message
        elif framed:
            chunk = getattr(part, answer.field)
            yield lift.keep_beside(message, chunk, fill(chunk, data=False))
        else:
            fill(getattr(part, answer.field))
            yield message


class ReplyAssembler:
    """reply_from_proto: turns the response messages answering one op into its Reply."""

    def __init__(self, kind: OpKind):
        self.kind = kind
        self._head: ReplyHead | None = None
        self._tensor = codec.TensorAssembler()

    def add(self, item) -> Reply | None:
        """Take the next response message (an ExchangeResponse or a bare response
        head, maybe Lifted); the Reply once the op's answer is whole."""
        message, data = lift.split(item)
        if isinstance(message, worker_pb2.ExchangeResponse):
            which = message.WhichOneof("result")
            if which != self.kind.value:
                raise InvalidArgument(f"a {which} answer came for a {self.kind.value} op")
            message = getattr(message, which)
        if self._head is None:
            self._head = message
        field = next((f for f in _REPLY_TENSORS[self.kind] if message.HasField(f)), None)
        if field is None:
            return Reply(self._head, None)
        tensor = self._tensor.add(getattr(message, field), data)
        return None if tensor is None else Reply(self._head, tensor)
