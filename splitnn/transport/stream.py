"""The OpStream protocol: what the pipeline talks to, whoever carries the ops.

Three implementations, one interface: WorkerClient (blocking gRPC, the
orchestrator relaying), AsyncExchangeClient (grpc.aio, a driving worker's
peers) and LocalClient (the driving worker's own segments, no network). Each
sends ops in order and reads their answers in the same order; `call` and
`drain` are written once here, over each one's `submit` and `receive`.
"""

from __future__ import annotations

from collections.abc import Sized
from typing import Protocol, runtime_checkable

from splitnn.wire.ops import Op, Reply


@runtime_checkable
class OpStream(Protocol):
    """Ops to one worker, answered in the order they were sent (blocking)."""

    name: str

    def submit(self, op: Op) -> None:
        """Send an op; its answer waits for receive()."""

    def receive(self) -> Reply:
        """The answer to the oldest op not yet answered."""

    def unanswered(self) -> int:
        """How many ops sent have no answer read yet."""

    def call(self, op: Op) -> Reply:
        """Send an op and wait for its answer (and every earlier one)."""

    def drain(self) -> Reply | None:
        """Wait for every op sent so far; the last answer."""


@runtime_checkable
class AsyncOpStream(Protocol):
    """OpStream for code on an asyncio event loop: the same methods, awaited."""

    name: str

    async def submit(self, op: Op) -> None:
        """Send an op; its answer waits for receive()."""

    async def receive(self) -> Reply:
        """The answer to the oldest op not yet answered."""

    def unanswered(self) -> int:
        """How many ops sent have no answer read yet."""

    async def call(self, op: Op) -> Reply:
        """Send an op and wait for its answer (and every earlier one)."""

    async def drain(self) -> Reply | None:
        """Wait for every op sent so far; the last answer."""


class OrderedStream:
    """call, drain and unanswered for a blocking stream, over its submit, its receive
    and its `_pending` queue (one entry per op whose answer has not been read)."""

    _pending: Sized

    def submit(self, op: Op) -> None:  # pragma: no cover - each stream has its own
        raise NotImplementedError

    def receive(self) -> Reply:  # pragma: no cover
        raise NotImplementedError

    def unanswered(self) -> int:
        """How many ops sent have no answer read yet."""
        return len(self._pending)

    def call(self, op: Op) -> Reply:
        """Send an op and wait for its answer (and every earlier one)."""
        self.submit(op)
        reply = self.drain()
        assert reply is not None
        return reply

    def drain(self) -> Reply | None:
        """Wait for every op sent so far; return the last answer."""
        reply = None
        while self.unanswered():
            reply = self.receive()
        return reply


class AsyncOrderedStream:
    """call, drain and unanswered for an event-loop stream, over its submit, its
    receive and its `_pending` queue."""

    _pending: Sized

    async def submit(self, op: Op) -> None:  # pragma: no cover - each stream has its own
        raise NotImplementedError

    async def receive(self) -> Reply:  # pragma: no cover
        raise NotImplementedError

    def unanswered(self) -> int:
        """How many ops sent have no answer read yet."""
        return len(self._pending)

    async def call(self, op: Op) -> Reply:
        """Send an op and wait for its answer (and every earlier one)."""
        await self.submit(op)
        reply = await self.drain()
        assert reply is not None
        return reply

    async def drain(self) -> Reply | None:
        """Wait for every op sent so far; return the last answer."""
        reply = None
        while self.unanswered():
            reply = await self.receive()
        return reply
