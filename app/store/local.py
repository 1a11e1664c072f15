"""The local-folder backend: objects are files under a root folder (one machine, or a shared
mount such as NFS); the embedded profile's default.

Writes go to a temporary file beside the target and are renamed into place after an fsync, so a
reader never sees half an object. Files and the folders the store creates are owner-only.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, cast

from app.store.base import CHUNK, ObjectInfo, check_key, folder_prefix
from app.store.errors import ObjectNotFound, StorageError

FILE_MODE = 0o600  # tenants' data: readable by the service's own user only
DIR_MODE = 0o700
_TEMPORARY = re.compile(r"^\..+\.[0-9a-f]{32}\.tmp$")


def make_private_dirs(path: Path) -> None:
    """``mkdir -p`` with every folder it creates owner-only (``Path.mkdir(parents=True)`` gives
    the parents the umask's mode, usually 0755)."""
    missing = []
    while not path.exists():
        missing.append(path)
        path = path.parent
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=DIR_MODE)
        except FileExistsError:
            continue
        os.chmod(folder, DIR_MODE)  # mkdir's mode is masked by the umask


class AtomicWriter:
    """Write to a temporary file beside the target; ``commit`` fsyncs and renames it into place.

    Leaving the ``with`` block without ``commit`` (an error, a cut-off upload) deletes the
    temporary file, so a half-written object is never visible.
    """

    def __init__(self, target: Path) -> None:
        make_private_dirs(target.parent)
        self.target = target
        self.tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
        fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
        self._file = os.fdopen(fd, "wb")
        self._hash = hashlib.sha256()
        self.size = 0
        self.committed = False

    def write(self, data: bytes | memoryview) -> None:
        self._file.write(data)
        self._hash.update(data)
        self.size += len(data)

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    def commit(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self.tmp, self.target)
        self.committed = True

    def abort(self) -> None:
        if not self._file.closed:
            self._file.close()
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> AtomicWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.committed:
            self.abort()


class _Window(io.RawIOBase):
    """At most ``length`` bytes of an open file (a byte range), closed with it."""

    def __init__(self, handle: BinaryIO, length: int) -> None:
        self._handle = handle
        self._left = length

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        if self._left <= 0:
            return 0
        view = memoryview(buffer)[: min(len(buffer), self._left)]
        count = self._handle.readinto(view)  # type: ignore[attr-defined]
        self._left -= count
        return int(count)

    def close(self) -> None:
        self._handle.close()
        super().close()


class LocalStore:
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        make_private_dirs(self.root)
        self.url = self.root.as_uri()

    def local_path(self, key: str) -> Path:
        """The file (or folder) behind ``key``: only this backend has one."""
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root):
            raise ValueError(f"key escapes the store: {key!r}")
        return path

    def _file(self, key: str) -> Path:
        return self.local_path(check_key(key))

    def open_write(self, key: str, *, size_hint: int | None = None) -> AtomicWriter:
        return AtomicWriter(self._file(key))

    def open_read(self, key: str, *, start: int = 0, length: int | None = None) -> BinaryIO:
        path = self._file(key)
        try:
            handle = path.open("rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFound(f"no object {key!r}") from None
        if start == 0 and length is None:
            return handle
        handle.seek(start)
        window = _Window(handle, length if length is not None else max(0, _size(path) - start))
        return cast(BinaryIO, io.BufferedReader(window, CHUNK))

    def get_file(self, key: str, dest: Path) -> str:
        with self.open_read(key) as source, AtomicWriter(dest) as writer:
            while data := source.read(CHUNK):
                writer.write(data)
            writer.commit()
            return writer.sha256

    def stat(self, key: str) -> ObjectInfo | None:
        path = self._file(key)
        try:
            info = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        return ObjectInfo(key, info.st_size, info.st_mtime) if path.is_file() else None

    def exists(self, key: str) -> bool:
        return self._file(key).is_file()

    def delete(self, key: str) -> int:
        path = self._file(key)
        if path.is_dir():
            count = sum(len(files) for _, _, files in os.walk(path))
            shutil.rmtree(path, ignore_errors=True)
            return count
        try:
            path.unlink()
        except (FileNotFoundError, NotADirectoryError):
            return 0
        return 1

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        base = folder_prefix(prefix)
        top = self.local_path(prefix) if prefix else self.root
        found = []
        for folder, _, files in os.walk(top):
            for name in files:
                if _TEMPORARY.match(name):
                    continue
                path = Path(folder, name)
                try:
                    info = path.stat()
                except FileNotFoundError:  # deleted while we walked
                    continue
                key = path.relative_to(self.root).as_posix()
                if key.startswith(base):
                    found.append(ObjectInfo(key, info.st_size, info.st_mtime))
        return iter(sorted(found, key=lambda item: item.key))

    def presign_get(
        self, key: str, *, expires_s: int | None = None, filename: str | None = None
    ) -> str | None:
        return None

    def sweep_incomplete(self, older_than_s: float) -> int:
        cutoff = time.time() - older_than_s
        removed = 0
        for folder, _, files in os.walk(self.root):
            for name in files:
                path = Path(folder, name)
                try:
                    if _TEMPORARY.match(name) and path.stat().st_mtime < cutoff:
                        path.unlink()
                        removed += 1
                except FileNotFoundError:
                    continue
        return removed

    def check(self) -> None:
        if not (self.root.is_dir() and os.access(self.root, os.W_OK | os.X_OK)):
            raise StorageError(f"the store folder {self.root} is missing or not writable")


def _size(path: Path) -> int:
    return path.stat().st_size


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while data := handle.read(CHUNK):
            digest.update(data)
    return digest.hexdigest()
