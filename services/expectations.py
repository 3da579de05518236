"""The heads of a driving owner's last stages, armed before the chain brings their
inputs (splitnn.services.chain_forward).

The chain's last hop comes from a peer and carries no loss: a peer may not make
this worker read its own rows or labels. The owner's driver arms the head it
wants run, loss spec and all, and the forward that arrives for that stage and
batch runs with it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from splitnn.v1 import worker_pb2
from splitnn.wire.ops import Op, OpKey, OpKind

# Armed heads kept per worker: a retried last hop finds its head again (and the
# replay window its answer); the oldest go first.
REMEMBERED_EXPECTATIONS = 1024


class Expectations:
    """The heads of a driver's own last stages, armed before the chain brings their
    inputs; thread-safe."""

    def __init__(self, limit: int = REMEMBERED_EXPECTATIONS):
        self.limit = limit
        self._heads: OrderedDict[OpKey, worker_pb2.ForwardRequest] = OrderedDict()
        self._lock = threading.Lock()

    def arm(self, head: worker_pb2.ForwardRequest) -> None:
        """Expect a chained forward for this head's stage and batch."""
        key = OpKey(
            head.run_id, OpKind.FORWARD, tuple(head.segments), head.batch_id, head.micro_batch
        )
        with self._lock:
            self._heads[key] = head
            self._heads.move_to_end(key)
            while len(self._heads) > self.limit:
                self._heads.popitem(last=False)

    def resolve(self, op: Op) -> Op:
        """The op to run for an incoming one: with the armed head, if one is armed for
        its key (the incoming op carries the tensor), else the op itself."""
        # Every forward a worker serves passes here: no lock while nothing is armed
        # (a run without chain forwarding never arms any).
        if not self._heads or op.kind is not OpKind.FORWARD or op.tensor is None:
            return op
        if op.head.chain:
            return op
        with self._lock:
            head = self._heads.get(op.key)
        return op if head is None else Op(OpKind.FORWARD, head, op.tensor)

    def forget(self, run_id: str) -> None:
        """Drop a run's armed heads (its Drive ended or failed)."""
        with self._lock:
            for key in [k for k in self._heads if k.run_id == run_id]:
                del self._heads[key]
