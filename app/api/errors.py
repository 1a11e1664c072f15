"""THE error mapping: exception → HTTP status and an OpenAI-style envelope.

Every error body is ``{"error": {"message", "type", "param", "code"}}``: domain errors, request
validation, unknown routes and unexpected exceptions alike (a 500 carries only a request id; the
traceback goes to the log). Every message passes ``app.errors.public_message`` (no server path).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import DataError, DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException

from app import errors
from app.logging import current_context
from app.store.errors import StorageUnavailable
from pipeline.configs.base import ConfigError

log = logging.getLogger(__name__)

STATUS: dict[type[errors.GristmillError], int] = {
    errors.InvalidInput: 400,
    errors.InvalidParameter: 422,
    errors.InvalidState: 400,
    errors.Unauthorized: 401,
    errors.QuotaExceeded: 403,
    errors.Forbidden: 403,
    errors.NotFound: 404,
    errors.RequestTimeout: 408,
    errors.Conflict: 409,
    errors.PayloadTooLarge: 413,
    errors.RateLimited: 429,
    errors.ServiceUnavailable: 503,
}


OPENAI_PATHS = ("/v1/files", "/v1/fine_tuning", "/v1/completions", "/v1/chat/completions")


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


def error_type(status: int, code: str | None = None) -> str:
    if code == errors.Forbidden.code:
        return "permission_error"
    if status == 401:
        return "authentication_error"
    if status == 403:
        return "quota_error"
    if status == 429:
        return "rate_limit_error"
    if status == 503:
        return "service_unavailable"
    if status >= 500:
        return "server_error"
    return "invalid_request_error"


def render(
    status: int,
    message: str,
    *,
    code: str | None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    kind = error_type(status, code)
    message = errors.public_message(message)
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    if status == 401:
        headers = {**(headers or {}), "WWW-Authenticate": "Bearer"}
    if status == 503:
        headers = {"Retry-After": str(RETRY_AFTER_UNAVAILABLE_S), **(headers or {})}
    return JSONResponse(body, status_code=status, headers=headers)


RETRY_AFTER_UNAVAILABLE_S = 2


def render_exception(exc: errors.GristmillError, *, openai: bool = False) -> JSONResponse:
    headers = None
    if isinstance(exc, errors.RateLimited):
        headers = {"Retry-After": str(exc.retry_after)}
    status = _status_for(exc)
    if openai and status in (409, 422):
        status = 400  # the OpenAI SDK retries a 409 and does not expect a 422
    return render(status, exc.message, code=exc.code, param=exc.param, headers=headers)


def pool_exhausted() -> JSONResponse:
    return render(
        503,
        "The service is busy (no free database connection); retry shortly.",
        code="db_busy",
    )


def _status_for(exc: errors.GristmillError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500


def _validation_param(error: dict[str, Any]) -> str | None:
    ctx_error = (error.get("ctx") or {}).get("error")
    loc = [
        str(part)
        for part in error.get("loc", ())
        if part not in ("body", "query", "path", "header")
    ]
    if isinstance(ctx_error, ConfigError):  # raised by the config object at ``loc``
        loc = [*loc, ctx_error.field]
    return ".".join(loc) or None


def _validation_message(error: dict[str, Any], param: str | None) -> str:
    ctx_error = (error.get("ctx") or {}).get("error")
    if isinstance(ctx_error, ConfigError):
        return f"Invalid value for '{param}': {ctx_error.message}"
    message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
    return f"Invalid value for '{param}': {message}" if param else message


def install(app: FastAPI) -> None:
    @app.exception_handler(errors.GristmillError)
    async def _domain(request: Request, exc: errors.GristmillError) -> JSONResponse:
        return render_exception(exc, openai=request.url.path.startswith(OPENAI_PATHS))

    @app.exception_handler(PoolTimeout)
    async def _pool(_: Request, exc: PoolTimeout) -> JSONResponse:
        log.warning("database pool exhausted: %s", exc)
        return pool_exhausted()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first: dict[str, Any] = dict(exc.errors()[0]) if exc.errors() else {}
        if first.get("type") == "json_invalid":
            return render(400, "The request body is not valid JSON.", code="invalid_json")
        param = _validation_param(_without_union_tag(first, exc.body))
        # The OpenAI SDK expects 400 for an invalid request on the surface it knows.
        openai_surface = request.url.path.startswith(OPENAI_PATHS)
        return render(
            400 if openai_surface else 422,
            _validation_message(first, param),
            code="invalid_" + ("parameter" if param else "request"),
            param=param,
        )

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        message = "Unknown route." if exc.status_code == 404 else str(exc.detail)
        headers = getattr(exc, "headers", None)
        if exc.status_code == 405:
            headers = {**(headers or {}), "Allow": _allowed_methods(request)}
        return render(exc.status_code, message, code=code, headers=headers)

    @app.exception_handler(DBAPIError)
    async def _database(request: Request, exc: DBAPIError) -> JSONResponse:
        if isinstance(exc, DataError):  # a value the column cannot hold (out of range, …)
            log.info("database refused a value: %s", exc.orig)
            return render(
                422,
                "A value in the request is outside what can be stored or compared.",
                code="invalid_parameter",
            )
        if exc.connection_invalidated or _is_connectivity(exc):
            log.warning("database unavailable: %s", exc.orig)
            return render(503, "The database is unavailable; retry shortly.", code="db_unavailable")
        return _internal(request, exc)

    @app.exception_handler(StorageUnavailable)
    async def _storage(_: Request, exc: StorageUnavailable) -> JSONResponse:
        # The endpoint's address and the failed operation are the operator's, not the client's.
        log.warning("artifact store unavailable: %s", exc.message)
        return render(
            503,
            "The artifact store is unavailable; nothing was stored. Retry shortly.",
            code=exc.code,
            headers={"Retry-After": str(exc.retry_after_s)},
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        return _internal(request, exc)


def _internal(request: Request, exc: Exception) -> JSONResponse:
    # This handler runs outside the middleware that binds the request id: read it from the scope.
    request_id = getattr(request.state, "request_id", None) or current_context().get(
        "request_id", "unknown"
    )
    log.error("unhandled error (request %s)", request_id, exc_info=exc)
    public = errors.internal_error(f"request id {request_id}")
    return render(500, public.message, code=public.code, headers={"X-Request-ID": request_id})


def _allowed_methods(request: Request) -> str:
    """Every method some route serves at this path (Starlette names only the first route's)."""
    from starlette.routing import Match

    methods: set[str] = set()
    for route in request.app.router.routes:
        match, _ = route.matches({**request.scope, "method": "GET"})
        if match != Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    return ", ".join(sorted(methods))


def _is_connectivity(exc: DBAPIError) -> bool:
    from sqlalchemy.exc import InterfaceError, OperationalError

    return isinstance(exc, OperationalError | InterfaceError)


def _without_union_tag(error: dict[str, Any], body: Any) -> dict[str, Any]:
    """A discriminated union puts the tag in the location (body.probe.params.x): drop it."""
    loc = tuple(error.get("loc", ()))
    if len(loc) > 1 and loc[0] == "body" and isinstance(body, dict) and loc[1] == body.get("type"):
        return {**error, "loc": (loc[0], *loc[2:])}
    return error
