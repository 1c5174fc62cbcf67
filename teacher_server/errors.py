"""Request errors, free of grpc: the servicer maps each class to its status code."""


class ServiceError(Exception):
    """Base class: the message is shown to the caller, so it says what to change."""


class InvalidRequest(ServiceError):
    """The request itself is wrong (INVALID_ARGUMENT)."""


class Overloaded(ServiceError):
    """A queue, rate or size limit was hit; retry later or send less (RESOURCE_EXHAUSTED).

    `retry_after_s` is when a retry may succeed (sent to the client as gRPC's retry pushback;
    None: no hint); `reason` labels the rejection in the metrics."""

    def __init__(self, message: str, retry_after_s: float | None = None, reason: str = "queue_full"):
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.reason = reason


class Unavailable(ServiceError):
    """The server is warming up or draining; retry, possibly elsewhere (UNAVAILABLE)."""


class NotSupported(ServiceError):
    """The rpc or option is not served by this backend (UNIMPLEMENTED)."""


class Unauthenticated(ServiceError):
    """No token, or one the server does not know (UNAUTHENTICATED)."""


class PermissionDenied(ServiceError):
    """The tenant may not call this rpc (PERMISSION_DENIED)."""


class Expired(ServiceError):
    """The request's deadline passed while it waited in the queue (DEADLINE_EXCEEDED)."""
