"""SegmentHost without a network: gradients equal plain autograd, and refusals leave no trace."""

from __future__ import annotations

import threading

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from splitnn.data.datasets import TOY_NAME, Dataset, builtin
from splitnn.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    NumericalError,
    ResourceExhausted,
)
from splitnn.model import layers as layer_specs
from splitnn.services.segment_host import Limits, SegmentHost
from tests.helpers import SEG0, SEG1, model_state, reference_pair

RUN = "run-1"
BN_SEG = [
    {"type": "BatchNorm1d", "num_features": 4},
    {"type": "Linear", "in_features": 4, "out_features": 2},
]
SGD = {"name": "sgd", "lr": 0.2}
ROWS = list(range(16))


def make_host(**limits) -> SegmentHost:
    return SegmentHost("alice", {TOY_NAME: builtin(TOY_NAME)}, Limits(**limits))


def host_with_pair(reference: nn.Sequential, optimizer=SGD, **limits) -> SegmentHost:
    host = make_host(**limits)
    for index, (layers, module) in enumerate(zip([SEG0, SEG1], reference, strict=True)):
        host.load_segment(RUN, index, layers, optimizer, model_state(module))
    return host


def host_params(host: SegmentHost) -> list[torch.Tensor]:
    return [p for s in host.segments() for p in s.module.parameters()]


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def toy() -> tuple[torch.Tensor, torch.Tensor]:
    return builtin(TOY_NAME).take(ROWS)


def sse(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return ((out - y) ** 2).sum()


@pytest.fixture
def host() -> SegmentHost:
    """A host with segments 0 and 1 of the pair, seeded."""
    return host_with_pair(reference_pair())


# ---- the training path equals plain autograd -----------------------------------------


def test_two_segments_in_one_call_match_autograd(host):
    reference = reference_pair()
    x, y = toy()
    ref_loss = sse(reference(x), y)
    ref_loss.backward()

    out = host.forward(RUN, [0, 1], 7, input=x).output
    out_leaf = out.clone().requires_grad_(True)
    sse(out_leaf, y).backward()
    input_grad = host.backward(RUN, [0, 1], 7, out_leaf.grad, step=False)
    host.settle(RUN, [0, 1])  # the parameter gradients, put off until the answer is out

    ref_x = x.clone().requires_grad_(True)
    sse(reference_pair()(ref_x), y).backward()
    assert torch.equal(out, reference(x).detach())
    assert torch.equal(input_grad, ref_x.grad)
    for got, want in zip(host_params(host), reference.parameters(), strict=True):
        assert torch.equal(got.grad, want.grad)


def test_segment_by_segment_matches_autograd_after_step(host):
    reference = reference_pair()
    x, y = toy()
    torch.optim.SGD(reference.parameters(), lr=0.2).zero_grad()
    sse(reference(x), y).backward()
    torch.optim.SGD(reference.parameters(), lr=0.2).step()

    hidden = host.forward(RUN, [0], 3, input=x).output
    out = host.forward(RUN, [1], 3, input=hidden).output
    out_leaf = out.clone().requires_grad_(True)
    sse(out_leaf, y).backward()
    hidden_grad = host.backward(RUN, [1], 3, out_leaf.grad, step=True)
    host.backward(RUN, [0], 3, hidden_grad, step=True)

    for got, want in zip(host_params(host), reference.parameters(), strict=True):
        assert torch.equal(got, want)
        assert got.grad is None  # stepping clears the gradients


def test_backward_owes_its_parameter_gradients_and_step_to_whoever_uses_them_first(host):
    # As a handler does: Backward answers with the input gradient; the parameter
    # gradients and step are paid by the next use of a segment, or by settle after.
    reference = host_with_pair(reference_pair())
    x, y = toy()
    ref_leaf = x.clone().requires_grad_(True)
    ref_out = reference_pair()(ref_leaf)
    sse(ref_out, y).backward()
    live = host_params(host)  # the tensors themselves, read without paying anything
    initial = [p.detach().clone() for p in live]
    for h in (host, reference):
        out = h.forward(RUN, [0, 1], 5, input=x).output
        out_leaf = out.clone().requires_grad_(True)
        sse(out_leaf, y).backward()
        grad = h.backward(RUN, [0, 1], 5, out_leaf.grad, step=True)
        assert torch.equal(grad, ref_leaf.grad)  # the input gradient comes at once
        if h is reference:
            reference.settle(RUN, [0, 1])
    # Still owed: no parameter gradient computed, no weight moved.
    assert all(p.grad is None and torch.equal(p, q) for p, q in zip(live, initial, strict=True))
    exported = host.export_segment(RUN, 1)  # pays the owed work of the whole chain
    assert_same_state(exported, reference.export_segment(RUN, 1))
    hidden = host.forward(RUN, [0], 6, input=x).output
    assert torch.equal(hidden, reference.forward(RUN, [0], 6, input=x).output)
    host.settle(RUN, [0, 1])  # the handler comes back: nothing left to pay
    for got, want in zip(host_params(host), host_params(reference), strict=True):
        assert torch.equal(got, want)


def test_loss_at_host_on_own_data_matches_autograd(host):
    reference = reference_pair()
    x, y = toy()
    ref_loss = sse(reference(x), y)
    ref_loss.backward()
    torch.optim.SGD(reference.parameters(), lr=0.2).step()

    result = host.forward(
        RUN, [0, 1], 1, data=(TOY_NAME, ROWS), loss=("sum_squared_error", TOY_NAME, ROWS), step=True
    )

    assert result.loss == ref_loss.item()
    assert result.input_grad is None  # the input was the host's own data
    assert result.count == 16
    assert host.pending_count(RUN, 0) == 0
    for got, want in zip(host_params(host), reference.parameters(), strict=True):
        assert torch.equal(got, want)


def test_loss_at_host_with_input_tensor_returns_input_gradient(host):
    reference = reference_pair()
    x, y = toy()
    ref_x = x.clone().requires_grad_(True)
    sse(reference(ref_x), y).backward()

    result = host.forward(RUN, [0, 1], 1, input=x, loss=("sum_squared_error", TOY_NAME, ROWS))

    assert torch.equal(result.input_grad, ref_x.grad)
    for got, want in zip(host_params(host), reference.parameters(), strict=True):
        assert torch.equal(got.grad, want.grad)


def test_three_hundred_loss_steps_match_plain_training(host):
    reference = reference_pair()
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.2)
    x, y = toy()
    for _ in range(300):
        optimizer.zero_grad()
        sse(reference(x), y).backward()
        optimizer.step()

    for batch in range(300):
        host.forward(
            RUN,
            [0, 1],
            batch,
            data=(TOY_NAME, ROWS),
            loss=("sum_squared_error", TOY_NAME, ROWS),
            step=True,
        )

    for got, want in zip(host_params(host), reference.parameters(), strict=True):
        assert torch.equal(got, want)


