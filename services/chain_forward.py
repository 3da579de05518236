"""Chain forwarding: each middle host passes its output straight to the next host.

Driving a chain of stages owner | B | C | owner, the owner's worker used to send
every activation to a host and take the answer back: 8 messages a step. With a
chain, the owner sends its first stage's output to B with the rest of the chain
(ForwardRequest.chain); B runs forward and sends its output to C; C sends its
output to the owner's last stage; the answers come back the same way, each
host running its backward pass and step on the gradient it gets and answering
with its own input gradient: 6 messages, 3 round trips on a network instead of 4.

Two rules keep it safe among parties:
- A host dials only the addresses its run's orchestrator gave at LoadSegment
  (Run.peers), never one that a peer's op names: a peer cannot send a host's
  token or traffic anywhere else.
- A peer still cannot make an owner read its own rows or labels: the chain's
  last hop carries no loss. The owner's driver arms its last stage beforehand
  (splitnn.services.expectations) with the loss spec over its labels, and the forward that
  arrives for that stage and batch runs with the armed head.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from splitnn.errors import FailedPrecondition, InvalidArgument
from splitnn.services import ops
from splitnn.services.runs import PeerAddress
from splitnn.services.segment_host import SegmentHost
from splitnn.v1 import worker_pb2
from splitnn.wire.ops import Answer, Op, OpKind, Reply

# call_peer(host, where, op) -> the peer's Reply (raises WorkerError)
PeerCall = Callable[[str, PeerAddress, Op], Reply]


class PeerPool:
    """Blocking clients to peers, for handler threads passing forwards on: a client
    serves one call at a time, so concurrent chains each check out their own.
    (Blocking clients on the handler's own thread: handing each hop to the driver's
    event loop cost two thread switches a hop.) A peer with a data port is called
    there (`data_factory`, a DataClient), else on an Exchange stream (`factory`, a
    WorkerClient); each factory takes (name, address, server_name) and gives the
    client this worker's credentials."""

    def __init__(self, factory=None, data_factory=None):
        if factory is None:
            from splitnn.transport.client import WorkerClient as factory
        if data_factory is None:
            from splitnn.transport.data_client import DataClient as data_factory
        self.factory = factory
        self.data_factory = data_factory
        self._idle: dict[tuple[str, str, str], list] = {}
        self._lock = threading.Lock()

    def call(self, host: str, where: PeerAddress, op: Op) -> Reply:
        """Send one op to a peer and wait for its answer."""
        address = where.data_address or where.address
        key = (host, address, where.server_name)
        with self._lock:
            idle = self._idle.get(key)
            client = idle.pop() if idle else None
        if client is None:
            factory = self.data_factory if where.data_address else self.factory
            client = factory(host, address, server_name=where.server_name or None)
        try:
            reply = client.call(op)
        except BaseException:
            client.close()
            raise
        with self._lock:
            self._idle.setdefault(key, []).append(client)
        return reply

    def close(self) -> None:
        """Close the idle streams (the worker is shutting down)."""
        with self._lock:
            clients = [c for idle in self._idle.values() for c in idle]
            self._idle.clear()
        for client in clients:
            client.close()


class ChainForwarder:
    """Runs chained forwards on a host, calling the next host with `call_peer`."""

    def __init__(self, host: SegmentHost, call_peer: PeerCall):
        self.host = host
        self.call_peer = call_peer

    def apply(self, op: Op) -> Answer:
        """Forward through this host's segments, the rest of the chain, then backward
        and step here; answer with the input gradient and the chain's loss."""
        head = op.head
        assert isinstance(head, worker_pb2.ForwardRequest)
        if head.HasField("loss") or head.HasField("data"):
            raise InvalidArgument("a chained forward carries neither rows nor a loss")
        if not ops.forward_mode_trains(head.mode):
            raise InvalidArgument("only training forwards are chained")
        if op.tensor is None:
            raise InvalidArgument("a chained forward needs its input")
        hop, rest = head.chain[0], head.chain[1:]
        run = self.host.runs.get(head.run_id)
        peer = None if run is None else run.peers.get(hop.host)
        if peer is None:
            raise FailedPrecondition(
                f"run {head.run_id[:64]!r} names no address for host {hop.host[:64]!r}: its "
                "LoadSegment gave this worker no such peer"
            )
        own = worker_pb2.ForwardRequest()
        own.CopyFrom(head)
        del own.chain[:]
        before = self.host.pending_batches(head.run_id)
        output = ops.apply_forward(self.host, Op(OpKind.FORWARD, own, op.tensor)).tensor
        onward = worker_pb2.ForwardRequest(
            run_id=head.run_id,
            segments=hop.segments,
            batch_id=head.batch_id,
            mode=head.mode,
            micro_batch=head.micro_batch,
            chain=rest,
            wire=head.wire,
        )
        try:
            reply = self.call_peer(hop.host, peer, Op(OpKind.FORWARD, onward, output))
            if reply.tensor is None:
                raise FailedPrecondition(
                    f"host {hop.host[:64]!r} answered a chained forward without a gradient"
                )
        except BaseException:
            # This batch's forward here awaits a backward that will not come: undo it,
            # so that a retry runs it again and the pending cap does not fill up.
            self.host.discard_batches(head.run_id, {head.batch_id}, keep=before)
            raise
        grad = self.host.backward(
            head.run_id, list(head.segments), head.batch_id, reply.tensor, True, head.micro_batch
        )
        response = worker_pb2.ForwardResponse(batch_id=head.batch_id, micro_batch=head.micro_batch)
        response.loss.CopyFrom(reply.message.loss)
        return Answer(response, grad, "input_grad")
