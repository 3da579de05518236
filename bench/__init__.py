"""Benchmarks of splitnn against one process and torch.distributed.rpc.

Every bench process keeps the memory it frees, as every worker does
(splitnn.memory): the one-process and torch rpc baselines run on the same allocator
settings as splitnn, so no ratio comes from them. SPLITNN_KEEP_MEMORY=0 sets it
off everywhere.
"""

import splitnn  # noqa: F401  (gRPC core settings before gRPC starts: splitnn.transport.grpc_env)
from splitnn.memory import keep_freed_memory

keep_freed_memory()
