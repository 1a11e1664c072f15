"""The error vocabulary of the domain. Stable ``code``s; no HTTP here (see ``app.api.errors``)."""

from __future__ import annotations


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
    """A job parameter that is well-formed but impossible here (too big for the queue's devices)."""

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


class PayloadTooLarge(GristmillError):
    code = "payload_too_large"


class ServiceUnavailable(GristmillError):
    code = "service_unavailable"
