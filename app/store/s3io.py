"""The byte plumbing between Gristmill's streams and boto3's transfer manager.

s3transfer does the multipart protocol (parts, concurrency, retries, abort on failure); what it
lacks is a *push* interface: it pulls from a file object, while an HTTP upload pushes chunks as
they arrive. :class:`Pipe` joins the two with a bounded buffer, so memory stays at a few parts
whatever the object's size. Errors from botocore and s3transfer become the store's own
(:func:`translate`), so callers never see a boto exception.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import threading
from collections import deque
from typing import Any

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    IncompleteReadError,
    NoCredentialsError,
    NoRegionError,
    PartialCredentialsError,
)
from botocore.exceptions import ConnectionError as EndpointUnreachable
from s3transfer.exceptions import RetriesExceededError
from s3transfer.futures import TransferFuture
from s3transfer.subscribers import BaseSubscriber

from app.store.errors import (
    ObjectNotFound,
    StorageConfigError,
    StorageError,
    StorageUnavailable,
)

_HASH_CHUNK = 1024 * 1024
_NOT_FOUND = {"404", "NoSuchKey", "NotFound", "NoSuchUpload"}
_BUSY = {"SlowDown", "ServiceUnavailable", "RequestTimeout", "InternalError", "Throttling"}


def translate(exc: BaseException, what: str) -> StorageError:
    """The store's error for a failure of ``what`` (an operation and key, never a secret)."""
    if isinstance(exc, StorageError):
        return exc
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
        if code in _NOT_FOUND or status == 404:
            if code == "NoSuchBucket":
                return StorageConfigError(f"{what}: the bucket does not exist")
            return ObjectNotFound(f"{what}: no such object")
        if status >= 500 or code in _BUSY:
            return StorageUnavailable(f"{what}: the storage endpoint answered {status} {code}")
        return StorageError(f"{what}: the storage endpoint refused ({status} {code})")
    if isinstance(exc, NoCredentialsError | PartialCredentialsError | NoRegionError):
        return StorageConfigError(f"{what}: {exc}")
    unreachable = (
        HTTPClientError,  # read timeouts, closed connections, broken streams
        EndpointUnreachable,  # refused, connect timeouts, DNS, TLS, proxy
        IncompleteReadError,
        RetriesExceededError,  # s3transfer's retries of a broken download ran out
        ConnectionError,
        TimeoutError,
    )
    if isinstance(exc, unreachable):
        return StorageUnavailable(f"{what}: the storage endpoint is unreachable ({exc})")
    if isinstance(exc, BotoCoreError):
        return StorageError(f"{what}: {exc}")
    raise exc


class _ReaderGone(Exception):
    """The transfer stopped reading (it failed or was cancelled)."""


class Pipe(io.RawIOBase):
    """A bounded byte queue: :meth:`put` blocks while ``capacity`` bytes wait; s3transfer's
    :meth:`read` blocks until it has the ``n`` bytes it asked for (a part) or the end."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._eof = False
        self._failure: BaseException | None = None
        self._reader_gone = False
        self._demand = 0  # bytes a blocked read waits for (may exceed the capacity)
        self._cond = threading.Condition()

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def put(self, data: bytes) -> None:
        with self._cond:
            while self._buffered >= max(self._capacity, self._demand) and not self._reader_gone:
                self._cond.wait()
            if self._reader_gone:
                raise _ReaderGone
            self._chunks.append(data)
            self._buffered += len(data)
            self._cond.notify_all()

    def close_write(self) -> None:
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def fail(self, exc: BaseException) -> None:
        """Make the reader's next (or current) read raise ``exc``."""
        with self._cond:
            self._failure = exc
            self._cond.notify_all()

    def reader_gone(self) -> None:
        with self._cond:
            self._reader_gone = True
            self._cond.notify_all()

    def read(self, size: int | None = -1) -> bytes:
        want = self._capacity if size is None or size < 0 else size
        with self._cond:
            while True:
                if self._failure is not None:
                    raise self._failure
                if self._buffered >= want or self._eof:
                    break
                self._demand = want
                self._cond.notify_all()
                self._cond.wait()
            self._demand = 0
            out = self._take(min(want, self._buffered))
            self._cond.notify_all()
            return out

    def _take(self, count: int) -> bytes:
        parts, left = [], count
        while left:
            head = self._chunks.popleft()
            if len(head) > left:
                head, rest = head[:left], head[left:]
                self._chunks.appendleft(rest)
            parts.append(head)
            left -= len(head)
        self._buffered -= count
        return b"".join(parts)


