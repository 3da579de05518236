"""Chain forwarding (training.route = "chain"): each host passes its output straight
to the next one and its input gradient straight back; the weights equal one process,
and a peer can neither redirect a host nor make an owner read its own labels."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from splitnn.data.datasets import TOY_NAME, builtin
from splitnn.errors import FailedPrecondition, InvalidArgument
from splitnn.services import ops
from splitnn.services.chain_forward import ChainForwarder
from splitnn.services.segment_host import SegmentHost
from splitnn.v1 import worker_pb2
from splitnn.wire.ops import Op, OpKind, Reply
from tests.test_equivalence import assert_equals_reference
from tests.test_micro_batches import with_training

ROOT = Path(__file__).resolve().parent.parent
LINEAR = [{"type": "Linear", "in_features": 3, "out_features": 2}, {"type": "Tanh"}]
SGD = {"name": "sgd", "lr": 0.1}


def _host(peers=None) -> SegmentHost:
    host = SegmentHost("bob")
    host.load_segment("run", 2, LINEAR, SGD, None, owner="orchestrator", peers=peers or {})
    return host


def _chained(hops=("claire",), **fields) -> Op:
    head = worker_pb2.ForwardRequest(run_id="run", segments=[2], batch_id=7, **fields)
    head.chain.extend(worker_pb2.ChainHop(host=h, segments=[3]) for h in hops)
    return Op(OpKind.FORWARD, head, torch.ones(4, 3))


@pytest.mark.slow
def test_seed_job_through_the_chain_equals_one_process(tmp_path):
    # Three owners in turn; while bob trains, the chain runs bob -> alice -> bob ->
    # claire -> bob: alice passes her output to bob's middle stage, which passes it on.
    config = with_training(ROOT / "examples" / "seed.toml", tmp_path, route='"chain"')
    assert_equals_reference(config, tmp_path / "out")


def test_a_chained_forward_goes_on_to_the_address_the_run_names_and_backpropagates():
    calls = []

    def call_peer(host, where, op):
        calls.append((host, where.address, op.head, op.tensor.shape))
        return Reply(worker_pb2.ForwardResponse(batch_id=7), torch.full((4, 2), 0.5))

    host = _host(peers={"claire": ("10.0.0.3:7000", "")})
    before = {k: v.clone() for k, v in host.export_segment("run", 2).items()}
    answer = ChainForwarder(host, call_peer).apply(_chained(hops=("claire", "alice")))
    [(name, address, onward, shape)] = calls
    assert (name, address, shape) == ("claire", "10.0.0.3:7000", torch.Size([4, 2]))
    assert [h.host for h in onward.chain] == ["alice"] and list(onward.segments) == [3]
    assert answer.tensor.shape == (4, 3)  # the input gradient
    host.settle("run", [2])
    after = host.export_segment("run", 2)
    assert not torch.equal(after["model.0.weight"], before["model.0.weight"])  # stepped
    assert host.pending_batches("run") == set()


@pytest.mark.parametrize(
    "fields, error",
    [
        ({"loss": worker_pb2.LossSpec(dataset="toy")}, InvalidArgument),
        ({"data": worker_pb2.DataSource(dataset="toy")}, InvalidArgument),
        ({"mode": worker_pb2.FORWARD_MODE_EVAL}, InvalidArgument),
    ],
    ids=["loss", "rows", "eval"],
)
def test_a_chained_forward_with_rows_a_loss_or_in_eval_is_refused(fields, error):
    host = _host(peers={"claire": ("10.0.0.3:7000", "")})
    forwarder = ChainForwarder(host, lambda *a: pytest.fail("must not call on"))
    with pytest.raises(error):
        forwarder.apply(_chained(**fields))
    assert host.pending_batches("run") == set()


def test_a_host_the_run_names_no_address_for_is_not_dialled():
    host = _host(peers={"claire": ("10.0.0.3:7000", "")})
    forwarder = ChainForwarder(host, lambda *a: pytest.fail("must not dial"))
    with pytest.raises(FailedPrecondition, match="no address"):
        forwarder.apply(_chained(hops=("mallory",)))
    assert host.pending_batches("run") == set()


def test_a_failure_down_the_chain_undoes_the_forward_here():
    def call_peer(*args):
        raise FailedPrecondition("claire broke")

    host = _host(peers={"claire": ("10.0.0.3:7000", "")})
    with pytest.raises(FailedPrecondition, match="claire broke"):
        ChainForwarder(host, call_peer).apply(_chained())
    assert host.pending_batches("run") == set()


def test_the_last_hop_runs_the_armed_head_and_otherwise_reads_no_labels():
    host = SegmentHost("alice", {TOY_NAME: builtin(TOY_NAME)})
    last = [{"type": "Linear", "in_features": 2, "out_features": 1}, {"type": "Sigmoid"}]
    host.load_segment("run", 4, last, SGD, None, owner="orchestrator")
    incoming = Op(
        OpKind.FORWARD,
        worker_pb2.ForwardRequest(run_id="run", segments=[4], batch_id=3),
        torch.zeros(16, 2),
    )
    # Not armed: a plain forward, answered with the output (no loss, no labels).
    plain = ops.apply(host, host.expected.resolve(incoming))
    assert plain.field == "output"
    host.discard_batches("run", {3})
    armed = worker_pb2.ForwardRequest(run_id="run", segments=[4], batch_id=3)
    armed.loss.kind = worker_pb2.LOSS_KIND_SUM_SQUARED_ERROR
    armed.loss.dataset = "toy"
    armed.loss.indices.extend(range(16))
    host.expected.arm(armed)
    answer = ops.apply(host, host.expected.resolve(incoming), replay=False)
    assert answer.field == "input_grad" and answer.head.loss.count == 16
