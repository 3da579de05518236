"""A data owner's worker driving the chain itself (the Drive RPC).

Relaying every activation through a separate orchestrator doubles the hops of
a step. When the owner's worker drives, its own stages (the first and the
last) run in-process and only the middle stages are called over the network.
"""

from __future__ import annotations

import threading
import time

from services.local_client import LocalClient
from services.segment_host import SegmentHost
from splitnn.client import WorkerClient
from splitnn.errors import InvalidArgument
from splitnn.losses import LOSS_NAMES
from splitnn.pipeline import Pipeline, Stage
from splitnn.v1 import worker_pb2

FLUSH_SECONDS = 0.25
FLUSH_BATCHES = 256


class Driver:
    """Runs Drive requests for one host, keeping peer connections between calls."""

    def __init__(self, host: SegmentHost, client_factory=None):
        self.host = host
        self.local = LocalClient(host)
        self.client_factory = client_factory or (lambda name, address: WorkerClient(name, address))
        self._peers: dict[tuple[str, str], WorkerClient] = {}
        self._lock = threading.Lock()

    def _client(self, stage: worker_pb2.Stage):
        if stage.host == self.host.name:
            return self.local
        if not stage.address:
            raise InvalidArgument(f"stage on host {stage.host!r} has no address")
        key = (stage.host, stage.address)
        with self._lock:
            if key not in self._peers:
                self._peers[key] = self.client_factory(stage.host, stage.address)
            return self._peers[key]

    def drive(self, request: worker_pb2.DriveRequest):
        """Train (or evaluate) the request's batches; yield DriveResponses with results."""
        if len(request.stages) == 0:
            raise InvalidArgument("Drive needs at least one stage")
        for end in (request.stages[0], request.stages[-1]):
            if end.host != self.host.name:
                raise InvalidArgument(
                    f"the first and last stages must be on the driver {self.host.name!r}, "
                    f"not {end.host!r}"
                )
        loss_name = LOSS_NAMES.get(request.loss)
        if loss_name is None:
            raise InvalidArgument(f"unknown loss kind {request.loss}")
        stages = [Stage(s.host, tuple(s.segments)) for s in request.stages]
        clients = {s.host: self._client(s) for s in request.stages}
        pipeline = Pipeline(clients, request.run_id, stages, loss_name)
        evaluate = request.mode == worker_pb2.FORWARD_MODE_EVAL
        pending = worker_pb2.DriveResponse()
        last_flush = time.monotonic()
        try:
            for batch in request.batches:
                rows = list(batch.indices)
                if evaluate:
                    result = pipeline.evaluate_batch(batch.batch_id, request.dataset, rows)
                else:
                    result = pipeline.train_step(batch.batch_id, request.dataset, rows)
                pending.results.add(
                    batch_id=batch.batch_id,
                    loss=worker_pb2.LossResult(
                        loss=result.loss, correct=result.correct, count=result.count
                    ),
                )
                now = time.monotonic()
                if len(pending.results) >= FLUSH_BATCHES or now - last_flush > FLUSH_SECONDS:
                    yield pending
                    pending, last_flush = worker_pb2.DriveResponse(), now
            pipeline.flush()
        except BaseException:
            self._reset_peers(clients)
            raise
        if len(pending.results):
            yield pending

    def _reset_peers(self, clients) -> None:
        """After a failure, drop peer streams so the next Drive starts clean."""
        with self._lock:
            for key, client in list(self._peers.items()):
                if client in clients.values():
                    client.close()
                    del self._peers[key]
