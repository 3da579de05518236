"""Helpers the worker tests share: states out of a running worker, and checks that a
refused call changed nothing."""

from __future__ import annotations

from collections.abc import Iterable

import grpc
import torch
from google.protobuf.message import Message
from torch import nn

from splitnn.errors import InvalidArgument
from splitnn.model import layers as layer_specs
from splitnn.v1 import worker_pb2
from splitnn.wire import codec

TIMEOUT = 30
SEG0 = [{"type": "Linear", "in_features": 4, "out_features": 3}, {"type": "Tanh"}]
SEG1 = [{"type": "Linear", "in_features": 3, "out_features": 1}, {"type": "Sigmoid"}]


def model_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """A module's weights and buffers as a segment's state entries ("model.<name>")."""
    return {f"model.{k}": v.detach().clone() for k, v in module.state_dict().items()}


def reference_pair(seed: int = 1) -> nn.Sequential:
    """The two-segment chain SEG0, SEG1 built as plain PyTorch builds it, seeded."""
    torch.manual_seed(seed)
    return nn.Sequential(layer_specs.build_segment(SEG0), layer_specs.build_segment(SEG1))


def decode(chunks: Iterable, max_bytes: int = codec.DEFAULT_MAX_TENSOR_BYTES) -> torch.Tensor:
    """A complete tensor from all of its chunks (no chunk more, none less)."""
    assembler, result = codec.TensorAssembler(max_bytes), None
    for chunk in chunks:
        if result is not None:
            raise InvalidArgument("more tensor chunks than declared")
        result = assembler.add(chunk)
    if result is None:
        raise InvalidArgument("tensor stream ended before its last chunk")
    return result


def export(stub, index: int, run_id: str, metadata=()) -> dict[str, torch.Tensor]:
    """A segment's state as the worker exports it (`metadata`: the caller's token)."""
    blob = codec.BlobAssembler()
    request = worker_pb2.ExportSegmentRequest(run_id=run_id, index=index)
    for response in stub.ExportSegment(request, timeout=TIMEOUT, metadata=metadata):
        blob.add(response.state)
    return codec.decode_state(blob.blob())


def pending(stub, metadata=()) -> dict[tuple[str, int], int]:
    """Batches awaiting Backward, per (run, segment)."""
    request = worker_pb2.GetStatusRequest()
    segments = stub.GetStatus(request, timeout=TIMEOUT, metadata=metadata).segments
    return {(s.run_id, s.index): s.pending_batches for s in segments}


def snapshot(stub, metadata=()) -> tuple[dict, dict]:
    """Everything the worker holds that a refused call must not touch: every segment's
    exported state, and its pending count."""
    counts = pending(stub, metadata)
    states = {key: export(stub, key[1], key[0], metadata) for key in counts}
    return states, counts


def assert_unchanged(stub, before, metadata=()) -> None:
    """The worker holds exactly what `snapshot` saw in `before`."""
    states, counts = snapshot(stub, metadata)
    assert counts == before[1]
    assert states.keys() == before[0].keys()
    for key, state in states.items():
        assert state.keys() == before[0][key].keys(), key
        for name, value in state.items():
            assert torch.equal(value, before[0][key][name]), (key, name)


def refused(call, allowed) -> grpc.RpcError:
    """Run `call` (consuming any response stream); it must fail with a status code in
    `allowed` (a code or a set of codes). Returns the error."""
    codes = allowed if isinstance(allowed, set | frozenset) else {allowed}
    try:
        result = call()
        if not isinstance(result, Message):
            for _ in result:
                pass
    except grpc.RpcError as err:
        assert err.code() in codes, f"{err.code()}: {err.details()}"
        return err
    raise AssertionError("the call was accepted")
