"""Transient network failures are retried, and a retried op is applied once."""

from __future__ import annotations

import asyncio
import random
import socket
import threading

import pytest
import torch
from torch import nn

from splitnn.data.datasets import TOY_NAME
from splitnn.model import optim as optim_specs
from splitnn.training.pipeline import Pipeline, Stage
from splitnn.transport.aio_client import AsyncExchangeClient
from splitnn.transport.client import PeerSettings, WorkerClient
from tests import jobs

RUN = "retry-run"
LAYERS = [
    [{"type": "Linear", "in_features": 4, "out_features": 3}, {"type": "Tanh"}],
    [{"type": "Linear", "in_features": 3, "out_features": 1}, {"type": "Sigmoid"}],
]
OPTIMIZER = optim_specs.normalize({"name": "sgd", "lr": 0.2, "momentum": 0.9})


class CuttingProxy:
    """A loopback TCP proxy whose connections can be cut at any moment."""

    def __init__(self, target: str):
        host, port = target.rsplit(":", 1)
        self.target = (host, int(port))
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen()
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()
        self.cuts = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            with self.lock:
                self.sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source, sink):
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut(self):
        """Reset every open connection (as a dropped link would)."""
        with self.lock:
            sockets, self.sockets = self.sockets, []
            self.cuts += 1
        for s in sockets:
            try:
                s.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                )
                # A close alone does not end a socket that a pipe thread is reading:
                # the kernel keeps it open until that recv returns, so neither end
                # would hear of the cut. The shutdown wakes the reader first.
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def close(self):
        self.listener.close()
        self.cut()


def reference_weights(initial, steps):
    model = nn.Sequential(
        *[nn.Sequential(nn.Linear(4, 3), nn.Tanh()), nn.Sequential(nn.Linear(3, 1), nn.Sigmoid())]
    )
    model.load_state_dict(initial)
    return jobs.toy_reference_state(model, OPTIMIZER, steps)


def _two_stages(client) -> Pipeline:
    # Two stages on one worker, so each step is a Forward, then a Forward with the
    # loss, then a Backward: three chances per step for a cut to lose an answer.
    clients = {"a": client, "b": client}
    return Pipeline(clients, RUN, [Stage("a", (0,)), Stage("b", (1,))], "sum_squared_error")


def _run_sync(address, steps, cut):
    client = WorkerClient("alice", address, backoff=0.02, retries=8)
    try:
        pipeline = _two_stages(client)
        for step in range(1, steps + 1):
            cut()
            pipeline.train_step(step, TOY_NAME, list(range(16)))
        pipeline.flush()
    finally:
        client.close()


def _run_async(address, steps, cut):
    """The same steps with the event-loop client a driving worker uses."""

    async def run():
        client = AsyncExchangeClient("alice", address, backoff=0.02, retries=8)
        try:
            pipeline = _two_stages(client)
            for step in range(1, steps + 1):
                cut()
                await pipeline.train_step_async(step, TOY_NAME, list(range(16)))
            await pipeline.flush_async()
        finally:
            await client.close()

    asyncio.run(run())


@pytest.mark.parametrize("run_steps", [_run_sync, _run_async], ids=["blocking", "event-loop"])
def test_ops_retried_through_dropped_connections_are_applied_once(
    worker, run_steps, monkeypatch, caplog
):
    retried = []
    stream_retry = PeerSettings.stream_retry

    def counted(self, error, attempt, started):
        again = stream_retry(self, error, attempt, started)
        retried.append(again)
        return again

    monkeypatch.setattr(PeerSettings, "stream_retry", counted)
    torch.manual_seed(0)
    modules = [
        nn.Sequential(nn.Linear(4, 3), nn.Tanh()),
        nn.Sequential(nn.Linear(3, 1), nn.Sigmoid()),
    ]
    initial = {
        f"{i}.{k}": v.clone() for i, m in enumerate(modules) for k, v in m.state_dict().items()
    }
    proxy = CuttingProxy(worker.address)
    direct = WorkerClient("alice", worker.address)
    rng = random.Random(1)

    def maybe_cut():
        if rng.random() < 0.3:
            threading.Timer(rng.random() * 0.002, proxy.cut).start()

    steps = 60
    try:
        for i, module in enumerate(modules):
            state = {f"model.{k}": v for k, v in module.state_dict().items()}
            direct.load_segment(RUN, i, LAYERS[i], OPTIMIZER, state)
        run_steps(proxy.address, steps, maybe_cut)
        assert proxy.cuts >= 10
        assert sum(retried) >= 3, "the cuts never cost the client an answer"
        said = [r.getMessage() for r in caplog.records if r.name == "splitnn.transport.client"]
        assert len(said) == sum(retried)  # every retry is in the log, naming the worker
        assert all(m.startswith("worker alice: Exchange ") and " lost " in m for m in said)
        exported = {}
        for i in range(2):
            state = direct.export_segment(RUN, i)
            exported.update({f"{i}.{k[6:]}": v for k, v in state.items() if k.startswith("model.")})
    finally:
        direct.close()
        proxy.close()
    expected = reference_weights(initial, steps)
    for key, value in expected.items():
        assert torch.allclose(exported[key], value, atol=1e-6), key


def test_export_cut_midway_is_read_again(worker):
    # 64 MiB of weights: more than gRPC buffers ahead of the reader, so a cut after
    # the first chunk breaks the stream.
    layers = [{"type": "Linear", "in_features": 4096, "out_features": 4096}]
    proxy = CuttingProxy(worker.address)
    client = WorkerClient("alice", proxy.address, backoff=0.02, retries=8)
    try:
        client.load_segment(RUN, 0, layers, OPTIMIZER, None)
        expected = worker.host.export_segment(RUN, 0)
        cuts = []
        original = client.stub.ExportSegment

        def cut_after_first_chunk(request, **kwargs):
            for i, response in enumerate(original(request, **kwargs)):
                if i == 0 and not cuts:
                    cuts.append(proxy.cut())
                yield response

        client.stub.ExportSegment = cut_after_first_chunk
        state = client.export_segment(RUN, 0)
    finally:
        client.close()
        proxy.close()
    assert cuts, "the export was never cut"
    assert state.keys() == expected.keys()
    for key in expected:
        assert torch.equal(state[key], expected[key]), key