def test_eval_mode_keeps_no_pending_state(host):
    x, _ = toy()

    out = host.forward(RUN, [0, 1], 1, train=False, input=x).output

    assert out.shape == (16, 1)
    assert host.pending_count(RUN, 0) == 0 and host.pending_count(RUN, 1) == 0
    with pytest.raises(FailedPrecondition):
        host.backward(RUN, [0, 1], 1, torch.ones(16, 1), step=False)


def test_eval_mode_with_loss_reports_loss_without_gradients(host):
    reference = reference_pair()
    x, y = toy()
    before = host.export_segment(RUN, 0)

    result = host.forward(
        RUN,
        [0, 1],
        1,
        train=False,
        data=(TOY_NAME, ROWS),
        loss=("sum_squared_error", TOY_NAME, ROWS),
    )

    assert result.loss == pytest.approx(sse(reference(x), y).item())
    assert all(p.grad is None for p in host_params(host))
    assert_same_state(host.export_segment(RUN, 0), before)


def test_eval_mode_leaves_batchnorm_stats_alone():
    host = make_host()
    host.load_segment(RUN, 0, BN_SEG, SGD, None)
    before = host.export_segment(RUN, 0)

    host.forward(RUN, [0], 1, train=False, input=torch.randn(8, 4))

    assert_same_state(host.export_segment(RUN, 0), before)


# ---- refusals leave the host as it was -----------------------------------------------


def test_backward_without_forward_is_failed_precondition(host):
    with pytest.raises(FailedPrecondition, match="awaits Backward"):
        host.backward(RUN, [0, 1], 1, torch.ones(16, 1), step=False)


