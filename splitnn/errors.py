"""Every error splitnn raises on purpose, in one tree under SplitnnError, and the one
table that maps them to gRPC status codes.

The plain classes (segment host, config, readers...) raise these; the worker's
servicer answers each with the status code STATUS_CODES gives it, so the code a
caller sees is decided here and nowhere else.
"""

from __future__ import annotations

import grpc


class SplitnnError(Exception):
    """Base of every error splitnn raises on purpose."""


# ---- what a request gets refused for (each maps to a status code) -------------------


class InvalidArgument(SplitnnError):
    """The request itself is malformed: bad tensor, wrong shape, unknown layer..."""


class NotFound(SplitnnError):
    """The request names a segment, dataset or batch this worker does not have."""


class AlreadyExists(SplitnnError):
    """A segment with that run and index is already loaded."""


class FailedPrecondition(SplitnnError):
    """The request is well formed but the state does not allow it (Backward before Forward)."""


class ResourceExhausted(SplitnnError):
    """A configured cap on size, memory or segment count would be exceeded."""


class PermissionDenied(SplitnnError):
    """The caller is known but may not touch this resource."""


class Unauthenticated(SplitnnError):
    """The caller did not prove who it is."""


class NumericalError(SplitnnError):
    """A loss or gradient became NaN or Inf; training stops instead of spreading it."""


STATUS_CODES: dict[type[SplitnnError], grpc.StatusCode] = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    NumericalError: grpc.StatusCode.FAILED_PRECONDITION,
    ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
}


def status_code(err: BaseException) -> grpc.StatusCode:
    """The status code an error maps to (INTERNAL for anything unexpected)."""
    for kind in type(err).__mro__:
        if kind in STATUS_CODES:
            return STATUS_CODES[kind]
    return grpc.StatusCode.INTERNAL


def reply_code(err: BaseException) -> grpc.StatusCode:
    """The status a worker answers an error with: ABORTED when a peer it called failed
    (its caller must not retry the whole call for a peer already retried), else the
    error's own code."""
    if isinstance(err, WorkerError):
        return grpc.StatusCode.ABORTED
    return status_code(err)


# ---- what a caller of a worker sees ----------------------------------------------------


class WorkerError(SplitnnError):
    """A worker refused or failed a call; carries its name, the call and the status."""

    def __init__(self, worker: str, call: str, code, details: str):
        self.worker, self.call, self.code, self.details = worker, call, code, details
        name = code.name if code is not None else "UNKNOWN"
        super().__init__(f"worker {worker}: {call} failed with {name}: {details}")


class RunError(SplitnnError):
    """The run cannot go on; the message names the worker and where it stopped."""


class HealthError(SplitnnError):
    """One or more workers are not healthy; `problems` maps worker name to the reason."""

    def __init__(self, problems: dict[str, str], waited: float):
        self.problems = dict(problems)
        self.waited = waited
        names = ", ".join(sorted(problems))
        details = "; ".join(f"{name}: {why}" for name, why in sorted(problems.items()))
        super().__init__(f"worker(s) not healthy after {waited:.1f}s: {names} ({details})")


class LaunchError(SplitnnError):
    """A local worker did not start."""


# ---- settings and files that cannot be used as given -----------------------------------


class ConfigError(SplitnnError):
    """A config file that cannot be run as written."""


class SecurityError(SplitnnError):
    """Security settings that cannot be used as given."""


class CheckpointError(SplitnnError):
    """A run directory holds no checkpoint, or one that cannot be read."""


class CertError(SplitnnError):
    """A certificate or key cannot be made or read as asked."""


class DataError(SplitnnError, ValueError):
    """A dataset file, source or partition is missing, malformed or not what it says it
    is. Also a ValueError, as the readers' callers have always caught it."""
