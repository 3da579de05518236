"""Tensor bytes beside their messages, both ways: received ones not copied twice
more, sent ones not copied three times.

protobuf's parse copies a bytes field into the message, and reading the field
copies it again into a new bytes object: two copies of every tensor chunk that
arrives (a 16 MiB tensor: about 9 ms here) before the assembler copies it into
the tensor. `parse` instead finds the one TensorChunk inside the message (by the
field numbers of the schema, a few levels down), parses everything else from
a small copy without the chunk's `data`, and hands `data` over as a view of the
received bytes (`Lifted`). Whatever does not fit that shape exactly (no chunk,
a field of the path given twice, bytes that do not parse as wire format) is left
to protobuf's own parse, which also gives malformed input its usual error.

On the way out, a chunk's bytes copied into a message, serialized with it and
copied again by gRPC are three copies. `Framed` keeps them beside the message,
and `Framer` serializes the message without them and writes them into the
chunk's place: one join, then gRPC's own copy.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor

from splitnn.v1 import tensor_pb2

_CHUNK = tensor_pb2.TensorChunk.DESCRIPTOR
_DATA = _CHUNK.fields_by_name["data"].number
_LENGTH_DELIMITED = 2
_MAX_DEPTH = 4
# Below this many bytes, protobuf's copies cost less than walking the message in
# Python: small tensors (the seed job's) travel inside their messages as before.
# SPLITNN_LIFT_MIN_BYTES sets another threshold (bench.dataplane compares it off).
MIN_BYTES = int(os.environ.get("SPLITNN_LIFT_MIN_BYTES", 32 << 10))


@dataclass(slots=True)
class Lifted:
    """A received message whose one TensorChunk's `data` is `data`, not in it."""

    message: Any
    data: memoryview
    size: int  # bytes of the message as received

    def ByteSize(self) -> int:  # noqa: N802  (as a message's, for byte counts)
        return self.size


def _paths(descriptor: Descriptor, depth: int = 0) -> dict:
    """Field number -> (subtree, numbers of its oneof siblings) for every singular
    message field that leads to a TensorChunk; a TensorChunk field's subtree is None."""
    tree: dict = {}
    if depth >= _MAX_DEPTH:
        return tree
    for field in descriptor.fields:
        if field.type != FieldDescriptor.TYPE_MESSAGE or _repeated(field):
            continue
        siblings = frozenset(
            f.number for f in (field.containing_oneof.fields if field.containing_oneof else ())
        ) - {field.number}
        if field.message_type is _CHUNK:
            tree[field.number] = (None, siblings)
        else:
            below = _paths(field.message_type, depth + 1)  # type: ignore[arg-type]
            if below:
                tree[field.number] = (below, siblings)
    return tree


def _repeated(field: FieldDescriptor) -> bool:
    return bool(field.is_repeated)


