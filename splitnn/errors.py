"""Domain errors raised by the plain classes; the servicer maps each to a status code."""


class SplitnnError(Exception):
    """Base of every error splitnn raises on purpose."""


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
