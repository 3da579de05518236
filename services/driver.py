"""A data owner's worker driving the chain itself (the Drive RPC).

Relaying every activation through a separate orchestrator doubles the hops of
a step. When the owner's worker drives, its own stages (the first and the
last) run in-process and only the middle stages are called over the network.

The batches run on one event loop per worker, with grpc.aio streams to the
peers: a step's ops to a peer are written and answered on the loop's thread,
instead of passing through gRPC's helper threads, which compete for the GIL
with the arithmetic of the owner's own stages.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections import OrderedDict

from splitnn.errors import InvalidArgument
from splitnn.model.losses import LOSS_NAMES
from splitnn.model.threads import adopt_torch_threads
from splitnn.services.local_client import LocalClient
from splitnn.services.ops import forward_mode_trains
from splitnn.services.segment_host import SegmentHost
from splitnn.training.pipeline import Pipeline, Stage
from splitnn.transport import busy_poll
from splitnn.transport.aio_client import AsyncExchangeClient
from splitnn.transport.data_client import AsyncDataClient
from splitnn.v1 import worker_pb2

FLUSH_SECONDS = 0.25
FLUSH_BATCHES = 256
REMEMBERED_BATCHES = 4096
REMEMBERED_CHAINS = 64
_END = object()  # the batches of a Drive are all done


class Driver:
    """Runs Drive requests for one host, keeping peer connections between calls.

    A peer connection (one Exchange stream) serves one Drive call at a time:
    concurrent runs each check out their own, so their ops never interleave.
    `client_factory(name, address, server_name=...)` makes an AsyncExchangeClient-like
    client, and `data_client_factory` the same for a stage that names its host's data
    port (an AsyncDataClient); both are called on the driver's event loop. The loop
    polls for up to `spin_seconds` before it sleeps (splitnn.transport.busy_poll); 0
    turns that off.
    """

    def __init__(
        self,
        host: SegmentHost,
        client_factory=None,
        spin_seconds: float = busy_poll.DEFAULT_SPIN_SECONDS,
        data_client_factory=None,
    ):
        self.host = host
        self.spin_seconds = spin_seconds
        self.client_factory = client_factory or AsyncExchangeClient
        self.data_client_factory = data_client_factory or AsyncDataClient
        self._idle: dict[tuple[str, str, str], list] = {}
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._quiet: busy_poll.Quiet | None = None  # quiet Drives stop the loop's spinning
        # One Drive per chain at a time, a chain being a run's segments as the Drive
        # names them: a Drive retried after a lost connection waits for the one it
        # replaces to stop (between batches) instead of racing it, while Drives of one
        # run over other segments (other owners' copies) go on at the same time.
        self._chain_locks: dict[tuple, asyncio.Lock] = {}
        # Results of recent training batches per chain: a Drive retried after a lost
        # connection skips the batches already trained and reports them again.
        self._done: dict[tuple, OrderedDict[int, worker_pb2.BatchResult]] = {}

    def _event_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                self._loop = busy_poll.new_event_loop(self.spin_seconds)
                threading.Thread(
                    target=self._serve_loop, name=f"driver-{self.host.name}", daemon=True
                ).start()
            return self._loop

    def _serve_loop(self) -> None:
        adopt_torch_threads()  # the owner's own stages run on this thread
        self._loop.run_forever()

    def _checkout(self, stage: worker_pb2.Stage):
        if not stage.address:
            raise InvalidArgument(f"stage on host {stage.host!r} has no address")
        address, factory = stage.address, self.client_factory
        if stage.data_address:  # the host's data port: ops in frames beside gRPC
            address, factory = stage.data_address, self.data_client_factory
        key = _peer_key(stage.host, address, stage.server_name)
        with self._lock:
            idle = self._idle.get(key)
            if idle:
                return idle.pop()
        # With TLS, the peer must present a certificate for `server_name`, or else
        # for its host name.
        return factory(stage.host, address, server_name=stage.server_name or None)

    async def _checkin(self, clients: dict, healthy: bool) -> None:
        for client in clients.values():
            if isinstance(client, LocalClient):
                continue
            if not healthy:
                await client.close()
                continue
            with self._lock:
                key = _peer_key(client.name, client.address, client.server_name)
                self._idle.setdefault(key, []).append(client)

    def close(self, timeout: float = 1.0) -> None:
        """Close the idle peer connections (a worker shutting down); Drives still running
        keep theirs until they end."""
        with self._lock:
            loop, idle = self._loop, [c for clients in self._idle.values() for c in clients]
            self._idle.clear()
        if loop is None or not idle:
            return

        async def close_all() -> None:
            await asyncio.gather(*(client.close() for client in idle), return_exceptions=True)

        try:
            asyncio.run_coroutine_threadsafe(close_all(), loop).result(timeout)
        except (TimeoutError, RuntimeError):  # shutting down either way
            pass

    def drive(self, request: worker_pb2.DriveRequest, context=None):
        """Train (or evaluate) the request's batches; yield DriveResponses with results.
        With the call's `context`, a cancelled call stops the batches at once (between
        two batches) rather than at the next response."""
        if len(request.stages) == 0:
            raise InvalidArgument("Drive needs at least one stage")
        for end in (request.stages[0], request.stages[-1]):
            if end.host != self.host.name:
                raise InvalidArgument(
                    f"the first and last stages must be on the driver {self.host.name!r}, "
                    f"not {end.host!r}"
                )
        forward_mode_trains(request.mode)  # refuses a mode the enum lacks
        loss_name = LOSS_NAMES.get(request.loss)
        if loss_name is None:
            raise InvalidArgument(f"unknown loss kind {request.loss}")
        results: queue.SimpleQueue = queue.SimpleQueue()
        stop = threading.Event()
        # The callback runs when the call ends, cancelled or not (False: it has ended).
        if context is not None and not context.add_callback(stop.set):
            stop.set()
        asyncio.run_coroutine_threadsafe(
            self._run(request, loss_name, results, stop), self._event_loop()
        )
        try:
            while True:
                item = results.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()  # a cancelled Drive stops between batches

    async def _run(self, request, loss_name: str, results: queue.SimpleQueue, stop) -> None:
        """The batches of one Drive, on the event loop. DriveResponses, then the end (or
        the error), go to `results`; a response gathers the results of a quarter of a
        second, so the thread streaming them back wakes a few times a second."""
        async with self._chain_lock(_chain_key(request)):
            if not request.quiet:
                await self._run_alone(request, loss_name, results, stop)
                return
            if self._quiet is None:
                self._quiet = busy_poll.Quiet(asyncio.get_running_loop())
            with self._quiet:
                await self._run_alone(request, loss_name, results, stop)

    def _chain_lock(self, chain: tuple) -> asyncio.Lock:
        lock = self._chain_locks.get(chain)
        if lock is None:
            if len(self._chain_locks) >= REMEMBERED_CHAINS:  # forget idle chains' locks
                for old in [k for k, v in self._chain_locks.items() if not v.locked()]:
                    del self._chain_locks[old]
            lock = self._chain_locks[chain] = asyncio.Lock()
        return lock

    async def _run_alone(self, request, loss_name: str, results, stop) -> None:
        clients: dict = {}
        before = self.host.pending_batches(request.run_id)
        try:
            for stage in request.stages:
                if stage.host not in clients:
                    own = stage.host == self.host.name
                    clients[stage.host] = LocalClient(self.host) if own else self._checkout(stage)
            stages = [Stage(s.host, tuple(s.segments)) for s in request.stages]
            micro = request.micro_batches  # 0 (unset) and 1 alike: whole batches
            pipeline = Pipeline(
                clients,
                request.run_id,
                stages,
                loss_name,
                micro,
                chain=request.chain,
                wire=request.wire,
            )
            await self._run_batches(request, pipeline, results, stop)
            await pipeline.flush_async()
        except BaseException as err:
            await self._checkin(clients, healthy=False)
            if not isinstance(err, _Stopped):
                # A batch that failed midway leaves the Forwards of this worker's first
                # stages pending: undo them (a retry runs them again), or every failed
                # Drive would hold one until the pending cap refuses all Forwards.
                batch_ids = {batch.batch_id for batch in request.batches}
                self.host.discard_batches(request.run_id, batch_ids, keep=before)
            results.put(err)
            if not isinstance(err, Exception):
                raise
            return
        await self._checkin(clients, healthy=True)
        results.put(_END)

    async def _run_batches(self, request, pipeline: Pipeline, results, stop) -> None:
        evaluate = request.mode == worker_pb2.FORWARD_MODE_EVAL
        done = self._done.setdefault(_chain_key(request), OrderedDict())
        while len(self._done) > REMEMBERED_CHAINS:  # forget the oldest chains
            self._done.pop(next(iter(self._done)))
        pending = worker_pb2.DriveResponse()
        last_flush = time.monotonic()
        for batch in request.batches:
            if stop.is_set():
                raise _Stopped()
            rows = list(batch.indices)
            if not evaluate and batch.batch_id in done:
                pending.results.append(done[batch.batch_id])
            else:
                if evaluate:
                    run = pipeline.evaluate_batch_async
                else:
                    run = pipeline.train_step_async
                result = await run(batch.batch_id, request.dataset, rows)
                answer = pending.results.add(
                    batch_id=batch.batch_id,
                    loss=worker_pb2.LossResult(
                        loss=result.loss, correct=result.correct, count=result.count
                    ),
                )
                if not evaluate:
                    done[batch.batch_id] = answer
                    while len(done) > REMEMBERED_BATCHES:
                        done.popitem(last=False)
            now = time.monotonic()
            if len(pending.results) >= FLUSH_BATCHES or now - last_flush > FLUSH_SECONDS:
                results.put(pending)
                pending, last_flush = worker_pb2.DriveResponse(), now
            # Let other runs' Drives have the loop between batches, also when this chain
            # is all local and never waits for a peer.
            await asyncio.sleep(0)
        if len(pending.results):
            results.put(pending)


def _chain_key(request: worker_pb2.DriveRequest) -> tuple:
    """The chain a Drive trains: its run and the segments of its stages, in order."""
    return request.run_id, tuple(i for stage in request.stages for i in stage.segments)


def _peer_key(host: str, address: str, server_name: str | None) -> tuple[str, str, str]:
    """Which idle connections may serve a stage: same host, address and TLS name."""
    return host, address, server_name or ""


class _Stopped(Exception):
    """The Drive call ended (cancelled) before its batches did."""