class _Done(BaseSubscriber):
    def __init__(self, pipe: Pipe) -> None:
        self._pipe = pipe

    def on_done(self, future: TransferFuture, **kwargs: Any) -> None:
        self._pipe.reader_gone()


class S3Writer:
    """A streamed object write: each chunk is hashed, then queued for s3transfer, which uploads
    it as one PUT (small objects) or a multipart upload; on failure or :meth:`abort` s3transfer
    aborts the multipart upload, so nothing is left behind in the bucket."""

    def __init__(self, manager: Any, bucket: str, key: str, *, what: str, part_size: int) -> None:
        self._manager = manager
        self._what = what
        self._pipe = Pipe(part_size)
        self._hash = hashlib.sha256()
        self.size = 0
        self.committed = False
        self._finished = False
        self._future: TransferFuture = manager.upload(
            self._pipe, bucket, key, subscribers=[_Done(self._pipe)]
        )

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    def write(self, data: bytes | memoryview) -> None:
        if self._finished:
            raise ValueError("write to a finished upload")
        chunk = bytes(data)
        self._hash.update(chunk)
        self.size += len(chunk)
        try:
            self._pipe.put(chunk)
        except _ReaderGone:
            self._raise_failure()

    def commit(self) -> None:
        self._pipe.close_write()
        try:
            self._future.result()
        except BaseException as exc:
            self._finish()
            raise translate(exc, self._what) from exc
        self._finish()
        self.committed = True

    def abort(self) -> None:
        if self._finished:
            return
        self._pipe.fail(_ReaderGone("aborted"))
        self._future.cancel()
        # result() returns once s3transfer's abort cleanup has run; its error (the cancellation,
        # or the failure that made the caller abort) is the caller's to report, not ours.
        with contextlib.suppress(BaseException):
            self._future.result()
        self._finish()

    def _raise_failure(self) -> None:
        try:
            self._future.result()
        except BaseException as exc:
            self._finish()
            raise translate(exc, self._what) from exc
        raise StorageUnavailable(f"{self._what}: the upload stopped early")

    def _finish(self) -> None:
        if not self._finished:
            self._finished = True
            self._manager.shutdown()

    def __enter__(self) -> S3Writer:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.committed:
            self.abort()


class BodyReader(io.RawIOBase):
    """A GetObject body as a raw stream, with connection failures as :class:`StorageUnavailable`."""

    def __init__(self, body: Any, what: str) -> None:
        self._body = body
        self._what = what

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        try:
            data = self._body.read(len(buffer))
        except Exception as exc:
            raise translate(exc, self._what) from exc
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self._body.close()
        super().close()


class OrderedHasher:
    """A seekable download target that hashes the file in order while s3transfer writes it.

    A parallel ranged download writes chunks at their offsets as they arrive, out of order, so
    the file used to be hashed only afterwards (a second pass over the whole object). Here a
    chunk that continues the hashed prefix is hashed from memory, and chunks that came early are
    read back (from the page cache) once the gap before them fills; memory stays one chunk.
    s3transfer's single IO thread calls ``seek`` then ``write``; a retried range rewrites bytes
    already hashed, which are skipped. :meth:`hexdigest` is None unless the whole file from 0 to
    ``size`` was hashed exactly once, and the caller then hashes the file again.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._pos = 0
        self._done = 0
        self._early: list[tuple[int, int]] = []
        self._digest = hashlib.sha256()

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_CUR:
            offset += self._pos
        elif whence != io.SEEK_SET:
            raise OSError("only absolute and relative seeks")
        self._pos = offset
        return offset

    def tell(self) -> int:
        return self._pos

    def write(self, data: bytes | memoryview) -> int:
        view = memoryview(data).cast("B")
        start, count = self._pos, len(view)
        written = 0
        while written < count:
            written += os.pwrite(self.fd, view[written:], start + written)
        self._pos = start + count
        end = start + count
        if start <= self._done < end:
            self._digest.update(view[self._done - start :])
            self._done = end
            self._drain()
        elif start > self._done:
            self._early.append((start, end))
        return count

    def _drain(self) -> None:
        while True:
            self._early = [(s, e) for s, e in self._early if e > self._done]
            ready = [e for s, e in self._early if s <= self._done]
            if not ready:
                return
            end = max(ready)
            while self._done < end:
                chunk = os.pread(self.fd, min(_HASH_CHUNK, end - self._done), self._done)
                if not chunk:
                    raise OSError("the download file is shorter than what was written to it")
                self._digest.update(chunk)
                self._done += len(chunk)

    def hexdigest(self, size: int) -> str | None:
        return self._digest.hexdigest() if self._done == size and not self._early else None
