"""The splitnn worker: segment host, servicer, driver and server."""

import splitnn  # noqa: F401  (gRPC core settings before gRPC starts: splitnn.grpc_env)