@pytest.mark.parametrize(
    "grad",
    [torch.ones(16, 2), torch.ones(15, 1), torch.ones(16), torch.ones(16, 1, dtype=torch.float64)],
    ids=["wrong-width", "wrong-rows", "wrong-rank", "wrong-dtype"],
)
def test_wrong_gradient_is_invalid_and_keeps_the_pending_batch(host, grad):
    x, _ = toy()
    host.forward(RUN, [0, 1], 1, input=x)

    with pytest.raises(InvalidArgument, match="gradient"):
        host.backward(RUN, [0, 1], 1, grad, step=False)

    assert host.pending_count(RUN, 0) == 1
    assert host.backward(RUN, [0, 1], 1, torch.ones(16, 1), step=True).shape == (16, 4)
    assert host.pending_count(RUN, 0) == 0


@pytest.mark.parametrize(
    "run_id,indices",
    [(RUN, [2]), (RUN, [1, 2]), ("other-run", [0])],
    ids=["unknown-segment", "chain-past-end", "unknown-run"],
)
def test_unknown_segment_or_run_is_not_found(host, run_id, indices):
    with pytest.raises(NotFound):
        host.forward(run_id, indices, 1, input=torch.zeros(2, 4))


@pytest.mark.parametrize("indices", [[0, 2], [1, 0], [0, 0], []], ids=str)
def test_non_consecutive_segments_are_invalid(host, indices):
    with pytest.raises(InvalidArgument):
        host.forward(RUN, indices, 1, input=torch.zeros(2, 4))


@pytest.mark.parametrize("run_id", ["", "r" * 129], ids=["empty", "too-long"])
def test_bad_run_id_is_invalid(host, run_id):
    with pytest.raises(InvalidArgument, match="run_id"):
        host.forward(run_id, [0], 1, input=torch.zeros(2, 4))


@pytest.mark.parametrize(
    "x",
    [torch.zeros(16, 5), torch.zeros(16, 2, 2, 1), torch.zeros(4)],
    ids=["wrong-width", "wrong-rank", "4-rows-for-16-labels"],
)
def test_wrong_input_shape_is_invalid_and_changes_nothing(host, x):
    before = [host.export_segment(RUN, i) for i in (0, 1)]

    with pytest.raises(InvalidArgument):
        host.forward(RUN, [0, 1], 1, input=x, loss=("sum_squared_error", TOY_NAME, ROWS), step=True)

    for i in (0, 1):
        assert_same_state(host.export_segment(RUN, i), before[i])
    assert host.pending_count(RUN, 0) == 0


def test_wrong_input_dtype_is_invalid(host):
    with pytest.raises(InvalidArgument, match="dtype"):
        host.forward(RUN, [0], 1, input=torch.zeros(16, 4, dtype=torch.float64))


def test_scalar_input_is_invalid(host):
    with pytest.raises(InvalidArgument, match="batch dimension"):
        host.forward(RUN, [0], 1, input=torch.tensor(1.0))


@pytest.mark.parametrize("both", [True, False], ids=["both", "neither"])
def test_forward_needs_exactly_one_input_source(host, both):
    kwargs = {"input": torch.zeros(16, 4), "data": (TOY_NAME, ROWS)} if both else {}

    with pytest.raises(InvalidArgument, match="exactly one"):
        host.forward(RUN, [0], 1, **kwargs)


def test_unknown_dataset_is_not_found(host):
    with pytest.raises(NotFound, match="dataset"):
        host.forward(RUN, [0], 1, data=("mnist", [0]))


@pytest.mark.parametrize("rows", [[16], [-1], [0, 99]], ids=str)
def test_row_index_out_of_range_is_invalid(host, rows):
    with pytest.raises(InvalidArgument, match="row index"):
        host.forward(RUN, [0], 1, data=(TOY_NAME, rows))

    assert host.pending_count(RUN, 0) == 0


def test_label_rows_not_matching_batch_are_invalid(host):
    with pytest.raises(InvalidArgument, match="label rows"):
        host.forward(
            RUN, [0, 1], 1, data=(TOY_NAME, ROWS), loss=("sum_squared_error", TOY_NAME, [0, 1])
        )


