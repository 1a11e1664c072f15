"""Receiving a multipart upload as a stream: flat memory, hashed on the way, atomic in the store.

Starlette's form parser spools the whole body before a handler runs and puts no limit on file
parts, so Gristmill parses the multipart stream itself: each chunk of the ``file`` part goes
straight into the store's :class:`~app.store.Writer` (a temporary file, or an S3 multipart
upload), and the byte counter stops an oversized stream as soon as it crosses the limit. Nothing
becomes visible unless the whole body arrived and the caller commits it.
"""

from __future__ import annotations

import asyncio
import contextlib
import unicodedata
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import anyio.to_thread
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from app.errors import InvalidInput, PayloadTooLarge
from app.store import Writer

FLUSH_BYTES = 1024 * 1024
MAX_FIELD_BYTES = 4096
MAX_HEADER_BYTES = 16 * 1024  # room for long (hostile) filenames, which are then truncated
FILE_FIELD = "file"
TEXT_FIELDS = frozenset({"name", "split", "column", "sha256", "purpose"})


@dataclass
class Upload:
    """A received upload, in the store's writer until ``writer.commit()``."""

    writer: Writer
    filename: str | None = None
    fields: dict[str, str] = field(default_factory=dict)
    saw_file: bool = False
    complete: bool = False  # the closing boundary arrived: the client sent the whole body


def clean_filename(raw: str | None) -> str | None:
    """The client's filename as harmless metadata: no path, no control or format characters."""
    if not raw:
        return None
    name = raw.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C")
    name = name.strip().strip(".")[:255]
    return name or None


class _Receiver:
    def __init__(self, upload: Upload, max_bytes: int) -> None:
        self.upload, self.max_bytes = upload, max_bytes
        self.header_field = bytearray()
        self.header_value = bytearray()
        self.disposition = b""
        self.part: str | None = None
        self.field_value = bytearray()
        self.pending: list[bytes | memoryview] = []
        self.pending_bytes = 0
        self.file_bytes = 0

    def callbacks(self) -> dict[str, object]:
        return {
            "on_part_begin": self.on_part_begin,
            "on_header_field": lambda d, s, e: self.header_field.extend(d[s:e]),
            "on_header_value": lambda d, s, e: self.header_value.extend(d[s:e]),
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
            "on_end": self.on_end,
        }

    def on_end(self) -> None:
        self.upload.complete = True

    def on_part_begin(self) -> None:
        self.disposition, self.part = b"", None
        self.field_value.clear()

    def on_header_end(self) -> None:
        if bytes(self.header_field).lower() == b"content-disposition":
            self.disposition = bytes(self.header_value)
        self.header_field.clear()
        self.header_value.clear()

    def on_headers_finished(self) -> None:
        _, params = parse_options_header(self.disposition)
        name = params.get(b"name", b"").decode("utf-8", "replace")
        if name == FILE_FIELD:
            if self.upload.saw_file:
                raise InvalidInput("Send exactly one 'file' part.", param="file")
            self.upload.saw_file = True
            raw = params.get(b"filename", b"").decode("utf-8", "replace")
            self.upload.filename = clean_filename(raw)
        elif name not in TEXT_FIELDS:
            raise InvalidInput(f"Unexpected form field '{name[:50]}'.", param=name[:50] or None)
        self.part = name

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self.part == FILE_FIELD:
            self.file_bytes += end - start
            if self.file_bytes > self.max_bytes:
                raise PayloadTooLarge(
                    f"The file is larger than the limit of {self.max_bytes} bytes.", param="file"
                )
            # Keep a view of the caller's chunk rather than copying it. The parser sometimes hands
            # over its own reusable buffer (a partial boundary that was not one): copy that.
            if isinstance(data, bytes):
                self.pending.append(memoryview(data)[start:end])
            else:
                self.pending.append(bytes(data[start:end]))
            self.pending_bytes += end - start
        else:
            self.field_value.extend(data[start:end])
            if len(self.field_value) > MAX_FIELD_BYTES:
                raise InvalidInput(f"Form field '{self.part}' is too long.", param=self.part)

    def take(self) -> list[bytes | memoryview]:
        pieces, self.pending, self.pending_bytes = self.pending, [], 0
        return pieces

    def on_part_end(self) -> None:
        if self.part in TEXT_FIELDS:
            try:
                value = self.field_value.decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidInput(
                    f"Form field '{self.part}' is not UTF-8.", param=self.part
                ) from None
            if "\x00" in value:
                raise InvalidInput(f"Form field '{self.part}' contains NUL.", param=self.part)
            self.upload.fields[self.part] = value


async def receive(
    chunks: AsyncIterator[bytes], *, content_type: str, writer: Writer, max_bytes: int
) -> Upload:
    """Stream a ``multipart/form-data`` body into ``writer``. The caller commits or aborts it.

    Raises:
        InvalidInput: not multipart, no ``file`` part, unexpected or malformed fields.
        PayloadTooLarge: the file part exceeded ``max_bytes``.
    """
    kind, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        raise InvalidInput(
            "Upload the file as multipart/form-data with a 'file' part.", param="file"
        )
    upload = Upload(writer=writer)
    receiver = _Receiver(upload, max_bytes)
    parser = MultipartParser(
        boundary,
        receiver.callbacks(),  # type: ignore[arg-type]
        max_header_size=MAX_HEADER_BYTES,
    )
    writes = _BackgroundWrites(writer)
    try:
        async for chunk in chunks:
            parser.write(chunk)
            if receiver.pending_bytes >= FLUSH_BYTES:
                await writes.submit(receiver.take())
        parser.finalize()
        await writes.submit(receiver.take())
        await writes.wait()
    except FormParserError as err:
        raise InvalidInput(f"Malformed multipart body: {err}") from None
    finally:
        await writes.drain()
    if not upload.complete:
        raise InvalidInput("The upload ended before the multipart body was complete.")
    if not upload.saw_file:
        raise InvalidInput("The request has no 'file' part.", param="file")
    return upload


class _BackgroundWrites:
    """Store writes (and hashing) in a worker thread, one batch in flight while parsing goes on.

    At most two batches of ``FLUSH_BYTES`` are held at once, so memory stays flat whatever the
    upload's size.
    """

    def __init__(self, writer: Writer) -> None:
        self.writer = writer
        self.in_flight: asyncio.Future[None] | None = None

    def _write(self, pieces: list[bytes | memoryview]) -> None:
        for piece in pieces:
            self.writer.write(piece)

    async def submit(self, pieces: list[bytes | memoryview]) -> None:
        await self.wait()
        if pieces:
            self.in_flight = asyncio.ensure_future(anyio.to_thread.run_sync(self._write, pieces))

    async def wait(self) -> None:
        in_flight, self.in_flight = self.in_flight, None
        if in_flight is not None:
            await in_flight

    async def drain(self) -> None:
        """On the way out, even when failing: never leave a write running into an aborted file."""
        with anyio.CancelScope(shield=True):
            with contextlib.suppress(Exception):
                await self.wait()
