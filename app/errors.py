"""The error vocabulary of the domain. Stable ``code``s; no HTTP here (see ``app.api.errors``)."""

from __future__ import annotations

import re
from typing import Any

SHOWN_ID_CHARS = 40
MAX_MESSAGE = 500


def shown(value: str) -> str:
    """A caller's id or name as an error message may echo it: at most a short prefix, so a
    404 never reflects a long hostile string back."""
    return value if len(value) <= SHOWN_ID_CHARS else value[:SHOWN_ID_CHARS] + "…"


# An absolute server path of two segments or more (the storage dir, /tmp, site-packages); the
# API's own routes (/v1/…) and a URL's path are words for the client. A tenant may see a
# member's relative name only.
_PATH = re.compile(r"(?<![\w.~:/])/(?!v1/|rate/)(?:[^\s/:'\"()<>,;]+/)+[^\s/:'\"()<>,;]*")
_TRACEBACK = re.compile(r"Traceback \(most recent call last\).*", re.S)
_FRAME = re.compile(r'File "[^"]*", line \d+')


def public_message(message: str) -> str:
    """THE rule for any text a tenant reads of an error (API bodies, job errors and events, a
    refused model's or dataset's reasons): no server path, no traceback, at most
    ``MAX_MESSAGE`` characters. Libraries put paths in their messages (an OSError names its
    file); whatever a stage or a route wraps, this is applied where the text leaves us."""
    text = _TRACEBACK.sub("(details in the server log)", message)
    text = _FRAME.sub("(a frame)", text)
    text = _PATH.sub("<path>", text)
    if len(text) > MAX_MESSAGE:
        text = text[: MAX_MESSAGE - 1] + "…"
    return text


def public_reasons(errors: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    """A refused model's or dataset's ``errors`` list, each ``reason`` under the same rule."""
    if errors is None:
        return None
    return [{k: _public_value(k, v) for k, v in error.items()} for error in errors]


def _public_value(key: str, value: Any) -> Any:
    if key in ("reason", "message") and isinstance(value, str):
        return public_message(value)
    return value


def internal_error(reference: str) -> GristmillError:
    """What a tenant is told of an exception nobody mapped to a code: ``internal_error`` and the
    reference to quote (a request or job id). Its text and traceback go to the server log only.
    """
    return GristmillError(
        f"Internal error; quote {reference} when reporting it.", code="internal_error"
    )


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
