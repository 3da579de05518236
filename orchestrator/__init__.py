"""The splitnn orchestrator and CLI."""

import splitnn  # noqa: F401  (gRPC core settings before gRPC starts: splitnn.grpc_env)
