"""THE way a content route sends stored bytes, the same on the local folder and on S3.

A download is a sequence of pieces, each a stored object or a few bytes made here (a tar
header): one object for a dataset or a model file, headers and objects for a model's ``.tar``.
Its size is known before the first byte, so one code path answers ``Range`` (206 with
``Content-Range``, 416 past the end) for every route and backend, reading each object through
``store.open_read(key, start=, length=)``. The first object is opened before the response
starts: a missing object is a 404 and an unreachable bucket a 503, never a cut-off 200. The
bytes go out through the same ``send`` as any response, so the edge gate's send timeout and the
stalled-socket abort (``app.api.serving``) apply unchanged.

With ``storage_presigned_downloads`` a route that has authorised the caller answers a redirect
to a short-lived presigned URL instead, where the store has them (S3).
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any, BinaryIO
from urllib.parse import quote

import anyio.to_thread
from fastapi import Request
from fastapi.responses import RedirectResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from app.api.errors import render
from app.errors import NotFound
from app.settings import Settings
from app.store import CHUNK, ObjectInfo, ObjectNotFound, Store

Piece = bytes | ObjectInfo
"""Bytes made here (a tar header), or the whole stored object ``key`` of ``size`` bytes."""


@dataclass(frozen=True)
class Download:
    pieces: Sequence[Piece]
    media_type: str = "application/octet-stream"
    filename: str | None = None
    etag: str | None = None
    """A strong validator (quoted), so ``If-Range`` can resume only the same bytes."""
    modified: float | None = None
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return sum(len(p) if isinstance(p, bytes) else p.size for p in self.pieces)


def stored_object(
    store: Store,
    key: str,
    *,
    filename: str | None,
    sha256: str | None = None,
    headers: dict[str, str] | None = None,
    missing: str = "The file's bytes are gone.",
) -> Download:
    """The object ``key`` as a download (its size and date from ``store.stat``).

    Raises:
        NotFound: no object under ``key`` (deleted meanwhile).
    """
    info = store.stat(key)
    if info is None:
        raise NotFound(missing, code="file.not_found")
    return Download(
        [info],
        filename=filename,
        etag=f'"{sha256}"' if sha256 else _etag(f"{key}:{info.size}:{info.modified}"),
        modified=info.modified,
        headers=headers or {},
    )


def presigned(settings: Settings, store: Store, key: str, filename: str | None) -> Response | None:
    """A 307 to a presigned URL of ``key`` when the deployment asks for them and the store has
    them; None otherwise. Call it only once the caller is authorised for the object."""
    if not settings.storage_presigned_downloads:
        return None
    url = store.presign_get(key, filename=filename)
    return None if url is None else RedirectResponse(url, status_code=307)


MAX_RANGES = 20
"""More ranges than this in one request are answered with the whole content."""


def respond(request: Request, store: Store, download: Download) -> Response:
    """The download as a 200, or what a ``Range`` header asks for as a 206: one range, or
    several as ``multipart/byteranges`` (416 when none is inside the content). Call it from a
    sync route (it opens the first object, in the threadpool).

    Raises:
        NotFound: an object of the download is missing.
        StorageUnavailable: the store cannot be reached (a 503 before any byte is sent).
    """
    size = download.size
    headers = {"Accept-Ranges": "bytes", **download.headers}
    if download.etag:
        headers["ETag"] = download.etag
    if download.modified is not None:
        headers["Last-Modified"] = formatdate(download.modified, usegmt=True)
    if download.filename:
        headers["Content-Disposition"] = _disposition(download.filename)
    spans, tail = [(b"", 0, size)], b""
    media_type, status = download.media_type, 200
    wanted = request.headers.get("range")
    ranges = parse_ranges(wanted, size) if wanted else None
    if ranges is not None and _if_range_holds(request.headers.get("if-range"), download):
        status = 206
        if not ranges:
            return render(
                416,
                f"The range is outside the content's {size} bytes.",
                code="range_not_satisfiable",
                headers={"Content-Range": f"bytes */{size}"},
            )
        if len(ranges) == 1:
            (start, end) = ranges[0]
            spans = [(b"", start, end)]
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
        else:
            boundary = secrets.token_hex(13)
            spans = [
                (_part_head(boundary, download.media_type, span, size, first=i == 0), *span)
                for i, span in enumerate(ranges)
            ]
            tail = f"\r\n--{boundary}--\r\n".encode("latin-1")
            media_type = f"multipart/byteranges; boundary={boundary}"
    length = sum(len(head) + end - start for head, start, end in spans) + len(tail)
    headers["Content-Length"] = str(length)
    first = _open_first(store, download.pieces, spans)
    return _ClosingResponse(
        _stream(store, download.pieces, spans, tail, first),
        status_code=status,
        media_type=media_type,
        headers=headers,
    )


class _ClosingResponse(StreamingResponse):
    """A streamed response that closes its body generator however sending ends: a reader that
    went away or stalled releases its file or S3 connection at once, not when the generator is
    garbage collected."""

    def __init__(self, body: AsyncGenerator[bytes, None], **kwargs: Any) -> None:
        super().__init__(body, **kwargs)
        self._body = body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await self._body.aclose()


def parse_ranges(value: str, size: int) -> list[tuple[int, int]] | None:
    """The ``bytes=`` ranges inside the content as ``(start, end)`` (end exclusive), sorted and
    merged where they overlap; ``[]`` when none is (416); None for a header that is ignored
    (another unit, bad syntax, too many ranges), as RFC 9110 allows."""
    unit, _, specs = value.partition("=")
    parts = specs.split(",")
    if unit.strip().lower() != "bytes" or len(parts) > MAX_RANGES:
        return None
    ranges = []
    for part in parts:
        first, dash, last = part.strip().partition("-")
        if not dash or not (first or last) or not (first or "0").isdigit():
            return None
        if last and not last.isdigit():
            return None
        if not first:  # the last N bytes
            if int(last) > 0 and size > 0:
                ranges.append((max(0, size - int(last)), size))
            continue
        start = int(first)
        if last and int(last) < start:
            return None
        if start < size:
            ranges.append((start, size if not last else min(size, int(last) + 1)))
    merged: list[tuple[int, int]] = []
    for start, end in sorted(ranges):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def _if_range_holds(value: str | None, download: Download) -> bool:
    """Whether a ``Range`` applies: no ``If-Range``, or one naming these very bytes (the ETag,
    or the exact Last-Modified date)."""
    if value is None:
        return True
    value = value.strip()
    if value.startswith(('"', "W/")):
        return download.etag is not None and value == download.etag
    return download.modified is not None and value == formatdate(download.modified, usegmt=True)


def _open_first(
    store: Store, pieces: Sequence[Piece], spans: Sequence[tuple[bytes, int, int]]
) -> BinaryIO | None:
    """The first object the response reads, opened now (so a failure is an error answer)."""
    for _, start, end in spans:
        for piece, offset, lo, hi in _windows(pieces, start, end):
            if isinstance(piece, ObjectInfo):
                return _open(store, piece, lo - offset, hi - lo)
    return None


def _open(store: Store, piece: ObjectInfo, start: int, length: int) -> BinaryIO:
    try:
        return store.open_read(piece.key, start=start, length=length)
    except ObjectNotFound:
        raise NotFound("The file's bytes are gone.", code="file.not_found") from None


def _windows(pieces: Sequence[Piece], start: int, end: int) -> list[tuple[Piece, int, int, int]]:
    """Each piece the byte window ``[start, end)`` touches: the piece, its offset, and the part
    of the window inside it."""
    out, offset = [], 0
    for piece in pieces:
        size = len(piece) if isinstance(piece, bytes) else piece.size
        lo, hi = max(start, offset), min(end, offset + size)
        if lo < hi:
            out.append((piece, offset, lo, hi))
        offset += size
    return out


async def _stream(
    store: Store,
    pieces: Sequence[Piece],
    spans: Sequence[tuple[bytes, int, int]],
    tail: bytes,
    first: BinaryIO | None,
) -> AsyncGenerator[bytes, None]:
    """Each span's head (a multipart part header) then its bytes, then ``tail``. Reads run in a
    thread, and every handle is closed however the response ends (served, the client gone, the
    send timeout)."""
    handle = first
    try:
        for head, start, end in spans:
            if head:
                yield head
            for piece, offset, lo, hi in _windows(pieces, start, end):
                if isinstance(piece, bytes):
                    yield piece[lo - offset : hi - offset]
                    continue
                if handle is None:
                    handle = await anyio.to_thread.run_sync(
                        _open, store, piece, lo - offset, hi - lo
                    )
                left = hi - lo
                while left > 0:
                    data = await anyio.to_thread.run_sync(handle.read, min(CHUNK, left))
                    if not data:  # shorter than stated: end the response short, not padded
                        raise RuntimeError(f"stored object {piece.key} ended early")
                    left -= len(data)
                    yield data
                handle.close()
                handle = None
        if tail:
            yield tail
    finally:
        if handle is not None:
            handle.close()


def _part_head(
    boundary: str, media_type: str, span: tuple[int, int], size: int, *, first: bool
) -> bytes:
    """The header of one part of a ``multipart/byteranges`` body (after the previous part's
    bytes and their line break)."""
    start, end = span
    lead = "" if first else "\r\n"
    return (
        f"{lead}--{boundary}\r\nContent-Type: {media_type}\r\n"
        f"Content-Range: bytes {start}-{end - 1}/{size}\r\n\r\n"
    ).encode("latin-1")


def _disposition(filename: str) -> str:
    quoted = quote(filename)
    if quoted != filename:
        return f"attachment; filename*=utf-8''{quoted}"
    return f'attachment; filename="{filename}"'


def etag_of(pieces: Sequence[Piece]) -> str:
    """A validator for a download made of pieces: their bytes, keys, sizes and dates."""
    digest = hashlib.sha256()
    for piece in pieces:
        if isinstance(piece, bytes):
            digest.update(piece)
        else:
            digest.update(f"{piece.key}:{piece.size}:{piece.modified}".encode())
    return '"' + digest.hexdigest()[:32] + '"'


def _etag(text: str) -> str:
    return '"' + hashlib.sha256(text.encode()).hexdigest()[:32] + '"'