@pytest.mark.parametrize("label", [-100, -1, 3], ids=str)
def test_cross_entropy_label_outside_the_classes_is_invalid_and_changes_nothing(label):
    # -100 is cross_entropy's ignore_index: torch would silently skip that row.
    host = SegmentHost(
        "alice", {"d": Dataset("d", torch.randn(4, 4), torch.tensor([0, 1, label, 2]))}
    )
    host.load_segment(RUN, 0, [{"type": "Linear", "in_features": 4, "out_features": 3}], SGD, None)
    before = host.export_segment(RUN, 0)
    with pytest.raises(InvalidArgument, match="labels outside 0..2"):
        host.forward(
            RUN,
            [0],
            1,
            data=("d", [0, 1, 2, 3]),
            loss=("cross_entropy", "d", [0, 1, 2, 3]),
            step=True,
        )

    assert_same_state(host.export_segment(RUN, 0), before)
    assert all(p.grad is None for p in host_params(host))
    assert (
        host.forward(
            RUN, [0], 2, data=("d", [0, 1, 3]), loss=("cross_entropy", "d", [0, 1, 3])
        ).loss
        > 0
    )


def test_same_batch_twice_in_flight_is_failed_precondition(host):
    host.forward(RUN, [0], 1, input=torch.zeros(2, 4))

    with pytest.raises(FailedPrecondition, match="already in flight"):
        host.forward(RUN, [0], 1, input=torch.zeros(2, 4))


def test_step_while_a_batch_awaits_backward_is_failed_precondition(host):
    host.forward(RUN, [0], 1, input=torch.zeros(2, 4))

    with pytest.raises(FailedPrecondition, match="await Backward"):
        host.step(RUN, [0])


def test_failing_forward_restores_batchnorm_running_stats():
    host = make_host()
    host.load_segment(RUN, 0, BN_SEG, SGD, None)
    before = host.export_segment(RUN, 0)

    # BatchNorm1d(4) takes a [8, 4, 1] input (and updates its stats); Linear(4, 2) refuses it.
    with pytest.raises(InvalidArgument):
        host.forward(RUN, [0], 1, input=torch.randn(8, 4, 3))

    assert_same_state(host.export_segment(RUN, 0), before)
    assert host.export_segment(RUN, 0)["model.0.num_batches_tracked"].item() == 0


def test_batchnorm_stats_do_move_on_a_good_forward():
    host = make_host()
    host.load_segment(RUN, 0, BN_SEG, SGD, None)

    host.forward(RUN, [0], 1, input=torch.randn(8, 4))

    assert host.export_segment(RUN, 0)["model.0.num_batches_tracked"].item() == 1


def test_nan_gradient_is_numerical_error_and_changes_nothing(host):
    x, _ = toy()
    host.forward(RUN, [0, 1], 1, input=x)
    before = [host.export_segment(RUN, i) for i in (0, 1)]
    grad = torch.ones(16, 1)
    grad[3, 0] = float("nan")

    with pytest.raises(NumericalError):
        host.backward(RUN, [0, 1], 1, grad, step=True)

    for i in (0, 1):
        assert_same_state(host.export_segment(RUN, i), before[i])
    assert all(p.grad is None for p in host_params(host))


def test_infinite_gradient_is_numerical_error(host):
    host.forward(RUN, [0], 1, input=torch.zeros(2, 4))

    with pytest.raises(NumericalError):
        host.backward(RUN, [0], 1, torch.full((2, 3), float("inf")), step=True)


def test_nan_loss_is_numerical_error_and_changes_nothing(host):
    before = [host.export_segment(RUN, i) for i in (0, 1)]
    x, _ = toy()
    x[0, 0] = float("nan")

    with pytest.raises(NumericalError, match="loss"):
        host.forward(RUN, [0, 1], 1, input=x, loss=("sum_squared_error", TOY_NAME, ROWS), step=True)

    for i in (0, 1):
        assert_same_state(host.export_segment(RUN, i), before[i])


def test_refused_forward_keeps_gradients_accumulated_by_earlier_batches(host):
    x, _ = toy()
    host.forward(RUN, [0, 1], 1, input=x)
    host.backward(RUN, [0, 1], 1, torch.ones(16, 1), step=False)
    grads = [p.grad.clone() for p in host_params(host)]
    bad = x.clone()
    bad[0, 0] = float("nan")

    with pytest.raises(InvalidArgument):
        host.forward(RUN, [0, 1], 2, input=torch.zeros(16, 5))
    with pytest.raises(NumericalError):
        host.forward(RUN, [0, 1], 3, input=bad, loss=("sum_squared_error", TOY_NAME, ROWS))

    for got, want in zip(host_params(host), grads, strict=True):
        assert torch.equal(got.grad, want)


