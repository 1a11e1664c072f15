"""The store's one small interface, implemented by the local folder and by S3-compatible storage.

Keys are relative, slash-separated paths (``datasets/ds_…/data``); ``app.layout`` spells them.
A key names one object; a *folder* is every object under ``key/``. Writes are streamed, hashed as
they go and atomic: an object is either absent or complete, never partly written.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import BinaryIO, Protocol

from app.store.errors import InvalidKey

CHUNK = 1024 * 1024
"""Bytes read or written per call when streaming."""


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    modified: float
    """Seconds since the epoch (the file's mtime, the object's Last-Modified)."""


class Writer(Protocol):
    """A streamed write of one object: ``write`` chunks, then ``commit``; leaving the ``with``
    block without committing (an error, a cut-off upload) aborts and stores nothing."""

    size: int

    @property
    def sha256(self) -> str: ...
    def write(self, data: bytes | memoryview) -> None: ...
    def commit(self) -> None: ...
    def abort(self) -> None: ...
    def __enter__(self) -> Writer: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class Store(Protocol):
    url: str
    """Where the store points (``file:///…``, ``s3://bucket/prefix``), for logs: no secrets."""

    def open_write(self, key: str, *, size_hint: int | None = None) -> Writer:
        """A writer for ``key``; ``size_hint`` (the expected size, when known) lets a large object
        use parts large enough to stay within S3's 10,000 parts."""
        ...

    def open_read(self, key: str, *, start: int = 0, length: int | None = None) -> BinaryIO:
        """The object's bytes from ``start`` (``length`` of them, or to the end), streamed.
        A range past the end reads nothing. Raises ObjectNotFound."""
        ...

    def get_file(self, key: str, dest: Path) -> str:
        """Download ``key`` to ``dest`` (atomically: a temporary file renamed into place) and
        return the sha256 of the bytes written."""
        ...

    def stat(self, key: str) -> ObjectInfo | None: ...
    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> int:
        """Delete the object ``key`` and every object under ``key/``; the count deleted."""
        ...

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Every object under ``prefix/`` (all of them for ``""``), in key order."""
        ...

    def presign_get(
        self, key: str, *, expires_s: int | None = None, filename: str | None = None
    ) -> str | None:
        """A short-lived URL that downloads ``key`` without credentials (``filename`` as its
        Content-Disposition), or None where the backend has none (the local folder)."""
        ...

    def sweep_incomplete(self, older_than_s: float) -> int:
        """Remove writes abandoned for longer than ``older_than_s`` (a killed process's temporary
        files or pending multipart uploads); the count removed. Garbage collection calls it."""
        ...

    def check(self) -> None:
        """Raise unless the store answers and can be written (readiness)."""
        ...


def check_key(key: str, *, allow_root: bool = False) -> str:
    """``key`` if it is a clean relative path; raise otherwise (the same rule on every backend,
    so a key that works on a laptop works on S3)."""
    if key == "" and allow_root:
        return key
    path = PurePosixPath(key)
    bad = (
        not key
        or key.startswith("/")
        or key.endswith("/")
        or "\\" in key
        or "\x00" in key
        or path.as_posix() != key
        or any(part in ("", ".", "..") for part in key.split("/"))
    )
    if bad:
        raise InvalidKey(f"not a valid store key: {key!r}")
    return key


def folder_prefix(prefix: str) -> str:
    """``prefix/`` for a folder key, ``""`` for the root."""
    check_key(prefix, allow_root=True)
    return f"{prefix}/" if prefix else ""
