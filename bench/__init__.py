"""Benchmarks of splitnn against one process and torch.distributed.rpc."""

import splitnn  # noqa: F401  (gRPC core settings before gRPC starts: splitnn.transport.grpc_env)
