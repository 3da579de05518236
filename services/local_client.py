"""The client interface of splitnn.transport.client.WorkerClient, served by this process's own host.

A worker that drives the chain runs its own stages through this: same ops,
same code as over the network, but no serialization and no hop.
"""

from __future__ import annotations

from collections import deque

from splitnn.services import ops
from splitnn.services.segment_host import SegmentHost
from splitnn.transport.client import Reply


class LocalClient:
    """Applies ops to a SegmentHost directly; answers come back in order like a stream."""

    def __init__(self, host: SegmentHost):
        self.name = host.name
        self.host = host
        self._answers: deque[Reply] = deque()

    def submit(self, kind: str, op, tensor=None, field: str = "") -> None:
        """Apply an op now; its answer waits for receive()."""
        head, out, _ = ops.apply(kind, self.host, op, tensor)
        self._answers.append(Reply(head, out))

    def receive(self) -> Reply:
        """The answer to the oldest op not yet received."""
        return self._answers.popleft()

    def call(self, kind: str, op, tensor=None, field: str = "") -> Reply:
        """Apply an op and return its answer."""
        self.submit(kind, op, tensor, field)
        return self.drain()

    def drain(self) -> Reply | None:
        """Every answer so far; the last one."""
        reply = None
        while self._answers:
            reply = self._answers.popleft()
        return reply
