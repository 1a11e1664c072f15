"""A streamed multipart upload as the upload flows take it (``app.flows.uploads``).

The HTTP side only: the size ``Content-Length`` declares (413 at once when it is over the
limit) and the body's chunks, with a client that went away turned into a clean error.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import Request
from starlette.requests import ClientDisconnect

from app.errors import InvalidInput, PayloadTooLarge
from app.flows.uploads import Body

MULTIPART_SLACK = 64 * 1024  # boundaries and part headers around the file


def upload_body(request: Request, limit: int) -> Body:
    """The request's body as an upload.

    Raises:
        PayloadTooLarge: the declared body is larger than the limit allows.
    """
    return Body(
        chunks=_chunks(request),
        content_type=request.headers.get("content-type", ""),
        declared_bytes=declared_size(request, limit),
    )


def declared_size(request: Request, limit: int) -> int:
    """The file size the ``Content-Length`` implies (0 if none); 413 at once when over the limit.

    Raises:
        PayloadTooLarge: the declared body is larger than the limit allows.
    """
    text = request.headers.get("content-length", "")
    length = int(text) if text.isdigit() else None
    if length is not None and length > limit + MULTIPART_SLACK:
        raise PayloadTooLarge(f"The upload is larger than the limit of {limit} bytes.")
    return max(0, (length or 0) - MULTIPART_SLACK)


async def _chunks(request: Request) -> AsyncIterator[bytes]:
    try:
        async for chunk in request.stream():
            yield chunk
    except ClientDisconnect:
        raise InvalidInput("The client disconnected before the upload finished.") from None
