"""splitnn: split learning over gRPC.

Importing any splitnn package first sets how gRPC's core moves bytes (see
splitnn.transport.grpc_env); that must happen before gRPC starts, hence here.
"""

from splitnn.transport import grpc_env as _grpc_env

_grpc_env.apply()

# The Python API (splitnn.api), imported on first use: `import splitnn` stays free of
# torch, so that the CLI can start local workers before it imports torch itself.
_API = ("train", "load_model")


def __getattr__(name: str):
    if name in _API:
        from splitnn import api

        return getattr(api, name)
    raise AttributeError(f"module 'splitnn' has no attribute {name!r}")
