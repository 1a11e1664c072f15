"""The error vocabulary of the domain. Stable ``code``s; no HTTP here (see ``app.api.errors``)."""

from __future__ import annotations

SHOWN_ID_CHARS = 40


def shown(value: str) -> str:
    """A caller's id or name as an error message may echo it: at most a short prefix, so a
    404 never reflects a long hostile string back."""
    return value if len(value) <= SHOWN_ID_CHARS else value[:SHOWN_ID_CHARS] + "…"


class GristmillError(Exception):
    code = "internal_error"

    def __init__(self, message: str, *, code: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code


class InvalidInput(GristmillError):
    code = "invalid_input"


class InvalidParameter(InvalidInput):
    """A well-formed value that cannot be accepted here (out of range, too big for the queue's
    devices): answered like schema errors."""

    code = "invalid_parameter"


class NotFound(GristmillError):
    code = "not_found"


class Conflict(GristmillError):
    code = "conflict"


class InvalidState(GristmillError):
    """The object exists but is in a state that does not allow the operation."""

    code = "invalid_state"


class Unauthorized(GristmillError):
    code = "unauthorized"


class Forbidden(GristmillError):
    """The caller is known but its key may not do this (a key that is not an admin key)."""

    code = "forbidden"


class PayloadTooLarge(GristmillError):
    code = "payload_too_large"


class ServiceUnavailable(GristmillError):
    code = "service_unavailable"


class QuotaExceeded(GristmillError):
    """The tenant is at one of its quotas (active jobs, storage); the request is refused."""

    code = "quota_exceeded"


class RateLimited(GristmillError):
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after: int, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after


class RequestTimeout(GristmillError):
    """The client stopped sending its request body."""

    code = "request_timeout"
