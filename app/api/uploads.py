"""Streamed multipart uploads (datasets, models): one way to receive a file into the store.

No database connection is held while the body streams: the key was checked at the edge, and the
session is used only briefly, for the storage quota before and after, and to register the file.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import Request
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from app.datasets import upload
from app.errors import InvalidInput, PayloadTooLarge
from app.settings import Settings
from app.storage import AtomicWriter, LocalStore
from app.tenants import quotas

MULTIPART_SLACK = 64 * 1024  # boundaries and part headers around the file


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


def quota_check(
    session: Session, settings: Settings, tenant_id: str
) -> Callable[[int], Awaitable[None]]:
    """An async check that ``adding`` bytes keep the tenant under its storage quota."""

    def check(adding: int) -> None:
        try:
            quotas.check_storage_quota(
                session=session,
                tenant_id=tenant_id,
                limit=settings.quota_storage_bytes,
                adding=adding,
            )
        finally:
            session.close()  # hand the connection back before (or after) the stream

    async def run(adding: int) -> None:
        await run_in_threadpool(check, adding)

    return run


async def receive_file(
    request: Request, store: LocalStore, key: str, limit: int, *, code: str
) -> tuple[upload.Upload, AtomicWriter]:
    """The streamed ``file`` part, checked against a declared SHA-256 and committed at ``key``.

    Raises:
        InvalidInput: not multipart, a cut-off body, or a SHA-256 that does not match
            (``<code>.checksum_mismatch``).
        PayloadTooLarge: the file grew past ``limit``.
    """
    with store.open_write(key) as writer:
        try:
            received = await upload.receive(
                request.stream(),
                content_type=request.headers.get("content-type", ""),
                writer=writer,
                max_bytes=limit,
            )
        except ClientDisconnect:
            raise InvalidInput("The client disconnected before the upload finished.") from None
        declared = received.fields.get("sha256")
        if declared is not None and declared.lower() != writer.sha256:
            raise InvalidInput(
                f"The upload's SHA-256 is {writer.sha256}, not the declared {declared}.",
                code=f"{code}.checksum_mismatch",
                param="sha256",
            )
        await run_in_threadpool(writer.commit)
    return received, writer
