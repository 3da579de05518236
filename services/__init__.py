"""The worker (installed as splitnn.services): the segment host and its per-batch
state, the servicer that adapts gRPC to it, the driver that runs a data owner's
chain, and the `splitnn-worker` server."""
