"""Request errors, free of grpc: the servicer maps each class to its status code."""


class ServiceError(Exception):
    """Base class: the message is shown to the caller, so it says what to change."""


class InvalidRequest(ServiceError):
    """The request itself is wrong (INVALID_ARGUMENT)."""


class Overloaded(ServiceError):
    """A queue or size limit was hit; retry later or send less (RESOURCE_EXHAUSTED)."""


class Unavailable(ServiceError):
    """The server is warming up or draining; retry, possibly elsewhere (UNAVAILABLE)."""


class NotSupported(ServiceError):
    """The rpc or option is not served by this backend (UNIMPLEMENTED)."""
