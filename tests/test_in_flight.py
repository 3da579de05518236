"""Several ops in flight per run (splitnn.wire.ops, rules 1-5): micro-batches of one
batch through the same segments keep their own state and owed work, a retry of any
recent op is answered from memory, and another op under a recent id is refused."""

from __future__ import annotations

import pytest
import torch

from splitnn.errors import FailedPrecondition
from splitnn.services import ops
from splitnn.v1 import worker_pb2
from splitnn.wire.ops import Op, OpKind
from tests.helpers import reference_pair
from tests.test_segment_host import RUN, SGD, host_with_pair

MOMENTUM = {"name": "sgd", "lr": 0.1, "momentum": 0.9}


def micro_batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    torch.manual_seed(7)
    return [(torch.randn(5, 4), torch.rand(5, 1)) for _ in range(3)]


def reference_state(optimizer: dict) -> dict[str, torch.Tensor]:
    """Plain PyTorch: the gradients of the three micro-batches accumulated, one step."""
    model = reference_pair()
    opt = torch.optim.SGD(
        model.parameters(), lr=optimizer["lr"], momentum=optimizer.get("momentum", 0)
    )
    for x, y in micro_batches():
        ((model(x) - y) ** 2).sum().backward()
    opt.step()
    return model.state_dict()


@pytest.mark.parametrize("optimizer", [SGD, MOMENTUM], ids=["sgd", "momentum"])
def test_micro_batches_in_flight_accumulate_and_step_once(optimizer):
    """Segment 0 holds three micro-batches of batch 1 in flight at once; their
    backwards come back in reverse order. Each keeps its own input, output and owed
    parameter gradients: the step equals one step over the accumulated gradients."""
    host = host_with_pair(reference_pair(), optimizer)
    grads = {}
    for m, (x, y) in enumerate(micro_batches()):
        out = host.forward(RUN, [0], 1, input=x, micro_batch=m).output
        result = host.forward(RUN, [1], 1, input=out, loss=None, micro_batch=m).output
        leaf = result.detach().requires_grad_(True)
        ((leaf - y) ** 2).sum().backward()
        grads[m] = leaf.grad
    assert len(host.pending_batches(RUN)) == 6
    for m in reversed(range(3)):
        grad = host.backward(RUN, [1], 1, grads[m], step=False, micro_batch=m)
        host.backward(RUN, [0], 1, grad, step=False, micro_batch=m)
    host.step(RUN, [0, 1])

    got = {f"{s.index}.{k}": v for s in host.segments() for k, v in s.module.state_dict().items()}
    for key, value in reference_state(optimizer).items():
        assert torch.allclose(got[key], value, atol=1e-6), key


def test_step_waits_for_every_micro_batch_of_the_batch():
    host = host_with_pair(reference_pair())
    x = torch.randn(2, 4)
    out0 = host.forward(RUN, [0], 1, input=x, micro_batch=0).output
    host.forward(RUN, [0], 1, input=x, micro_batch=1)
    host.backward(RUN, [0], 1, torch.ones_like(out0), step=False, micro_batch=0)

    with pytest.raises(FailedPrecondition):
        host.step(RUN, [0])


def forward_op(batch_id: int, x: torch.Tensor, micro_batch: int = 0) -> Op:
    head = worker_pb2.ForwardRequest(
        run_id=RUN,
        segments=[0],
        batch_id=batch_id,
        mode=worker_pb2.FORWARD_MODE_TRAIN,
        micro_batch=micro_batch,
    )
    return Op(OpKind.FORWARD, head, x)


def test_a_retry_of_an_earlier_op_in_flight_is_answered_from_memory():
    host = host_with_pair(reference_pair())
    first, second = torch.randn(3, 4), torch.randn(3, 4)
    answer = ops.apply(host, forward_op(1, first, micro_batch=0))
    ops.apply(host, forward_op(1, second, micro_batch=1))
    ops.apply(host, forward_op(2, second))

    again = ops.apply(host, forward_op(1, first.clone(), micro_batch=0))

    assert again is answer
    assert len(host.pending_batches(RUN)) == 3


def test_another_op_under_a_recent_id_is_refused_and_changes_nothing():
    host = host_with_pair(reference_pair())
    ops.apply(host, forward_op(1, torch.randn(3, 4)))
    before = host.pending_batches(RUN)

    with pytest.raises(FailedPrecondition, match="other content"):
        ops.apply(host, forward_op(1, torch.randn(3, 4)))

    assert host.pending_batches(RUN) == before


def test_replay_keeps_a_bounded_window_of_answers():
    host = host_with_pair(reference_pair())
    for batch_id in range(1, 40):
        x = torch.randn(2, 4)
        out = ops.apply(host, forward_op(batch_id, x)).tensor
        back = worker_pb2.BackwardRequest(run_id=RUN, segments=[0], batch_id=batch_id)
        ops.apply(host, Op(OpKind.BACKWARD, back, torch.ones_like(out)))

    sizes = host.replay.lane_sizes()
    assert sizes and all(size <= host.replay.window for size in sizes)


def test_same_op_tells_content_apart():
    x = torch.randn(3, 4)
    assert ops.same_op(forward_op(1, x), forward_op(1, x.clone()))
    assert not ops.same_op(forward_op(1, x), forward_op(1, x + 1))
    assert not ops.same_op(forward_op(1, x), forward_op(2, x))
    assert not ops.same_op(forward_op(1, x), forward_op(1, x.double()))
    assert not ops.same_op(forward_op(1, x), forward_op(1, x[:2]))
