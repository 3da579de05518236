"""What keeps one caller from exhausting a worker, without a network where it can: sizes
checked before the work, caps per run and per identity, leases, call slots, token
files, and the small refusals (bad enum values, misfit optimizer state, autograd)."""

from __future__ import annotations

import time

import grpc
import pytest
import torch

from splitnn.errors import InvalidArgument, ResourceExhausted, SecurityError
from splitnn.orchestrator.cli import main as splitnn_main
from splitnn.security.identity import digest, parse_tokens
from splitnn.services.chain import backward_chain
from splitnn.services.guard import CallSlots
from splitnn.services.segment_host import Limits, SegmentHost
from splitnn.v1 import worker_pb2
from splitnn.wire import codec
from tests.conftest import start_worker
from tests.helpers import SEG0, SEG1, model_state, reference_pair

SGD = {"name": "sgd", "lr": 0.1}
TOY = "toy"


def host(**limits) -> SegmentHost:
    from splitnn.data.datasets import builtin

    return SegmentHost("alice", {TOY: builtin(TOY)}, Limits(**limits))


# ---- sizes before the work -----------------------------------------------------------


def test_an_activation_over_the_cap_is_refused_before_it_is_built():
    worker = host(max_tensor_bytes=16 << 20)
    pool = [{"type": "AdaptiveAvgPool2d", "output_size": [8192, 8192]}]
    worker.load_segment("r", 0, pool, SGD, None)

    with pytest.raises(ResourceExhausted, match="layer 0 would output"):
        worker.forward("r", [0], 1, input=torch.zeros(1, 1, 2, 2))  # 16 bytes in

    assert worker.pending_batches("r") == set()
    with pytest.raises(ResourceExhausted):  # evaluation is sized the same way
        worker.forward("r", [0], 2, input=torch.zeros(1, 1, 2, 2), train=False)


def test_small_outputs_pass_and_the_check_is_remembered():
    worker = host()
    worker.load_segment("r", 0, SEG0, SGD, None)
    for batch in range(1, 4):
        worker.forward("r", [0], batch, input=torch.zeros(5, 4))
    assert len(worker.sizes._checked) == 1


def test_too_many_rows_are_refused_before_any_is_read():
    worker = host()
    worker.load_segment("r", 0, SEG0, SGD, None)

    with pytest.raises(ResourceExhausted, match="rows"):
        worker.forward("r", [0], 1, data=(TOY, [0] * 2_000_000))
    with pytest.raises(ResourceExhausted, match="rows"):
        worker.forward("r", [0], 1, input=torch.zeros(3, 4), loss=("sse", TOY, [0] * 70_000))


def test_parameters_are_capped_for_the_worker_as_a_whole():
    # Each segment has 15 parameters; 40 fit the worker, so the third is refused.
    worker = host(max_parameters=40, run_share=1, identity_share=1)
    worker.load_segment("r", 0, SEG0, SGD, None)
    worker.load_segment("s", 0, SEG0, SGD, None)

    with pytest.raises(ResourceExhausted, match="parameters"):
        worker.load_segment("t", 0, SEG0, SGD, None)


# ---- caps per run and per identity -----------------------------------------------------


def test_one_run_cannot_take_all_pending_slots():
    worker = host(max_pending_batches=8)  # a run may hold 4, an identity 6
    for run in ("a", "b"):
        worker.load_segment(run, 0, SEG0, SGD, None)
    for batch in range(1, 5):
        worker.forward("a", [0], batch, input=torch.zeros(2, 4))

    with pytest.raises(ResourceExhausted, match="run 'a'"):
        worker.forward("a", [0], 5, input=torch.zeros(2, 4))
    worker.forward("b", [0], 1, input=torch.zeros(2, 4))  # another run still can


def test_one_identity_cannot_take_all_segment_slots():
    worker = host(max_segments=8)  # a run may hold 4, an identity 6
    for index in range(4):
        worker.load_segment("a", index, SEG0, SGD, None, owner="orch1")
    with pytest.raises(ResourceExhausted, match="run 'a'"):
        worker.load_segment("a", 4, SEG0, SGD, None, owner="orch1")
    for index in range(2):
        worker.load_segment("b", index, SEG0, SGD, None, owner="orch1")

    with pytest.raises(ResourceExhausted, match="this orchestrator's runs"):
        worker.load_segment("c", 0, SEG0, SGD, None, owner="orch1")
    worker.load_segment("d", 0, SEG0, SGD, None, owner="orch2")


# ---- leases ------------------------------------------------------------------------------


