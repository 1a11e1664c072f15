"""The artifact store: files every API and worker machine can reach, written atomically.

Objects are addressed by a key (``datasets/ds_…/data``); the store maps keys to locations. The
local store maps them under a root folder that all machines mount (NFS, a shared volume). An
object store would implement the same protocol, with workers staging files in a local cache.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

CHUNK = 1024 * 1024
FILE_MODE = 0o600  # tenants' data: readable by the service's own user only
DIR_MODE = 0o700


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


@dataclass(frozen=True)
class StoredObject:
    key: str
    size_bytes: int
    sha256: str


class Store(Protocol):
    def local_path(self, key: str) -> Path: ...
    def open_write(self, key: str) -> AtomicWriter: ...
    def open_read(self, key: str) -> BinaryIO: ...
    def delete(self, key: str) -> None: ...
    def exists(self, key: str) -> bool: ...


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


class LocalStore:
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        make_private_dirs(self.root)

    def local_path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root):
            raise ValueError(f"key escapes the store: {key!r}")
        return path

    def open_write(self, key: str) -> AtomicWriter:
        return AtomicWriter(self.local_path(key))

    def open_read(self, key: str) -> BinaryIO:
        return self.local_path(key).open("rb")

    def exists(self, key: str) -> bool:
        return self.local_path(key).exists()

    def delete(self, key: str) -> None:
        path = self.local_path(key)
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def iter_file(handle: BinaryIO, chunk: int = CHUNK) -> Iterator[bytes]:
    with handle:
        while data := handle.read(chunk):
            yield data


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while data := handle.read(CHUNK):
            digest.update(data)
    return digest.hexdigest()
