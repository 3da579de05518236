"""An OpStream served by this process's own host.

A worker that drives the chain runs its own stages through this: same ops,
same code as over the network, but no serialization and no hop.
"""

from __future__ import annotations

from collections import deque

from splitnn.services import ops
from splitnn.services.segment_host import SegmentHost
from splitnn.transport.stream import OrderedStream
from splitnn.v1 import worker_pb2
from splitnn.wire.ops import Op, Reply


class LocalClient(OrderedStream):
    """Applies ops to a SegmentHost directly; answers come back in order like a stream."""

    def __init__(self, host: SegmentHost):
        self.name = host.name
        self.host = host
        self._pending: deque[Reply] = deque()

    def submit(self, op: Op) -> None:
        """Apply an op now; its answer waits for receive()."""
        answer = ops.apply(self.host, op, replay=False)  # in process: no answer is lost
        self._pending.append(Reply(answer.head, answer.tensor))

    def expect(self, op: Op) -> None:
        """Arm one of this host's own forwards, to run when the chain brings its input
        (splitnn.services.expectations)."""
        assert isinstance(op.head, worker_pb2.ForwardRequest)
        self.host.expected.arm(op.head)

    def receive(self) -> Reply:
        """The answer to the oldest op not yet received."""
        return self._pending.popleft()