def test_a_run_unused_past_its_lease_is_dropped_whole_and_a_used_one_stays():
    worker = host(lease_seconds=0.2)
    reference = reference_pair()
    for run in ("idle", "busy"):
        for index, (layers, module) in enumerate(zip([SEG0, SEG1], reference, strict=True)):
            worker.load_segment(run, index, layers, SGD, model_state(module))
    worker.forward("idle", [0], 1, input=torch.zeros(2, 4))

    for batch in range(1, 6):
        time.sleep(0.06)
        worker.forward("busy", [0, 1], batch, input=torch.zeros(2, 4), train=False)
    dropped = worker.drop_lapsed_runs()

    assert dropped == ["idle"]
    assert {s.run_id for s in worker.segments()} == {"busy"}
    assert worker.pending_batches("idle") == set() and worker.runs.get("idle") is None


# ---- call slots --------------------------------------------------------------------------


def test_call_slots_bound_each_identity_alone():
    slots = CallSlots(per_identity=2)
    with slots.hold("dave"), slots.hold("dave"):
        with pytest.raises(ResourceExhausted), slots.hold("dave"):
            pass
        with slots.hold("alice"):
            assert slots.held("alice") == 1
    with slots.hold("dave"):
        assert slots.held("dave") == 1


def test_a_silent_half_sent_stream_is_cancelled_and_the_worker_serves_on():
    from splitnn.services.guard import IdleWatch

    running, stop = start_worker(idle=IdleWatch(0.3))
    try:
        chunk = codec.encode(torch.zeros(8, 1024), 8192)[0]
        op = worker_pb2.ExchangeRequest(forward=worker_pb2.ForwardRequest(run_id="x", input=chunk))
        released = []

        def requests():
            yield op
            while not released:
                time.sleep(0.05)

        started = time.monotonic()
        call = running.stub.Exchange(requests(), timeout=20)
        with pytest.raises(grpc.RpcError) as info:
            list(call)
        released.append(True)

        assert info.value.code() == grpc.StatusCode.CANCELLED
        assert time.monotonic() - started < 5
        status = running.stub.GetStatus(worker_pb2.GetStatusRequest(), timeout=5)
        assert status.name == "alice"
    finally:
        stop()


# ---- token files -------------------------------------------------------------------------


def test_token_files_name_identities_and_may_hold_only_digests():
    alice, bob = "a" * 20, "b" * 20
    table = parse_tokens(f"alice {alice}  # alice's own\nbob sha256:{digest(bob).hex()}\n")

    assert table.identify(alice) == "alice" and table.identify(bob) == "bob"
    assert table.identify("c" * 20) is None
    assert table.token_for("alice") == alice
    with pytest.raises(SecurityError, match="only a digest"):
        table.token_for("bob")


@pytest.mark.parametrize(
    "text",
    ["", "alice\nbob x", "alice short", f"alice {'a' * 20}\nalice {'b' * 20}",
     f"al ice {'a' * 20}", f"alice {'a' * 20}\nbob {'a' * 20}", "bob sha256:abc"],
    ids=["empty", "no-token", "short", "twice", "bad-name", "shared-secret", "bad-digest"],
)  # fmt: skip
def test_bad_token_files_are_refused(text):
    with pytest.raises(SecurityError):
        parse_tokens(text)


def test_a_bare_token_is_the_shared_one():
    table = parse_tokens("tok-123\n")
    assert table.shared and table.token_for("anyone") == "tok-123"
    assert table.identify("tok-123") == "orchestrator"


# ---- small refusals ----------------------------------------------------------------------


def test_a_scalar_momentum_buffer_is_refused_at_load():
    state = model_state(reference_pair()[0])
    state["optim.0.momentum_buffer"] = torch.tensor(1.0)

    with pytest.raises(InvalidArgument, match="shape"):
        host().load_segment("r", 0, SEG0, {"name": "sgd", "lr": 0.1, "momentum": 0.9}, state)


def test_an_autograd_failure_is_an_invalid_argument():
    worker = host()
    worker.load_segment("r", 0, SEG0, SGD, None)
    chain = worker.segments()
    out = torch.zeros(2, 3)  # no graph behind it

    with pytest.raises(InvalidArgument, match="backward"):
        backward_chain(chain, out, torch.ones(2, 3), torch.zeros(2, 4), [], defer=False)


def test_unknown_forward_modes_are_refused_and_long_strings_are_cut(worker):
    op = worker_pb2.ForwardRequest(run_id="r", segments=[0], mode=99)
    op.data.dataset, op.data.indices[:] = TOY, [0]
    with pytest.raises(grpc.RpcError) as info:
        list(worker.stub.Forward(iter([op]), timeout=10))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "forward mode 99" in info.value.details()

    worker.host.load_segment("r", 0, SEG0, SGD, None)
    op = worker_pb2.ForwardRequest(run_id="r", segments=[0], mode=1)
    op.data.dataset, op.data.indices[:] = "d" * 100_000, [0]
    with pytest.raises(grpc.RpcError) as info:
        list(worker.stub.Forward(iter([op]), timeout=10))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert len(info.value.details()) <= 1024


def test_resume_without_a_checkpoint_is_a_one_line_error(tmp_path, capsys):
    assert splitnn_main(["train", "--resume", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("splitnn: error: no checkpoint at") and "\n" not in err
