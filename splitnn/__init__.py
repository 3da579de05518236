"""splitnn: split learning over gRPC.

Importing any splitnn package first sets how gRPC's core moves bytes (see
splitnn.transport.grpc_env); that must happen before gRPC starts, hence here.
"""

from splitnn.transport import grpc_env as _grpc_env

_grpc_env.apply()