def test_max_pending_batches_is_resource_exhausted():
    host = host_with_pair(reference_pair(), max_pending_batches=2, run_share=1, identity_share=1)
    host.forward(RUN, [0], 1, input=torch.zeros(2, 4))
    host.forward(RUN, [0], 2, input=torch.zeros(2, 4))

    with pytest.raises(ResourceExhausted):
        host.forward(RUN, [0], 3, input=torch.zeros(2, 4))

    assert host.pending_count(RUN, 0) == 2
    host.backward(RUN, [0], 1, torch.zeros(2, 3), step=False)
    host.forward(RUN, [0], 3, input=torch.zeros(2, 4))  # a freed slot is usable again


# ---- loading, export, drop ------------------------------------------------------------


def test_max_segments_is_resource_exhausted():
    host = make_host(max_segments=2, run_share=1, identity_share=1)
    host.load_segment(RUN, 0, SEG0, SGD, None)
    host.load_segment(RUN, 1, SEG1, SGD, None)

    with pytest.raises(ResourceExhausted):
        host.load_segment(RUN, 2, SEG1, SGD, None)

    assert [s.index for s in host.segments()] == [0, 1]
    host.load_segment(RUN, 1, SEG1, SGD, None, replace=True)  # replacing takes no new slot


def test_max_parameters_is_resource_exhausted():
    host = make_host(max_parameters=10, run_share=1, identity_share=1)

    with pytest.raises(ResourceExhausted, match="parameters"):
        host.load_segment(RUN, 0, SEG0, SGD, None)

    assert host.segments() == []


def test_duplicate_load_is_already_exists_and_keeps_the_first(host):
    before = host.export_segment(RUN, 0)

    with pytest.raises(AlreadyExists):
        host.load_segment(RUN, 0, SEG0, SGD, None)

    assert_same_state(host.export_segment(RUN, 0), before)