def _varint(buf, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise ValueError("truncated varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _fields(buf, start: int, end: int):
    """(number, wire type, tag start, value start, value end) of each field."""
    pos = start
    while pos < end:
        tag_start = pos
        key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if wire == 0:
            _, pos = _varint(buf, pos, end)
            yield number, wire, tag_start, pos, pos
            continue
        if wire == 1:
            length = 8
        elif wire == 5:
            length = 4
        elif wire == _LENGTH_DELIMITED:
            length, pos = _varint(buf, pos, end)
        else:
            raise ValueError(f"wire type {wire}")
        if pos + length > end:
            raise ValueError("field runs past its message")
        yield number, wire, tag_start, pos, pos + length
        pos += length


def _strip(buf, start: int, end: int, tree: dict | None):
    """(this level's bytes without the chunk's data, (data start, data end)), or None
    where the message is not of the one shape handled here: then protobuf parses it.
    `tree` None: this level is the TensorChunk."""
    found, present = None, set()
    for number, wire, tag_start, value_start, value_end in _fields(buf, start, end):
        present.add(number)
        if (number == _DATA) if tree is None else (number in tree):
            if wire != _LENGTH_DELIMITED or found is not None:
                return None  # not a message there, or given twice (protobuf merges)
            found = (number, tag_start, value_start, value_end)
    if found is None:
        return None
    number, tag_start, value_start, value_end = found
    rest = bytes(buf[start:tag_start]) + bytes(buf[value_end:end])
    if tree is None:
        return rest, (value_start, value_end)
    subtree, siblings = tree[number]
    if siblings & present:
        return None  # another member of its oneof: which one wins is protobuf's rule
    inner = _strip(buf, value_start, value_end, subtree)
    if inner is None:
        return None
    small, data = inner
    tag = _encode_varint((number << 3) | _LENGTH_DELIMITED)
    return rest + tag + _encode_varint(len(small)) + small, data


class Parser:
    """Parses received `message_class` messages, lifting a TensorChunk's data out."""

    def __init__(self, message_class):
        self.message_class = message_class
        self.tree = _paths(message_class.DESCRIPTOR)

    def __call__(self, raw: bytes | memoryview):
        """A Lifted when the message carries one tensor chunk, else the plain message
        (and protobuf's DecodeError for bytes that are not one)."""
        lifted = None
        if self.tree and len(raw) >= MIN_BYTES:
            try:
                lifted = _strip(memoryview(raw), 0, len(raw), self.tree)
            except (ValueError, IndexError):
                lifted = None
        if lifted is None:
            return self.message_class.FromString(raw)
        small, (start, end) = lifted
        message = self.message_class.FromString(small)
        return Lifted(message, memoryview(raw)[start:end], len(raw))


def split(item) -> tuple[Any, memoryview | None]:
    """(message, lifted chunk data or None) of a received item."""
    if isinstance(item, Lifted):
        return item.message, item.data
    return item, None


@dataclass(slots=True)
class Framed:
    """A message to send whose one TensorChunk's bytes are `data`, not in it."""

    message: Any
    data: memoryview

    def ByteSize(self) -> int:  # noqa: N802  (as a message's, for byte counts)
        # The data, its tag and length, and a byte of growth per enclosing length.
        n = len(self.data)
        return self.message.ByteSize() + n + 1 + len(_encode_varint(n)) + _MAX_DEPTH


def _insert(buf, start: int, end: int, tree: dict | None, data) -> list | None:
    """This level's pieces with the data written into its chunk; None: no chunk."""
    if tree is None:
        tag = _encode_varint((_DATA << 3) | _LENGTH_DELIMITED)
        return [buf[start:end], tag, _encode_varint(len(data)), data]
    for number, wire, tag_start, value_start, value_end in _fields(buf, start, end):
        if number in tree and wire == _LENGTH_DELIMITED:
            inner = _insert(buf, value_start, value_end, tree[number][0], data)
            if inner is None:
                return None
            size = sum(len(piece) for piece in inner)
            tag = _encode_varint((number << 3) | _LENGTH_DELIMITED)
            return [buf[start:tag_start], tag, _encode_varint(size), *inner, buf[value_end:end]]
    return None


class Framer:
    """Serializes `message_class` messages, and Framed ones with their data in place."""

    def __init__(self, message_class):
        self.message_class = message_class
        self.tree = _paths(message_class.DESCRIPTOR)

    def __call__(self, item) -> bytes:
        pieces = self.pieces(item)
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def pieces(self, item) -> list:
        """The serialized message as buffers to send one after another, the tensor's
        bytes among them as they are (a socket's sendmsg needs no join)."""
        if not isinstance(item, Framed):
            return [item.SerializeToString()]
        small = memoryview(item.message.SerializeToString())
        pieces = _insert(small, 0, len(small), self.tree, item.data)
        if pieces is None:  # ops.keep_beside frames only messages whose chunk is filled
            raise ValueError("a Framed message without a TensorChunk")
        return pieces


def keep_beside(message, chunk, piece: memoryview):
    """What to send for a message whose chunk's bytes are `piece`: Framed when they are
    worth keeping beside it, else the message with them in."""
    if len(piece) >= MIN_BYTES:
        return Framed(message, piece)
    chunk.data = piece.tobytes()
    return message
