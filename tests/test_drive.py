"""A data owner's worker driving the chain: a Drive its caller cancels stops between
batches, and a Drive of the same batches afterwards (what the orchestrator sends after
a lost connection) waits for it, then trains each batch exactly once."""

from __future__ import annotations

import asyncio
import threading
import time

import grpc
import pytest
import torch
from torch import nn

from splitnn.data.datasets import TOY_NAME
from splitnn.model import optim as optim_specs
from splitnn.model.losses import loss_kind
from splitnn.services.driver import Driver
from splitnn.services.segment_host import SegmentHost
from splitnn.transport.client import WorkerClient
from splitnn.v1 import worker_pb2
from tests import jobs
from tests.conftest import start_worker

RUN = "drive-run"
LAYERS = [
    [{"type": "Linear", "in_features": 4, "out_features": 3}, {"type": "Tanh"}],
    [{"type": "Linear", "in_features": 3, "out_features": 3}, {"type": "Sigmoid"}],
    [{"type": "Linear", "in_features": 3, "out_features": 1}, {"type": "Sigmoid"}],
]
OPTIMIZER = optim_specs.normalize({"name": "sgd", "lr": 0.2, "momentum": 0.9})
BATCHES = 1500


def build_modules():
    torch.manual_seed(3)
    return [
        nn.Sequential(nn.Linear(4, 3), nn.Tanh()),
        nn.Sequential(nn.Linear(3, 3), nn.Sigmoid()),
        nn.Sequential(nn.Linear(3, 1), nn.Sigmoid()),
    ]


def reference_state(steps: int) -> dict[str, torch.Tensor]:
    return jobs.toy_reference_state(nn.Sequential(*build_modules()), OPTIMIZER, steps)


@pytest.fixture
def owner_and_bob():
    owner, stop_owner = start_worker("owner")
    bob, stop_bob = start_worker("bob")
    try:
        yield owner, bob
    finally:
        stop_owner()
        stop_bob()


def test_cancelled_drive_stops_and_the_same_drive_again_trains_each_batch_once(owner_and_bob):
    owner, bob = owner_and_bob
    clients = {
        "owner": WorkerClient("owner", owner.address),
        "bob": WorkerClient("bob", bob.address),
    }
    placement = ["owner", "bob", "owner"]
    try:
        for index, (host, module) in enumerate(zip(placement, build_modules(), strict=True)):
            state = {f"model.{k}": v for k, v in module.state_dict().items()}
            clients[host].load_segment(RUN, index, LAYERS[index], OPTIMIZER, state)
        request = worker_pb2.DriveRequest(
            run_id=RUN,
            loss=loss_kind("sum_squared_error"),
            dataset=TOY_NAME,
            mode=worker_pb2.FORWARD_MODE_TRAIN,
        )
        for index, host in enumerate(placement):
            request.stages.add(host=host, segments=[index], address=clients[host].address)
        for batch_id in range(1, BATCHES + 1):
            request.batches.add(batch_id=batch_id, indices=range(16))

        call = owner.stub.Drive(request)
        first = next(call)  # a quarter of a second of batches, then cut the call short
        call.cancel()
        with pytest.raises(grpc.RpcError) as cut:
            list(call)
        assert cut.value.code() == grpc.StatusCode.CANCELLED
        trained_before = first.results[-1].batch_id
        assert 0 < trained_before < BATCHES

        # Sent at once: it must wait for the cancelled Drive to stop, not race it.
        results = list(clients["owner"].drive(request))
        assert [r.batch_id for r in results] == list(range(1, BATCHES + 1))
        assert results[0].loss.loss == first.results[0].loss.loss  # reported, not retrained

        exported = {}
        for index, host in enumerate(placement):
            state = clients[host].export_segment(RUN, index)
            exported |= {f"{index}.{k[6:]}": v for k, v in state.items() if k[:6] == "model."}
        status = clients["owner"].status()
        assert all(segment.pending_batches == 0 for segment in status.segments)
    finally:
        for client in clients.values():
            client.close()
    for key, value in reference_state(BATCHES).items():
        assert torch.equal(exported[key], value), key


def test_an_all_local_drive_leaves_room_for_another_runs_drive(owner_and_bob):
    # One event loop runs every Drive of a worker: a chain that never waits for a peer
    # must still give way between batches, or another run would wait for it to end.
    owner, _ = owner_and_bob
    client = WorkerClient("owner", owner.address)
    requests = {}
    try:
        for run, batches in (("long-run", 4000), ("short-run", 5)):
            for index, layers in enumerate((LAYERS[0], LAYERS[2])):
                client.load_segment(run, index, layers, OPTIMIZER, None)
            request = worker_pb2.DriveRequest(
                run_id=run, loss=loss_kind("sum_squared_error"), dataset=TOY_NAME
            )
            request.stages.add(host="owner", segments=[0, 1], address=owner.address)
            for batch_id in range(1, batches + 1):
                request.batches.add(batch_id=batch_id, indices=range(16))
            requests[run] = request
        long_call = owner.stub.Drive(requests["long-run"])
        first = next(long_call)  # the long Drive is under way
        rest, arrivals = [], []

        def read_long():
            for response in long_call:
                rest.extend(response.results)
                arrivals.append(time.monotonic())

        reader = threading.Thread(target=read_long)
        reader.start()
        short = list(client.drive(requests["short-run"]))
        short_done = time.monotonic()
        reader.join(timeout=60)
    finally:
        client.close()
    assert [r.batch_id for r in short] == [1, 2, 3, 4, 5]
    assert len(first.results) + len(rest) == 4000
    # Ordering, not duration: the short Drive ended while the long one still ran.
    assert short_done < arrivals[-1], "the short Drive waited for the long one to end"


def test_a_peer_connection_with_a_server_name_is_used_again():
    # A stage may name the certificate name of its host (server_name); the connection
    # checked in after a Drive must be the one the next Drive checks out, or every
    # Drive would leave one more idle connection behind.
    driver = Driver(SegmentHost("owner", {}))
    stage = worker_pb2.Stage(host="bob", segments=[1], address="127.0.0.1:1", server_name="b")

    async def check_out_twice():
        first = driver._checkout(stage)
        await driver._checkin({"bob": first}, healthy=True)
        second = driver._checkout(stage)
        await second.close()
        return first is second

    assert asyncio.run(check_out_twice())