def test_concurrent_duplicate_loads_let_exactly_one_win():
    host = make_host()
    outcomes: list = []
    barrier = threading.Barrier(8)

    def load():
        barrier.wait()
        try:
            host.load_segment(RUN, 0, SEG0, SGD, None)
            outcomes.append("loaded")
        except AlreadyExists:
            outcomes.append("refused")

    threads = [threading.Thread(target=load) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(outcomes) == ["loaded"] + ["refused"] * 7


def test_replace_drops_pending_batches(host):
    host.forward(RUN, [0], 1, input=torch.zeros(2, 4))

    host.load_segment(RUN, 0, SEG0, SGD, None, replace=True)

    assert host.pending_count(RUN, 0) == 0


def test_replacing_a_segment_keeps_the_work_its_chain_owes_the_others(host):
    reference = host_with_pair(reference_pair())
    x, y = toy()
    for h in (host, reference):
        out = h.forward(RUN, [0, 1], 1, input=x).output
        leaf = out.clone().requires_grad_(True)
        sse(leaf, y).backward()
        h.backward(RUN, [0, 1], 1, leaf.grad, step=True)  # gradients and step owed
    reference.settle(RUN, [0, 1])

    host.load_segment(RUN, 1, SEG1, SGD, None, replace=True)

    assert_same_state(host.export_segment(RUN, 0), reference.export_segment(RUN, 0))


def test_drop_forgets_segment_and_its_pending_batches(host):
    host.forward(RUN, [0, 1], 1, input=torch.zeros(2, 4))

    host.drop_segment(RUN, 1)

    assert [s.index for s in host.segments()] == [0]
    assert host.pending_count(RUN, 0) == 0
    with pytest.raises(NotFound):
        host.export_segment(RUN, 1)


def test_drop_unknown_segment_is_not_found(host):
    with pytest.raises(NotFound):
        host.drop_segment(RUN, 9)


@pytest.mark.parametrize(
    "layers",
    [
        [{"type": "Lambda"}],
        [{"type": "Linear", "in_features": 4}],
        [{"type": "Linear", "in_features": 4, "out_features": 3, "device": "cuda"}],
        [],
    ],
    ids=["unknown-type", "missing-arg", "unknown-arg", "empty"],
)
def test_bad_layer_spec_is_invalid(layers):
    host = make_host()

    with pytest.raises(InvalidArgument):
        host.load_segment(RUN, 0, layers, SGD, None)

    assert host.segments() == []


def test_bad_optimizer_spec_is_invalid():
    host = make_host()

    with pytest.raises(InvalidArgument):
        host.load_segment(RUN, 0, SEG0, {"name": "rmsprop", "lr": 0.1}, None)

    assert host.segments() == []


def test_parameter_free_segment_loads_and_passes_gradients_through():
    host = make_host()
    host.load_segment(RUN, 0, [{"type": "Identity"}, {"type": "ReLU"}], SGD, None)
    x = torch.tensor([[-1.0, 2.0]])

    out = host.forward(RUN, [0], 1, input=x).output
    grad = host.backward(RUN, [0], 1, torch.tensor([[5.0, 7.0]]), step=True)

    assert out.tolist() == [[0.0, 2.0]]
    assert grad.tolist() == [[0.0, 7.0]]


def test_parameter_free_segment_on_own_data_backward_returns_no_gradient():
    host = make_host()
    host.load_segment(RUN, 0, [{"type": "Identity"}], SGD, None)
    host.forward(RUN, [0], 1, data=(TOY_NAME, [0, 1]))

    grad = host.backward(RUN, [0], 1, torch.ones(2, 4), step=True)

    assert grad is None
    assert host.pending_count(RUN, 0) == 0


OPTIMIZERS = [
    {"name": "sgd", "lr": 0.1, "momentum": 0.9},
    {"name": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01},
    {"name": "adam", "lr": 0.01},
    {"name": "adamw", "lr": 0.01, "amsgrad": True},
]


def _train(host: SegmentHost, steps: int, start: int = 0) -> None:
    for batch in range(start, start + steps):
        host.forward(
            RUN,
            [0, 1],
            batch,
            data=(TOY_NAME, ROWS),
            loss=("sum_squared_error", TOY_NAME, ROWS),
            step=True,
        )


@pytest.mark.parametrize("optimizer", OPTIMIZERS, ids=["sgd-momentum", "nesterov", "adam", "adamw"])
def test_export_and_load_continue_training_identically(optimizer):
    original = host_with_pair(reference_pair(), optimizer)
    _train(original, 3)
    moved = make_host()
    for index, layers in enumerate([SEG0, SEG1]):
        moved.load_segment(RUN, index, layers, optimizer, original.export_segment(RUN, index))

    _train(original, 4, start=3)
    _train(moved, 4, start=3)

    assert any(k.startswith("optim.") for k in original.export_segment(RUN, 0))
    for index in (0, 1):
        assert_same_state(moved.export_segment(RUN, index), original.export_segment(RUN, index))


def test_load_without_optimizer_state_differs_from_momentum_training():
    # Guards the test above: dropping the optimizer state must make a difference.
    optimizer = OPTIMIZERS[0]
    original = host_with_pair(reference_pair(), optimizer)
    _train(original, 3)
    moved = make_host()
    for index, layers in enumerate([SEG0, SEG1]):
        state = {
            k: v for k, v in original.export_segment(RUN, index).items() if k.startswith("model.")
        }
        moved.load_segment(RUN, index, layers, optimizer, state)

    _train(original, 2, start=3)
    _train(moved, 2, start=3)

    assert not torch.equal(
        moved.export_segment(RUN, 0)["model.0.weight"],
        original.export_segment(RUN, 0)["model.0.weight"],
    )


def test_export_includes_batchnorm_buffers():
    host = make_host()
    host.load_segment(RUN, 0, BN_SEG, SGD, None)

    state = host.export_segment(RUN, 0)

    assert {"model.0.running_mean", "model.0.running_var", "model.0.num_batches_tracked"} <= set(
        state
    )


def test_export_is_a_copy(host):
    state = host.export_segment(RUN, 0)

    state["model.0.weight"].add_(100.0)

    assert not torch.equal(host.export_segment(RUN, 0)["model.0.weight"], state["model.0.weight"])


@pytest.mark.parametrize(
    "change",
    [
        lambda s: s.update({"model.0.weight": torch.zeros(3, 5)}),
        lambda s: s.update({"model.0.weight": s["model.0.weight"].double()}),
        lambda s: s.pop("model.0.bias"),
        lambda s: s.update({"model.9.weight": torch.zeros(1)}),
        lambda s: s.update({"bogus": torch.zeros(1)}),
        lambda s: s.update({"optim.0.momentum_buffer": torch.zeros(5, 5)}),
        lambda s: s.update({"optim.7.momentum_buffer": torch.zeros(3, 4)}),
        lambda s: s.update({"optim.x.momentum_buffer": torch.zeros(3, 4)}),
    ],
    ids=[
        "weight-shape",
        "weight-dtype",
        "missing-weight",
        "extra-weight",
        "unknown-entry",
        "optimizer-state-shape",
        "optimizer-param-index",
        "optimizer-entry-name",
    ],
)
def test_mismatched_state_is_invalid_and_nothing_is_loaded(change):
    optimizer = OPTIMIZERS[0]
    source = host_with_pair(reference_pair(), optimizer)
    _train(source, 1)
    state = source.export_segment(RUN, 0)
    change(state)
    host = make_host()

    with pytest.raises(InvalidArgument):
        host.load_segment(RUN, 0, SEG0, optimizer, state)

    assert host.segments() == []


def test_failed_replace_keeps_the_old_segment(host):
    before = host.export_segment(RUN, 0)

    with pytest.raises(InvalidArgument):
        host.load_segment(RUN, 0, SEG0, SGD, {"model.0.weight": torch.zeros(9, 9)}, replace=True)

    assert_same_state(host.export_segment(RUN, 0), before)


CONV_CHAIN = [
    {"type": "Conv2d", "in_channels": 3, "out_channels": 8, "kernel_size": 3},
    {"type": "BatchNorm2d", "num_features": 8},
    {"type": "ReLU"},
    {"type": "MaxPool2d", "kernel_size": 2},
    {"type": "Flatten"},
    {"type": "LayerNorm", "normalized_shape": 8 * 6 * 6},
    {"type": "Linear", "in_features": 8 * 6 * 6, "out_features": 10},
    {"type": "GELU"},
]


def test_input_gradient_first_gives_the_floats_of_one_backward_pass():
    # A middle host answers with the input gradient and computes its parameters'
    # gradients later: every float must be what one backward pass and a step give.
    optimizer = {"name": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True}
    torch.manual_seed(4)
    reference = layer_specs.build_segment(CONV_CHAIN)
    host = SegmentHost("bob")
    host.load_segment(RUN, 0, CONV_CHAIN, optimizer, model_state(reference))
    ref_optimizer = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    x, grad = torch.randn(6, 3, 14, 14), torch.randn(6, 10)
    for batch in range(1, 4):
        leaf = x.clone().requires_grad_(True)
        reference(leaf).backward(grad)
        ref_optimizer.step()
        ref_optimizer.zero_grad()
        host.forward(RUN, [0], batch, input=x)
        input_grad = host.backward(RUN, [0], batch, grad, step=True)
        assert torch.equal(input_grad, leaf.grad)
        host.settle(RUN, [0])
    for name, value in model_state(reference).items():
        assert torch.equal(host.export_segment(RUN, 0)[name], value), name


class _MatrixProducts(TorchDispatchMode):
    """Counts the matrix products torch runs while active (autograd's included)."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket in (torch.ops.aten.mm, torch.ops.aten.addmm):
            self.count += 1
        return func(*args, **(kwargs or {}))


def test_the_deferred_pass_computes_no_gradient_between_layers_again():
    # Two Linear layers: answering the input gradient takes two products (through
    # each layer); what is put off is each layer's weight gradient, one product each.
    # Backpropagating the whole chain again would also redo the product through the
    # second layer (three), and so cost the middle host a third more than one pass.
    layers = [
        {"type": "Linear", "in_features": 4, "out_features": 8},
        {"type": "ReLU"},
        {"type": "Linear", "in_features": 8, "out_features": 3},
    ]
    torch.manual_seed(2)
    reference = layer_specs.build_segment(layers)
    host = SegmentHost("bob")
    host.load_segment(RUN, 0, layers, SGD, model_state(reference))
    x, grad = torch.randn(5, 4), torch.randn(5, 3)
    host.forward(RUN, [0], 1, input=x)
    with _MatrixProducts() as answering:
        input_grad = host.backward(RUN, [0], 1, grad, step=True)
    with _MatrixProducts() as deferred:
        host.settle(RUN, [0])
    assert (answering.count, deferred.count) == (2, 2)

    leaf = x.clone().requires_grad_(True)
    reference(leaf).backward(grad)
    torch.optim.SGD(reference.parameters(), lr=SGD["lr"]).step()
    assert torch.equal(input_grad, leaf.grad)
    for name, value in model_state(reference).items():
        assert torch.equal(host.export_segment(RUN, 0)[name], value), name
